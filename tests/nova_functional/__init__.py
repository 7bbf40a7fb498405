"""Tests through nova's own code in-process (API, conductor, scheduler,
compute), with nova's fixtures.

Run in a pytest process of their own (tools/run-tests does): importing
nova's test package sets nova's concurrency mode for the whole process.
"""

# nova's functional package sets the concurrency mode on import; it has to
# come before anything that imports oslo.privsep (and so eventlet).
import nova.tests.functional  # noqa: F401,E402
