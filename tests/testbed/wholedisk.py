"""A whole-disk Debian bookworm image, as distributions publish them.

GPT with an EFI system partition (vfat) and a root partition (ext4, no
filesystem label: it is found by its content), Debian bookworm from
debootstrap with ``linux-image-cloud-amd64`` installed inside (its kernel in
/boot, its modules in /usr/lib/modules), an fstab naming both partitions by
UUID as Debian's cloud images do, and 16 MiB of a marker pattern left in the
root filesystem's free blocks (a file deleted with debugfs, which frees the
blocks without clearing them) so a test can see that a conversion zeroes
free space. No grub: the AMI method boots the kernel directly.

Built without any mount or loop device: the root filesystem is made with
``mkfs.ext4 -d`` in a file, the ESP with ``mkfs.vfat`` in another, both
copied into the disk at their partition offsets. Stored as qcow2, cached by
content (this file's hash) under the test bed cache.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from oslo_concurrency import lockutils

from tests.testbed import build
from tests.testbed import debian

MiB = 1024 * 1024
PACKAGES = debian.PACKAGES + ['linux-image-cloud-amd64']
ROOT_UUID = '6b1c3c6e-6d3f-4b0e-9d6a-2f8c1a9e0b71'
ESP_VOLID = '1A2B3C4D'
ESP_UUID = '1A2B-3C4D'
MARKER = b'AMIBOOT-FREE-SPACE-MARKER-'
ESP_MB = 32

FILES = dict(debian.FILES)
FILES['etc/fstab'] = (
    '# <file system> <mount point> <type> <options> <dump> <pass>\n'
    'UUID=%s / ext4 rw,discard,errors=remount-ro 0 1\n'
    'UUID=%s /boot/efi vfat umask=0077 0 1\n'
    'tmpfs /tmp tmpfs defaults,nosuid 0 0\n' % (ROOT_UUID, ESP_UUID))
FILES['etc/hostname'] = 'debian-disk\n'
FILES['etc/amiboot-origin'] = 'whole-disk test image\n'


def image_path():
    with open(__file__, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(build.CACHE, 'debian-disk-%s.qcow2' % key)


def _run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def _tree(work):
    tree = os.path.join(work, 'root')
    _run('debootstrap', '--variant=minbase',
         '--include=' + ','.join(PACKAGES), 'bookworm', tree, debian.MIRROR)
    for rel, content in FILES.items():
        dst = os.path.join(tree, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, 'w') as f:
            f.write(content)
    os.makedirs(os.path.join(tree, 'boot/efi'), exist_ok=True)
    _run('chroot', tree, 'passwd', '-l', 'root')
    shutil.rmtree(os.path.join(tree, 'var/cache/apt/archives'),
                  ignore_errors=True)
    # The distribution's own initramfs is not what the AMI boots with.
    for name in os.listdir(os.path.join(tree, 'boot')):
        if name.startswith('initrd.img-'):
            os.unlink(os.path.join(tree, 'boot', name))
    with open(os.path.join(tree, 'var/tmp/junk'), 'wb') as f:
        for i in range(16 * MiB // 64):
            f.write((MARKER + b'%037d\n' % i)[:64])
    return tree


def _tree_mb(tree):
    out = _run('du', '-s', '--block-size=1M', tree, text=True).stdout
    return int(out.split()[0])


def build_disk(work, output):
    tree = _tree(work)
    root_mb = int(_tree_mb(tree) * 1.4) + 256
    root = os.path.join(work, 'root.ext4')
    # nodiscard: keep what is in the file's free blocks (nothing yet, but
    # the deleted marker file below must stay on disk).
    _run('mkfs.ext4', '-q', '-F', '-T', 'default', '-b', '4096',
         '-U', ROOT_UUID, '-d', tree, '-E', 'root_owner=0:0,nodiscard',
         root, '%dM' % root_mb)
    _run('debugfs', '-w', '-R', 'rm /var/tmp/junk', root)
    esp = os.path.join(work, 'esp.vfat')
    _run('mkfs.vfat', '-C', '-i', ESP_VOLID, '-n', 'EFI', esp,
         str(ESP_MB * 1024))
    disk = os.path.join(work, 'disk.raw')
    total_mb = 1 + ESP_MB + root_mb + 1
    with open(disk, 'wb') as f:
        f.truncate(total_mb * MiB)
    _run('sfdisk', '-q', disk, input=(
        'label: gpt\n'
        'start=2048, size=%d, type=U, name="EFI"\n'
        'start=%d, size=%d, type=L\n'
        % (ESP_MB * 2048, (1 + ESP_MB) * 2048, root_mb * 2048)).encode())
    for src, offset_mb in ((esp, 1), (root, 1 + ESP_MB)):
        _run('dd', 'if=' + src, 'of=' + disk, 'bs=1M',
             'seek=%d' % offset_mb, 'conv=notrunc,sparse', 'status=none')
    _run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', disk, output)


def build_image():
    path = image_path()
    os.makedirs(build.CACHE, exist_ok=True)
    with lockutils.lock('debian-disk', lock_path=build.CACHE,
                        external=True):
        if os.path.exists(path):
            return path
        work = tempfile.mkdtemp(prefix='amiboot-disk-', dir='/var/tmp')
        try:
            build_disk(work, path + '.part')
            os.replace(path + '.part', path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if os.path.exists(path + '.part'):
                os.unlink(path + '.part')
    return path


if __name__ == '__main__':
    print(build_image())
