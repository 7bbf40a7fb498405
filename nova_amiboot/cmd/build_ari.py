"""amiboot-build-ari: make an ARI (initramfs) for a cloud kernel.

Usage:
  amiboot-build-ari --kernel-package linux-image-...-cloud-amd64_*.deb OUT
  amiboot-build-ari --modules-dir /lib/modules/$(uname -r) OUT
"""

import argparse
import sys

from nova_amiboot import ari
from nova_amiboot import exception


def main(argv=None):
    p = argparse.ArgumentParser(
        prog='amiboot-build-ari',
        description="Build an ARI that loads the kernel's virtio modules in "
                    "dependency order, mounts root= and switch_roots into "
                    "the AMI's /sbin/init.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--kernel-package', metavar='DEB',
                     help='kernel .deb (unpacked, not installed)')
    src.add_argument('--modules-dir', metavar='DIR',
                     help='a lib/modules/<version> directory')
    p.add_argument('--module', action='append', metavar='NAME',
                   help='module to load (repeatable; default: %s)'
                        % ', '.join(ari.DEFAULT_MODULES))
    p.add_argument('--busybox', default='/bin/busybox',
                   help='static busybox binary (default: %(default)s)')
    p.add_argument('output', help='where to write the ARI (gzip cpio)')
    args = p.parse_args(argv)
    try:
        order = ari.build_ari(args.output, modules_dir=args.modules_dir,
                              kernel_package=args.kernel_package,
                              modules=args.module or ari.DEFAULT_MODULES,
                              busybox=args.busybox)
    except exception.AmibootException as e:
        print("amiboot-build-ari: %s" % e, file=sys.stderr)
        return 1
    print("%s: loads %s" % (args.output, ' '.join(order)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
