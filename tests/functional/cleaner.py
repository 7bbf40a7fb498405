"""Run the cache clean-up in a loop (for the fault tests).

    python -m tests.functional.cleaner INSTANCES STORE STOPFILE LOG

cleans with min age 0 until STOPFILE exists; LOG gets one line per removed
path and, last, ``passes N``.
"""

import os
import sys
import time

from nova_amiboot import cache as cache_mod
from nova_amiboot.local import store as local_store
from tests.functional import base


def main(argv):
    instances, store, stop, log = argv[:4]
    cache = cache_mod.ImageCache(instances, local_store.LocalImageStore(store),
                                 base.make_conf())
    passes = 0
    with open(log, 'a') as f:
        while not os.path.exists(stop):
            for path in cache.clean(min_age=0):
                f.write(path + '\n')
                f.flush()
            passes += 1
            # A breath between passes: the spawns need the CPU more than
            # a cleaner needs its ten-thousandth pass.
            time.sleep(0.01)
        f.write('passes %d\n' % passes)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
