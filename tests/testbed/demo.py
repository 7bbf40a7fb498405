"""The main job until the ``amiboot`` command exists: build the test bed's
triplet, boot it through libvirt on a qcow2 overlay and print the report the
guest sends back."""

import json
import sys
import time

from nova_amiboot import guest
from tests.testbed import boot
from tests.testbed import build


def main():
    t0 = time.monotonic()
    info = build.build()
    print("triplet: kernel %s\n         ramdisk %s (loads %s)\n"
          "         root %s" % (info['kernel'], info['ramdisk'],
                                ' '.join(info['modules']), info['root']))
    host = guest.Host()
    with boot.instance_dir(prefix='amiboot-demo-') as d:
        disk = boot.overlay(info['root'], d + '/disk', size_gb=1)
        t1 = time.monotonic()
        rep, _text = boot.boot(
            host, 'amiboot-demo', info['kernel'], info['ramdisk'], disk, d,
            'root=/dev/vda console=tty0 console=ttyS0')
    print("guest booted and reported in %.1f s (build %.1f s):"
          % (time.monotonic() - t1, t1 - t0))
    print(json.dumps(rep, indent=1, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
