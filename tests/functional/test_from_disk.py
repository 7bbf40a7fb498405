"""amiboot image from-disk on small whole disks built here.

The disks are real (sfdisk partition tables, mkfs.ext4/btrfs/xfs/vfat
filesystems written at partition offsets, qcow2 through qemu-img); the
kernel and its modules come from the test bed's Debian cloud kernel
package. Booting a converted Debian is in test_from_disk_boot.
"""

import os
import shutil
import struct
import subprocess

from nova_amiboot.imagetools import ari
from tests.functional import test_cli

MiB = 1024 * 1024
ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4'
BIOS_BOOT = '21686148-6449-6E6F-744E-656564454649'


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


class FromDiskTestCase(test_cli.CliTestCase):

    def setUp(self):
        super().setUp()
        self.kpkg = self.scratch('kpkg')
        ari.unpack_kernel_package(self.testbed['kernel_package'], self.kpkg)
        self.version = os.path.basename(ari.find_modules_dir(self.kpkg))

    def linux_tree(self, name, modules=True, boot=True, fstab=None):
        tree = self.scratch(name)
        for d in ('etc', 'sbin', 'boot', 'usr/lib', 'root', 'var/tmp'):
            os.makedirs(os.path.join(tree, d))
        with open(os.path.join(tree, 'usr/lib/os-release'), 'w') as f:
            f.write('PRETTY_NAME="Test Linux 1"\nID=test\n')
        # Like Debian: /etc/os-release is a link into /usr/lib.
        os.symlink('../usr/lib/os-release',
                   os.path.join(tree, 'etc/os-release'))
        shutil.copy('/bin/busybox', os.path.join(tree, 'sbin/init'))
        with open(os.path.join(tree, 'etc/fstab'), 'w') as f:
            f.write(fstab if fstab is not None else
                    'UUID=1111-2222 / ext4 errors=remount-ro 0 1\n'
                    'UUID=AAAA-BBBB /boot/efi vfat umask=0077 0 1\n'
                    'PARTUUID=0c0ffee0-01 none swap sw 0 0\n'
                    'proc /proc proc defaults 0 0\n')
        if boot:
            shutil.copy(ari.find_kernel_image(self.kpkg),
                        os.path.join(tree, 'boot'))
            # An older kernel without modules: the newest one is taken.
            with open(os.path.join(tree, 'boot/vmlinuz-5.10.0-1-amd64'),
                      'wb') as f:
                f.write(b'old kernel')
        if modules:
            shutil.copytree(os.path.join(self.kpkg, 'lib/modules'),
                            os.path.join(tree, 'usr/lib/modules'),
                            symlinks=True)
        return tree

    def make_disk(self, name, parts, fmt='qcow2', label='gpt'):
        """parts: [(type, size_mb, maker(path, size_mb) or None)]."""
        raw = self.scratch(name + '.raw')
        total = 1 + sum(size for _t, size, _m in parts) + 1
        with open(raw, 'wb') as f:
            f.truncate(total * MiB)
        script, start = ['label: %s' % label], 1
        for ptype, size, _maker in parts:
            script.append('start=%d, size=%d, type=%s'
                          % (start * 2048, size * 2048, ptype))
            start += size
        run('sfdisk', '-q', raw, input='\n'.join(script).encode() + b'\n')
        start = 1
        for i, (_ptype, size, maker) in enumerate(parts):
            if maker:
                fs = self.scratch('%s-p%d' % (name, i))
                maker(fs, size)
                run('dd', 'if=' + fs, 'of=' + raw, 'bs=1M',
                    'seek=%d' % start, 'conv=notrunc,sparse', 'status=none')
                os.unlink(fs)
            start += size
        if fmt == 'raw':
            return raw
        out = self.scratch(name + '.qcow2')
        run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, out)
        os.unlink(raw)
        return out

    def ext4(self, tree):
        def maker(path, size):
            run('mkfs.ext4', '-q', '-F', '-T', 'default', '-b', '4096',
                '-d', tree, '-E', 'root_owner=0:0', path, '%dM' % size)
        return maker

    @staticmethod
    def vfat(path, size):
        run('mkfs.vfat', '-C', path, str(size * 1024))

    @staticmethod
    def btrfs(path, size):
        with open(path, 'wb') as f:
            f.truncate(size * MiB)
        run('mkfs.btrfs', '-q', path)

    @staticmethod
    def luks(path, size):
        header = (b'LUKS\xba\xbe' + struct.pack('>H', 1) +
                  b'aes'.ljust(32, b'\0') + b'xts-plain64'.ljust(32, b'\0') +
                  b'sha256'.ljust(32, b'\0') + struct.pack('>II', 4096, 64) +
                  bytes(52) + struct.pack('>I', 1000) +
                  b'0b5a1c2e-3d4f-4a5b-8c6d-7e8f9a0b1c2d'.ljust(40, b'\0'))
        with open(path, 'wb') as f:
            f.write(header)
            f.truncate(size * MiB)

    @staticmethod
    def xfs(path, size):
        with open(path, 'wb') as f:
            f.truncate(size * MiB)
        run('mkfs.xfs', '-q', path)


class TestFromDisk(FromDiskTestCase):

    def test_gpt_qcow2_becomes_a_triplet(self):
        tree = self.linux_tree('t1')
        disk = self.make_disk('d1', [(ESP, 8, self.vfat),
                                     (LINUX, 160, self.ext4(tree))])
        res = self.json('image', 'from-disk', disk, 'test1', '--append',
                        'net.ifnames=0')
        self.assertEqual(self.version, res['kernel_version'])
        self.assertEqual('Test Linux 1', res['os'])
        self.assertEqual(2, res['root_partition'])
        self.assertEqual('root=LABEL=cloudimg-rootfs ro console=tty0 '
                         'console=ttyS0 net.ifnames=0',
                         res['os_command_line'])
        self.assertEqual(2, len(res['fstab_dropped']))
        # The kernel is the image's own, byte for byte.
        kernel = self.json('image', 'show', res['kernel_id'])
        with open(ari.find_kernel_image(self.kpkg), 'rb') as f:
            self.assertEqual(len(f.read()), kernel['size'])
        self.assertEqual('ari', self.json('image', 'show',
                                          res['ramdisk_id'])['disk_format'])
        # The AMI: a bare ext4, labelled, shrunk well below 160 MiB.
        root = os.path.join(self.state, 'images', res['id'])
        info = self.run_cmd('dumpe2fs', '-h', root)
        self.assertIn('cloudimg-rootfs', info)
        # resize2fs -M: the 160 MiB partition shrank to its contents.
        self.assertLess(res['size'], 150 * MiB)
        fstab = self.run_cmd('debugfs', '-R', 'cat /etc/fstab', root)
        self.assertIn('LABEL=cloudimg-rootfs / ext4 errors=remount-ro 0 1',
                      fstab)
        self.assertIn('proc /proc proc', fstab)
        self.assertNotIn('/boot/efi', fstab)
        self.assertNotIn('swap', fstab)
        run('e2fsck', '-fn', root)
        # Nothing left behind in the work area.
        self.assertEqual([], os.listdir(os.path.join(self.state, 'tmp')))

    def test_kernel_version_and_mbr_raw(self):
        tree = self.linux_tree('t2')
        disk = self.make_disk('d2', [('83', 160, self.ext4(tree))],
                              fmt='raw', label='dos')
        res = self.json('image', 'from-disk', disk, 'test2',
                        '--kernel-version', self.version, '--label', 'myroot')
        self.assertEqual(1, res['root_partition'])
        self.assertIn('root=LABEL=myroot', res['os_command_line'])
        msg = self.error('image', 'from-disk', disk, 'test3',
                         '--kernel-version', '9.9.9')
        self.assertIn('vmlinuz-9.9.9', msg)
        self.assertIn(disk, msg)

    def test_refusals_name_the_image_and_the_reason(self):
        before = self.state_snapshot()
        for fs, word in ((self.btrfs, 'btrfs'), (self.xfs, 'XFS')):
            disk = self.make_disk('r-' + word, [(ESP, 8, self.vfat),
                                                (LINUX, 300, fs)])
            msg = self.error('image', 'from-disk', disk, 'bad')
            self.assertIn(disk, msg)
            # Without an appliance kernel: what would read it, named.
            self.assertIn('(%s) can be read only in the appliance VM' % word,
                          msg)
            self.assertIn('--appliance-kernel-package', msg)
        # Laid out like a RHEL-family image: XFS /boot (partition 3) before
        # the XFS root (4): both are named, neither called the root.
        disk = self.make_disk('r-rhel', [(BIOS_BOOT, 1, None),
                                         (ESP, 8, self.vfat),
                                         (LINUX, 300, self.xfs),
                                         (LINUX, 300, self.xfs)])
        msg = self.error('image', 'from-disk', disk, 'bad')
        self.assertIn('partition 3 (XFS), partition 4 (XFS) can be read '
                      'only in the appliance', msg)
        # LUKS (a LUKS1 header, as blkid knows it) and ZFS never become
        # an AMI: named, with the reason.
        disk = self.make_disk('r-luks', [(ESP, 8, self.vfat),
                                         (LINUX, 32, self.luks)])
        msg = self.error('image', 'from-disk', disk, 'bad')
        self.assertIn(disk, msg)
        self.assertIn('partition 2 (LUKS-encrypted) cannot become an AMI',
                      msg)
        empty = self.scratch('empty')
        os.makedirs(os.path.join(empty, 'data'))
        disk = self.make_disk('r-nolinux', [(LINUX, 32, self.ext4(empty))])
        msg = self.error('image', 'from-disk', disk, 'bad')
        self.assertIn('no Linux root filesystem', msg)
        disk = self.make_disk('r-nomods', [(LINUX, 64, self.ext4(
            self.linux_tree('t4', modules=False)))])
        msg = self.error('image', 'from-disk', disk, 'bad')
        self.assertIn('has no modules', msg)
        self.assertIn(self.version, msg)
        disk = self.make_disk('r-nokernel', [(LINUX, 64, self.ext4(
            self.linux_tree('t5', boot=False, modules=False)))])
        self.assertIn('no kernel', self.error('image', 'from-disk', disk,
                                              'bad'))
        with open(self.config, 'a') as f:
            f.write('[amiboot]\nmax_image_virtual_size_gb = 1\n')
        big = self.scratch('big.qcow2')
        run('qemu-img', 'create', '-q', '-f', 'qcow2', big, '2G')
        msg = self.error('image', 'from-disk', big, 'bad')
        self.assertIn(big, msg)
        self.assertIn('virtual size', msg)
        self.assertEqual(before, [f for f in self.state_snapshot()
                                  if not f[0].startswith('tmp')])
        self.assertEqual([], os.listdir(os.path.join(self.state, 'tmp')))

    def test_symlinked_kernel_is_refused_not_followed(self):
        tree = self.linux_tree('t6', boot=False)
        os.symlink('/etc/shadow', os.path.join(
            tree, 'boot/vmlinuz-%s' % self.version))
        os.symlink('/etc', os.path.join(
            tree, 'usr/lib/modules', self.version, 'kernel/evil'))
        disk = self.make_disk('s1', [(LINUX, 160, self.ext4(tree))])
        msg = self.error('image', 'from-disk', disk, 'bad',
                         '--kernel-version', self.version)
        self.assertIn('vmlinuz-%s' % self.version, msg)

    def test_separate_boot_partition_moves_into_the_root(self):
        root = self.linux_tree('t7', boot=False, fstab=(
            'LABEL=root / ext4 defaults 0 1\n'
            'LABEL=BOOT /boot ext4 defaults 0 2\n'))
        boot = self.scratch('t7boot')
        os.makedirs(os.path.join(boot, 'grub'))
        shutil.copy(ari.find_kernel_image(self.kpkg), boot)
        with open(os.path.join(boot, 'grub/grub.cfg'), 'w') as f:
            f.write('# grub\n')
        os.symlink('/etc/shadow', os.path.join(boot, 'evil'))
        disk = self.make_disk('d7', [(LINUX, 160, self.ext4(root)),
                                     (LINUX, 32, self.ext4(boot))])
        res = self.json('image', 'from-disk', disk, 'test7')
        self.assertEqual(self.version, res['kernel_version'])
        self.assertEqual(1, res['root_partition'])
        self.assertEqual(['LABEL=BOOT /boot ext4 defaults 0 2'],
                         res['fstab_dropped'])
        path = os.path.join(self.state, 'images', res['id'])
        listing = self.run_cmd('debugfs', '-R', 'ls -l /boot', path)
        self.assertIn('vmlinuz-' + self.version, listing)
        self.assertIn('grub', listing)
        # The link was dropped, not followed.
        self.assertNotIn('evil', listing)
        self.assertEqual('# grub\n', self.run_cmd(
            'debugfs', '-R', 'cat /boot/grub/grub.cfg', path))


def plant_duplicate(fs_path, directory, name, block_size=4096):
    """Give an entry of another block of ``directory`` the name ``name``.

    ``name`` is an entry's in its first block. A hostile image does this:
    e2fsck compares names within one block of a linear directory only, so
    the two entries pass ``e2fsck -fy``.
    """
    out = subprocess.run(['debugfs', '-R', 'blocks ' + directory, fs_path],
                         check=True, capture_output=True, text=True).stdout
    blocks = [int(b) for b in out.split()]
    with open(fs_path, 'r+b') as f:
        def block(b):
            f.seek(b * block_size)
            return f.read(block_size)
        home = [b for b in blocks if name.encode() in block(b)]
        other = [b for b in blocks if b not in home]
        assert home and other, (blocks, home)
        # The first entry of the other block: inode, rec_len, name_len,
        # file_type, name.
        f.seek(other[0] * block_size + 6)
        f.write(bytes([len(name)]))
        f.seek(other[0] * block_size + 8)
        f.write(name.encode())


class TestFromDiskHostileTrees(FromDiskTestCase):
    """A tree read out of the image never writes outside its directory."""

    def hostile_ext4(self, tree, directory, name):
        def maker(path, size):
            # Linear directories (no htree) and no metadata checksums: the
            # layout a hostile image picks; the checks apply to any.
            run('mkfs.ext4', '-q', '-F', '-b', '4096', '-O',
                '^dir_index,^metadata_csum', '-d', tree,
                '-E', 'root_owner=0:0', path, '%dM' % size)
            plant_duplicate(path, directory, name)
            run('e2fsck', '-fy', path)      # passes: the duplicate stays
            listing = self.run_cmd('debugfs', '-R', 'ls ' + directory, path)
            self.assertEqual(2, listing.split().count(name))
        return maker

    def plant(self, directory, target):
        """A link to ``target`` and 150 files that fill a second block."""
        os.makedirs(directory, exist_ok=True)
        os.symlink(target, os.path.join(directory, 'modules.zzz'))
        for i in range(150):
            name = 'filler-%03d-%s' % (i, 'x' * 40)
            with open(os.path.join(directory, name), 'w') as f:
                f.write('content of the image %d\n' % i)

    def test_duplicate_names_in_the_modules_tree(self):
        host = self.scratch('host')
        os.makedirs(host)
        victim = os.path.join(host, 'victim')
        tree = self.linux_tree('h1')
        mods = os.path.join(tree, 'usr/lib/modules', self.version)
        self.plant(os.path.join(mods, 'kernel/zz'), victim)
        disk = self.make_disk('hd1', [(LINUX, 200, self.hostile_ext4(
            tree, '/usr/lib/modules/%s/kernel/zz' % self.version,
            'modules.zzz'))])
        before = self.state_snapshot()
        msg = self.error('image', 'from-disk', disk, 'bad')
        self.assertFalse(os.path.lexists(victim))
        self.assertIn(disk, msg)
        self.assertIn("two directory entries are named 'modules.zzz'", msg)
        self.assertEqual(before, [f for f in self.state_snapshot()
                                  if not f[0].startswith('tmp')])
        self.assertEqual([], os.listdir(os.path.join(self.state, 'tmp')))

    def test_duplicate_names_in_a_boot_partition(self):
        host = self.scratch('host2')
        os.makedirs(host)
        victim = os.path.join(host, 'victim')
        root = self.linux_tree('h2', boot=False)
        boot = self.scratch('h2boot')
        os.makedirs(boot)
        shutil.copy(ari.find_kernel_image(self.kpkg), boot)
        self.plant(os.path.join(boot, 'grub'), victim)
        disk = self.make_disk('hd2', [
            (LINUX, 160, self.ext4(root)),
            (LINUX, 32, self.hostile_ext4(boot, '/grub', 'modules.zzz'))])
        msg = self.error('image', 'from-disk', disk, 'bad')
        self.assertFalse(os.path.lexists(victim))
        self.assertIn("two directory entries are named 'modules.zzz'", msg)
        self.assertEqual([], os.listdir(os.path.join(self.state, 'tmp')))

    def test_links_and_specials_are_not_extracted(self):
        victim = self.scratch('host3')
        os.makedirs(victim)
        tree = self.linux_tree('h3')
        mods = os.path.join(tree, 'usr/lib/modules', self.version)
        os.symlink(victim, os.path.join(mods, 'build'))
        os.mkfifo(os.path.join(mods, 'fifo'))
        disk = self.make_disk('hd3', [(LINUX, 160, self.ext4(tree))])
        res = self.json('image', 'from-disk', disk, 'good3')
        self.assertEqual(self.version, res['kernel_version'])
        self.assertEqual([], os.listdir(victim))
        # The ramdisk holds the image's own modules and no link or fifo.
        ramdisk = os.path.join(self.state, 'images', res['ramdisk_id'])
        listing = subprocess.run(
            'zcat %s | cpio -itv 2>/dev/null' % ramdisk, shell=True,
            check=True, capture_output=True, text=True).stdout
        self.assertIn('virtio_blk.ko', listing)
        self.assertNotIn('/build', listing)
        self.assertNotIn('fifo', listing)
