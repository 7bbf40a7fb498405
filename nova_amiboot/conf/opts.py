"""Entry point for oslo-config-generator (``oslo.config.opts``)."""

from nova_amiboot.conf import amiboot


def list_opts():
    return [(group, opts) for group, opts in amiboot.list_opts().items()]
