"""The nova adapter: thin glue between nova's libvirt driver and the core.

Imports nova; nothing in the core imports this package.
"""
