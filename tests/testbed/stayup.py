"""Build the test bed's stay-up AMI, cached by content.

Same kernel and ramdisk as the test bed triplet (tests.testbed.build), and
a root filesystem whose init prints the same report, then stays up and
powers off on the ACPI power button: a cloud shows the console of running
servers only, and asks a guest to shut down (stop, soft reboot, resize,
shelve) through that button. The kernel's ``button`` and ``evdev`` modules
come from the same kernel package and live in the AMI's /lib/modules.

``python -m tests.testbed.stayup`` prints "KERNEL RAMDISK ROOT STAYUP_ROOT"
(the paths the one-host cloud uploads).
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from oslo_concurrency import lockutils

from nova_amiboot.imagetools import ari
from tests.testbed import build

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ('kernel/drivers/acpi/button.ko', 'kernel/drivers/input/evdev.ko')
AMI_SIZE_MB = 32
HOSTNAME = 'amiboot-stayup'


def _report_script():
    """The test-bed AMI's init without its final power-off."""
    with open(os.path.join(HERE, 'ami-init.sh')) as f:
        lines = f.read().splitlines()
    lines = [line for line in lines if line.strip() != 'poweroff -f']
    return '\n'.join(lines) + '\n'


def _key(info):
    h = hashlib.sha256()
    h.update(info['dir'].encode())
    for path in (__file__, os.path.join(HERE, 'ami-init.sh'),
                 os.path.join(HERE, 'ami-stayup-init.sh')):
        with open(path, 'rb') as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def build_stayup(info):
    """Return the path of the stay-up AMI for the test bed ``info``."""
    out = os.path.join(build.CACHE, 'stayup-' + _key(info))
    root = os.path.join(out, 'root.img')
    with lockutils.lock('testbed-stayup', lock_path=build.CACHE,
                        external=True):
        if os.path.exists(root):
            return root
        with tempfile.TemporaryDirectory(prefix='amiboot-stayup-') as tmp:
            kdir = os.path.join(tmp, 'kpkg')
            ari.unpack_kernel_package(info['kernel_package'], kdir)
            moddir = ari.find_modules_dir(kdir)
            kver = os.path.basename(moddir.rstrip('/'))
            tree = os.path.join(tmp, 'root')
            os.makedirs(tree)
            build._populate_rootfs(tree, hostname=HOSTNAME)
            shutil.copyfile(os.path.join(HERE, 'ami-stayup-init.sh'),
                            os.path.join(tree, 'sbin/init'))
            with open(os.path.join(tree, 'sbin/amiboot-report'), 'w') as f:
                f.write(_report_script())
            target = os.path.join(tree, 'lib/modules', kver)
            os.makedirs(target)
            for rel in MODULES:
                shutil.copyfile(os.path.join(moddir, rel),
                                os.path.join(target, os.path.basename(rel)))
            os.makedirs(os.path.join(tree, 'dev/input'), exist_ok=True)
            part = os.path.join(tmp, 'root.img')
            subprocess.run(['mkfs.ext4', '-q', '-F', '-L', 'amiroot', '-d',
                            tree, '-T', 'default', '-b', '4096',
                            '-E', 'root_owner=0:0', part,
                            '%dM' % AMI_SIZE_MB],
                           check=True, capture_output=True)
            os.chmod(part, 0o644)
            os.makedirs(out + '.tmp', exist_ok=True)
            os.replace(part, os.path.join(out + '.tmp', 'root.img'))
            os.chmod(out + '.tmp', 0o755)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(out + '.tmp', out)
        return root


def main():
    info = build.build()
    print(info['kernel'], info['ramdisk'], info['root'],
          build_stayup(info))


if __name__ == '__main__':
    main()
