"""Console scripts of nova-amiboot.

They run with native threads, as nova-compute 34 does in its threading
mode, and keep eventlet out the way nova does there: oslo.privsep imports
eventlet when it can (and eventlet then prints a deprecation warning on
every command); refused, it carries on without it.
"""

import sys


class _NoEventlet(object):
    def find_spec(self, fullname, path, target=None):
        if fullname == 'eventlet' or fullname.startswith('eventlet.'):
            raise ImportError("nova-amiboot's commands run without eventlet")
        return None


if 'eventlet' not in sys.modules:
    sys.meta_path.insert(0, _NoEventlet())
