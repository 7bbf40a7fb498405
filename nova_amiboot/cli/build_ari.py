"""amiboot-build-ari: the same as ``amiboot image build-ari``.

Usage:
  amiboot-build-ari --kernel-package linux-image-...-cloud-amd64_*.deb OUT
  amiboot-build-ari --modules-dir /lib/modules/$(uname -r) OUT
"""

import sys

from nova_amiboot.cli import app as amiboot


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    return amiboot.main(['image', 'build-ari'] + args)


if __name__ == '__main__':
    sys.exit(main())
