"""Build the test bed's stay-up AMI, cached by content.

Same kernel and ramdisk as the test bed triplet (tests.testbed.build), and
a root filesystem whose init prints the same report, then stays up and
powers off on the ACPI power button: a cloud shows the console of running
servers only, and asks a guest to shut down (stop, soft reboot, resize,
shelve) through that button. The kernel's ``button`` and ``evdev`` modules
come from the same kernel package and live in the AMI's /lib/modules.

``python -m tests.testbed.stayup`` prints "KERNEL RAMDISK ROOT STAYUP_ROOT
STAYUP_XFS_ROOT" (the paths the one-host cloud uploads; the last is the
same stay-up tree on XFS, made without mounting by ``mkfs.xfs -p``).
"""

import hashlib
import os
import shutil
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


def _key(info, fstype):
    h = hashlib.sha256()
    h.update(info['dir'].encode())
    h.update(fstype.encode())
    for path in (__file__, os.path.join(HERE, 'ami-init.sh'),
                 os.path.join(HERE, 'ami-stayup-init.sh')):
        with open(path, 'rb') as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def build_stayup(info, fstype='ext4'):
    """Return the path of the stay-up AMI for the test bed ``info``.

    ``fstype`` is the root filesystem: ext4 at 32 MiB, XFS and btrfs at
    the test bed's sizes for them (``build.FS_SIZE_MB``, their minimums).
    """
    out = os.path.join(build.CACHE, 'stayup-' + _key(info, fstype))
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
            build.mkfs(tree, part, fstype,
                       size_mb=AMI_SIZE_MB if fstype == 'ext4' else None)
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
          build_stayup(info), build_stayup(info, 'xfs'))


if __name__ == '__main__':
    main()
