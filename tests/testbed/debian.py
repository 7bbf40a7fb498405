"""A Debian bookworm AMI (systemd, OpenSSH, ifupdown + DHCP) for the slow
test, built with debootstrap and the product's own AMI builder.

Cached by content (this file's hash) under the test bed cache. The guest
boots through the test bed's ARI with ``net.ifnames=0`` in the image's
``os_command_line``, takes an address from QEMU's user-mode DHCP and
accepts root logins with the key injected at spawn.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from oslo_concurrency import lockutils

from nova_amiboot.imagetools import ami
from tests.testbed import build

MIRROR = os.environ.get('AMIBOOT_DEBIAN_MIRROR',
                        'http://deb.debian.org/debian')
PACKAGES = ['systemd-sysv', 'udev', 'openssh-server', 'ifupdown',
            'isc-dhcp-client', 'iproute2']
OS_COMMAND_LINE = ('root=LABEL=cloudimg-rootfs ro console=tty0 '
                   'console=ttyS0 net.ifnames=0')

FILES = {
    'etc/fstab': 'LABEL=cloudimg-rootfs / ext4 defaults 0 1\n',
    'etc/network/interfaces': (
        'auto lo\niface lo inet loopback\n\n'
        'allow-hotplug eth0\niface eth0 inet dhcp\n'),
    'etc/hostname': 'debian-ami\n',
    'etc/hosts': '127.0.0.1 localhost\n',
    # Key logins only; no password exists.
    'etc/ssh/sshd_config.d/amiboot.conf': (
        'PermitRootLogin prohibit-password\nPasswordAuthentication no\n'
        'UseDNS no\n'),
}


def image_path():
    with open(__file__, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(build.CACHE, 'debian-bookworm-%s.img' % key)


def build_image():
    path = image_path()
    os.makedirs(build.CACHE, exist_ok=True)
    with lockutils.lock('debian', lock_path=build.CACHE, external=True):
        if os.path.exists(path):
            return path
        work = tempfile.mkdtemp(prefix='amiboot-debian-', dir='/var/tmp')
        try:
            tree = os.path.join(work, 'root')
            subprocess.run(['debootstrap', '--variant=minbase',
                            '--include=' + ','.join(PACKAGES), 'bookworm',
                            tree, MIRROR], check=True, capture_output=True)
            for rel, content in FILES.items():
                dst = os.path.join(tree, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                with open(dst, 'w') as f:
                    f.write(content)
            # Lock root's password; only keys log in.
            subprocess.run(['chroot', tree, 'passwd', '-l', 'root'],
                           check=True, capture_output=True)
            shutil.rmtree(os.path.join(tree, 'var/cache/apt/archives'),
                          ignore_errors=True)
            ami.build_ami(tree, path + '.part')
            os.replace(path + '.part', path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if os.path.exists(path + '.part'):
                os.unlink(path + '.part')
    return path


if __name__ == '__main__':
    print(build_image())
