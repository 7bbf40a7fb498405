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

The same Debian tree is also laid out as the other families publish their
images (``build_image(layout)``):

- ``rhel``: BIOS boot + ESP + XFS /boot + XFS root, fstab by UUID, like
  Rocky/Alma/CentOS Stream cloud images;
- ``rhel-lvm``: the same with the root on LVM (volume group ``amivg``, LV
  ``root``, XFS), fstab naming /dev/mapper/amivg-root;
- ``fedora``: BIOS boot + ESP + ext4 /boot + btrfs with subvolumes ``root``
  (the system) and ``home``, fstab by UUID with ``subvol=``.

XFS comes from the project's AMI builder (a protofile, no mount); the LVM
metadata from the host's lvm on a loop device with the device mapper
switched off (``--driverloaded n``: nothing is activated, no backup under
/etc/lvm); the btrfs subvolumes, which mkfs.btrfs 6.2 cannot make, in the
project's appliance VM (the test bed's kernel), which snapshots the top
level into ``root`` and empties the top level, nothing on the host
mounted.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

from oslo_concurrency import lockutils

from nova_amiboot.imagetools import ami
from tests.testbed import build
from tests.testbed import debian

MiB = 1024 * 1024
PACKAGES = debian.PACKAGES + ['linux-image-cloud-amd64']
ROOT_UUID = '6b1c3c6e-6d3f-4b0e-9d6a-2f8c1a9e0b71'
ESP_VOLID = '1A2B3C4D'
ESP_UUID = '1A2B-3C4D'
MARKER = b'AMIBOOT-FREE-SPACE-MARKER-'
ESP_MB = 32
BOOT_MB = 300           # the smallest XFS
LAYOUTS = ('debian', 'rhel', 'rhel-lvm', 'fedora')
# GPT type GUIDs.
BIOS_BOOT = '21686148-6449-6E6F-744E-656564454649'
ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4'
LVM = 'E6D6D379-F507-44C2-A23C-238F2A3DF928'
BOOT_UUID = '3e7d2c1b-0a9f-4e8d-b7c6-5a4b3c2d1e0f'
FSTABS = {
    'rhel': ('UUID=%s / xfs defaults 0 0\n'
             'UUID=%s /boot xfs defaults 0 0\n'
             'UUID=%s /boot/efi vfat umask=0077,shortname=winnt 0 2\n'
             % (ROOT_UUID, BOOT_UUID, ESP_UUID)),
    'rhel-lvm': ('/dev/mapper/amivg-root / xfs defaults 0 0\n'
                 'UUID=%s /boot xfs defaults 0 0\n'
                 'UUID=%s /boot/efi vfat umask=0077,shortname=winnt 0 2\n'
                 % (BOOT_UUID, ESP_UUID)),
    'fedora': ('UUID=%s / btrfs subvol=root,compress=zstd:1 0 0\n'
               'UUID=%s /boot ext4 defaults 1 2\n'
               'UUID=%s /home btrfs subvol=home,compress=zstd:1 0 0\n'
               'UUID=%s /boot/efi vfat umask=0077,shortname=winnt 0 2\n'
               % (ROOT_UUID, BOOT_UUID, ROOT_UUID, ESP_UUID)),
}

FILES = dict(debian.FILES)
FILES['etc/fstab'] = (
    '# <file system> <mount point> <type> <options> <dump> <pass>\n'
    'UUID=%s / ext4 rw,discard,errors=remount-ro 0 1\n'
    'UUID=%s /boot/efi vfat umask=0077 0 1\n'
    'tmpfs /tmp tmpfs defaults,nosuid 0 0\n' % (ROOT_UUID, ESP_UUID))
FILES['etc/hostname'] = 'debian-disk\n'
FILES['etc/amiboot-origin'] = 'whole-disk test image\n'


def image_path(layout='debian'):
    with open(__file__, 'rb') as f:
        key = hashlib.sha256(f.read()).hexdigest()[:16]
    name = 'debian-disk' if layout == 'debian' else 'disk-%s' % layout
    return os.path.join(build.CACHE, '%s-%s.qcow2' % (name, key))


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


def _gpt(disk, parts):
    """A GPT disk file: parts [(type, size_mb, file or None)], from 1 MiB."""
    total_mb = 1 + sum(size for _t, size, _f in parts) + 1
    with open(disk, 'wb') as f:
        f.truncate(total_mb * MiB)
    script, start = ['label: gpt'], 1
    for ptype, size, _f in parts:
        script.append('start=%d, size=%d, type=%s'
                      % (start * 2048, size * 2048, ptype))
        start += size
    _run('sfdisk', '-q', disk, input=('\n'.join(script) + '\n').encode())
    start = 1
    for _ptype, size, src in parts:
        if src:
            _run('dd', 'if=' + src, 'of=' + disk, 'bs=1M',
                 'seek=%d' % start, 'conv=notrunc,sparse', 'status=none')
        start += size


def _esp(work):
    esp = os.path.join(work, 'esp.vfat')
    if not os.path.exists(esp):
        _run('mkfs.vfat', '-C', '-i', ESP_VOLID, '-n', 'EFI', esp,
             str(ESP_MB * 1024))
    return esp


def _mb(path):
    return -(-os.path.getsize(path) // MiB)


def _split_boot(tree, work, fstab):
    """(root tree, boot tree): /boot's files moved to a tree of their own."""
    root = os.path.join(work, 'root-split')
    shutil.rmtree(root, ignore_errors=True)
    _run('cp', '-a', tree, root)
    boot = os.path.join(work, 'boot-split')
    shutil.rmtree(boot, ignore_errors=True)
    os.makedirs(boot)
    for name in os.listdir(os.path.join(root, 'boot')):
        if name != 'efi':
            shutil.move(os.path.join(root, 'boot', name), boot)
    with open(os.path.join(root, 'etc/fstab'), 'w') as f:
        f.write(fstab)
    return root, boot


def _xfs(tree, out, fs_uuid, label):
    ami.build_ami(tree, out, label=label, fstype='xfs')
    _run('xfs_admin', '-U', fs_uuid, out)


def _lvm_partition(lv_file, out):
    """A partition file: an LVM PV whose one LV holds ``lv_file``.

    The LV is ``amivg/root``; its one segment starts at the PV's first
    extent.
    """
    lv_mb = _mb(lv_file) + 4
    with open(out, 'wb') as f:
        f.truncate((lv_mb + 8) * MiB)
    loop = _run('losetup', '-f', '--show', out, text=True).stdout.strip()
    conf = ('devices { filter = [ "a|^%s$|", "r|.*|" ] '
            'obtain_device_list_from_udev = 0 } '
            'backup { backup = 0 archive = 0 }' % loop)
    lvm = ['lvm', '--driverloaded', 'n', '--config', conf]
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1')
    try:
        for cmd in (['pvcreate', '-q', loop],
                    ['vgcreate', '-q', 'amivg', loop],
                    ['lvcreate', '-q', '-an', '-Zn', '-L', '%dM' % lv_mb,
                     '-n', 'root', 'amivg']):
            _run(lvm[0], cmd[0], *(lvm[1:] + cmd[1:]), env=env)
        start = _run(lvm[0], 'pvs', *lvm[1:], '-o', 'pe_start', '--units',
                     'b', '--noheadings', '--nosuffix', loop, env=env,
                     text=True).stdout.split()[-1]
    finally:
        _run('losetup', '-d', loop)
    _run('dd', 'if=' + lv_file, 'of=' + out, 'bs=1M',
         'seek=%d' % (int(start) // MiB), 'conv=notrunc,sparse',
         'status=none')


# The appliance program that makes the Fedora-like subvolumes on /dev/vdb
# (the one disk it may write).
SUBVOLUMES_SCRIPT = r'''#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
out=/dev/ttyS0
echo AMIBOOT-APPLIANCE-BEGIN > $out
subvolumes() {
    mkdir -p /mnt/t
    mount -t btrfs /dev/vdb /mnt/t || return 1
    btrfs subvolume snapshot /mnt/t /mnt/t/root > /dev/null || return 1
    for e in /mnt/t/* /mnt/t/.[!.]*; do
        [ -e "$e" ] || continue
        [ "$e" = /mnt/t/root ] || rm -rf "$e" || return 1
    done
    btrfs subvolume create /mnt/t/home > /dev/null || return 1
    ls /mnt/t > $out
    umount /mnt/t
}
subvolumes && echo SUBVOLUMES-OK > $out
echo AMIBOOT-APPLIANCE-END > $out
'''


def appliance_running(program, tool, kernel_package):
    """Write ``tool``: the appliance ARI whose /appliance is ``program``.

    A second (gzip'd) cpio archive after the first replaces /appliance;
    the ARI's /init runs it. For test beds that need a VM to do something
    the product's appliance does not.
    """
    from nova_amiboot.imagetools import ari
    ari.build_appliance(tool, kernel_package=kernel_package)
    with tempfile.TemporaryDirectory(prefix='amiboot-prog-') as extra:
        with open(os.path.join(extra, 'appliance'), 'w') as f:
            f.write(program)
        os.chmod(os.path.join(extra, 'appliance'), 0o755)
        archive = _run('sh', '-c', 'cd %s && echo appliance | cpio -o -H '
                       'newc 2>/dev/null | gzip' % extra).stdout
    with open(tool, 'ab') as f:
        f.write(archive)
    os.chmod(tool, 0o644)


def _btrfs_subvolumes(tree, out, work):
    """A btrfs image: subvolumes root (``tree``) and home, top level bare."""
    from nova_amiboot.imagetools import appliance
    with open(out, 'wb') as f:
        f.truncate((int(_tree_mb(tree) * 1.6) + 300) * MiB)
    _run('mkfs.btrfs', '-q', '-f', '-U', ROOT_UUID, '-L', 'fedora',
         '--rootdir', tree, out)
    tb = build.build()
    tool = os.path.join(work, 'subvol.img')
    appliance_running(SUBVOLUMES_SCRIPT, tool, tb['kernel_package'])
    empty = os.path.join(work, 'empty.raw')
    with open(empty, 'wb') as f:
        f.truncate(MiB)
    os.chmod(work, 0o755)
    for path in (tool, empty, out):
        os.chmod(path, 0o644)
    text = appliance._boot(tb['kernel'], tool, empty, 'raw', out, work,
                           'qemu', 300, None, outputs=(out,))
    if 'SUBVOLUMES-OK' not in text:
        raise RuntimeError("the subvolumes were not made: %s" % text[-2000:])


def build_disk(work, output, layout='debian', tree=None):
    tree = tree or _tree(work)
    esp = _esp(work)
    disk = os.path.join(work, 'disk-%s.raw' % layout)
    if layout == 'debian':
        root_mb = int(_tree_mb(tree) * 1.4) + 256
        root = os.path.join(work, 'root.ext4')
        # nodiscard: keep what is in the file's free blocks (nothing yet,
        # but the deleted marker file below must stay on disk).
        _run('mkfs.ext4', '-q', '-F', '-T', 'default', '-b', '4096',
             '-U', ROOT_UUID, '-d', tree, '-E', 'root_owner=0:0,nodiscard',
             root, '%dM' % root_mb)
        _run('debugfs', '-w', '-R', 'rm /var/tmp/junk', root)
        _gpt(disk, [(ESP, ESP_MB, esp), (LINUX, root_mb, root)])
    else:
        root_tree, boot_tree = _split_boot(tree, work, FSTABS[layout])
        os.unlink(os.path.join(root_tree, 'var/tmp/junk'))
        boot = os.path.join(work, 'boot-%s.img' % layout)
        if layout == 'fedora':
            _run('mkfs.ext4', '-q', '-F', '-U', BOOT_UUID, '-d', boot_tree,
                 '-E', 'root_owner=0:0', boot, '%dM' % BOOT_MB)
        else:
            _xfs(boot_tree, boot, BOOT_UUID, 'boot')
        root = os.path.join(work, 'root-%s.img' % layout)
        if layout == 'fedora':
            _btrfs_subvolumes(root_tree, root, work)
            ptype = LINUX
        else:
            _xfs(root_tree, root, ROOT_UUID, 'root')
            ptype = LINUX
            if layout == 'rhel-lvm':
                pv = root + '.pv'
                _lvm_partition(root, pv)
                os.unlink(root)
                root, ptype = pv, LVM
        _gpt(disk, [(BIOS_BOOT, 1, None), (ESP, ESP_MB, esp),
                    (LINUX, _mb(boot), boot), (ptype, _mb(root), root)])
        shutil.rmtree(root_tree)
        shutil.rmtree(boot_tree)
    _run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', disk, output)
    os.unlink(disk)


def build_image(layout='debian'):
    """The whole-disk image of ``layout`` (LAYOUTS), built once.

    A first call builds all of them from one Debian tree.
    """
    path = image_path(layout)
    os.makedirs(build.CACHE, exist_ok=True)
    with lockutils.lock('debian-disk', lock_path=build.CACHE,
                        external=True):
        if os.path.exists(path):
            return path
        work = tempfile.mkdtemp(prefix='amiboot-disk-', dir='/var/tmp')
        try:
            tree = _tree(work)
            wanted = [lay for lay in LAYOUTS
                      if not os.path.exists(image_path(lay))]
            for lay in wanted:
                out = image_path(lay)
                build_disk(work, out + '.part', lay, tree)
                os.replace(out + '.part', out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            for lay in LAYOUTS:
                if os.path.exists(image_path(lay) + '.part'):
                    os.unlink(image_path(lay) + '.part')
    return path


if __name__ == '__main__':
    import sys
    print(build_image(*sys.argv[1:2]))
