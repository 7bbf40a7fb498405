"""The appliance: an image's disk read in a VM's kernel, not the host's.

A GPT disk laid out like a RHEL-family cloud image (BIOS boot, ESP, XFS
/boot, XFS root), built here without mounting (sfdisk; mkfs.xfs with a
protofile; mkfs.vfat), and a btrfs disk whose root is a subvolume, are
read by the appliance (the test bed's Debian cloud kernel and the
appliance ARI built from its package, under TCG): the root is the
partition or subvolume that holds the operating system, the XFS /boot is
the one with the kernels. Its answers are parsed with grammars: a forged
console is refused.
"""

import os
import shutil
import subprocess
import tempfile

from nova_amiboot import exception
from nova_amiboot.imagetools import ami as ami_mod
from nova_amiboot.imagetools import appliance
from nova_amiboot.imagetools import ari
from tests.functional import test_from_disk as tfd
from tests.testbed import wholedisk

MiB = 1024 * 1024
ROOT_UUID = '9e1c2d4a-5b6f-4a8e-b1c2-3d4e5f607182'
BOOT_UUID = '0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'
# A program for the appliance's /init (look_inside): /boot's names, then
# /etc/fstab, of the XFS filesystem on /dev/vda.
LOOK_SCRIPT = r'''#!/bin/busybox sh
out=/dev/ttyS0
echo AMIBOOT-APPLIANCE-BEGIN > $out
mkdir -p /mnt/r
mount -t xfs -o ro,norecovery /dev/vda /mnt/r
ls /mnt/r/boot > $out
echo FSTAB > $out
cat /mnt/r/etc/fstab > $out
umount /mnt/r
echo AMIBOOT-APPLIANCE-END > $out
'''
LVM = 'E6D6D379-F507-44C2-A23C-238F2A3DF928'


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


class ApplianceTest(tfd.FromDiskTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._work = tempfile.TemporaryDirectory(prefix='amiboot-appl-',
                                                dir='/var/tmp')
        os.chmod(cls._work.name, 0o755)

    @classmethod
    def tearDownClass(cls):
        cls._work.cleanup()
        super().tearDownClass()

    def appliance_ari(self):
        out = os.path.join(self._work.name, 'appliance.img')
        if not os.path.exists(out):
            ari.build_appliance(out, kernel_package=self.testbed[
                'kernel_package'])
        return out

    def xfs_of(self, tree, fs_uuid=None):
        def maker(path, size):
            with open(path, 'wb') as f:
                f.truncate(size * MiB)
            proto = path + '.proto'
            with open(proto, 'w') as f:
                f.write(ami_mod.xfs_protofile(tree))
            run('mkfs.xfs', '-q', '-f', '-p', proto, *(
                ('-m', 'uuid=' + fs_uuid) if fs_uuid else ()), path)
            os.unlink(proto)
        return maker

    def lvm_of(self, tree, lv_mb=300):
        """A maker: an LVM physical volume whose LV ``amivg/root`` is XFS.

        As the test bed's RHEL-like LVM disk (wholedisk._lvm_partition):
        the host's lvm without the device mapper, nothing activated.
        """
        def maker(path, size):
            lv = path + '.lv'
            self.xfs_of(tree)(lv, lv_mb)
            wholedisk._lvm_partition(lv, path)
            os.unlink(lv)
        return maker

    @staticmethod
    def readable(disk):
        """QEMU's user must reach the image (the test's dirs are 0700)."""
        d = os.path.dirname(disk)
        while d != '/':
            os.chmod(d, os.stat(d).st_mode | 0o005)
            d = os.path.dirname(d)

    def look_inside(self, ami):
        """/boot's names and /etc/fstab of an XFS AMI, read in a VM.

        The appliance's own probe cannot print files; the test boots it
        with a one-off program that does (the ARI's /init runs any
        /appliance), on a copy of the AMI in a scratch directory.
        """
        tool = os.path.join(self._work.name, 'look.img')
        if not os.path.exists(tool):
            wholedisk.appliance_running(LOOK_SCRIPT, tool,
                                        self.testbed['kernel_package'])
        copy = os.path.join(self._work.name, 'look-ami.raw')
        shutil.copyfile(ami, copy)
        try:
            text = appliance._boot(self.testbed['kernel'], tool, copy, 'raw',
                                   'look', self._work.name, 'qemu', 300,
                                   None)
        finally:
            os.unlink(copy)
        body = text.split(appliance.BEGIN, 1)[1].split(appliance.END, 1)[0]
        boot, _sep, fstab = body.replace('\r', '').partition('FSTAB\n')
        return {'boot': boot, 'fstab': fstab}

    def probe(self, disk):
        self.readable(disk)
        return appliance.probe(self.testbed['kernel'], self.appliance_ari(),
                               disk, 'qcow2', image='test-disk',
                               work=self._work.name)

    def test_rhel_like_layout(self):
        """from-disk of a RHEL-like GPT disk: XFS /boot and XFS root."""
        fstab = ('UUID=%s / xfs defaults 0 0\n'
                 'UUID=%s /boot xfs defaults 0 0\n'
                 'UUID=7B77-95E7 /boot/efi vfat umask=0077 0 2\n'
                 'tmpfs /tmp tmpfs defaults 0 0\n' % (ROOT_UUID, BOOT_UUID))
        root = self.linux_tree('root', boot=False, fstab=fstab)
        boot = self.scratch('boot')
        os.makedirs(boot)
        shutil.copy(ari.find_kernel_image(self.kpkg), boot)
        with open(os.path.join(boot, 'config-' + self.version), 'w') as f:
            f.write('CONFIG_XFS_FS=m\n')
        disk = self.make_disk('rhel', [
            (tfd.BIOS_BOOT, 1, None), (tfd.ESP, 8, self.vfat),
            (tfd.LINUX, 300, self.xfs_of(boot, BOOT_UUID)),
            (tfd.LINUX, 600, self.xfs_of(root, ROOT_UUID))])
        self.readable(disk)
        res = self.json('image', 'from-disk', disk, 'rhel1',
                        '--appliance-kernel-package',
                        self.testbed['kernel_package'])
        # The root is partition 4, found by its content (the XFS /boot,
        # partition 3, comes first); the kernel is the one of /boot.
        self.assertEqual(4, res['root_partition'])
        self.assertEqual('Test Linux 1', res['os'])
        self.assertEqual(self.version, res['kernel_version'])
        self.assertEqual(['UUID=%s /boot xfs defaults 0 0' % BOOT_UUID,
                          'UUID=7B77-95E7 /boot/efi vfat umask=0077 0 2'],
                         res['fstab_dropped'])
        self.assertIn('root=UUID=%s ' % ROOT_UUID, res['os_command_line'])
        ami = os.path.join(self.state, 'images', res['id'])
        # The AMI is the XFS root itself: the partition's size (XFS does
        # not shrink), its free space holes.
        info = run('blkid', '-p', '-o', 'export', ami).stdout.decode()
        self.assertIn('TYPE=xfs', info)
        self.assertIn('UUID=%s' % ROOT_UUID, info)
        st = os.stat(ami)
        self.assertEqual(600 * MiB, st.st_size)
        self.assertLess(st.st_blocks * 512, 0.8 * st.st_size)
        # What the appliance wrote into it, read back in it (the host
        # does not mount XFS): /boot merged, fstab rewritten.
        out = self.look_inside(ami)
        self.assertIn('vmlinuz-%s' % self.version, out['boot'])
        self.assertIn('config-%s' % self.version, out['boot'])
        self.assertIn('UUID=%s / xfs defaults 0 0' % ROOT_UUID, out['fstab'])
        self.assertIn('# amiboot: UUID=%s /boot xfs' % BOOT_UUID,
                      out['fstab'])
        self.assertIn('tmpfs /tmp tmpfs', out['fstab'])
        # The ARI is built from the image's own modules, with XFS.
        ramdisk = os.path.join(self.state, 'images', res['ramdisk_id'])
        listing = run('sh', '-c', 'zcat -f %s | cpio -t 2>/dev/null || '
                      'cat %s | cpio -t' % (ramdisk, ramdisk)).stdout
        self.assertIn(b'xfs.ko', listing)

    def test_forged_answers_are_refused(self):
        b64 = appliance.base64.b64encode
        good = '%s\nAMIBOOT-APPLIANCE dev1 %s\n%s\n' % (
            appliance.BEGIN, b64(b'/dev/vda1').decode(), appliance.END)
        self.assertEqual('/dev/vda1',
                         appliance.parse(good, 'i')[0].path)
        for forged in (b'/dev/sda1', b'/etc/passwd', b'/dev/vda1\n'):
            text = good.replace(b64(b'/dev/vda1').decode(),
                                b64(forged).decode())
            with self.assertRaises(exception.InvalidImage):
                appliance.parse(text, 'i')
        bad_kernel = good.replace(appliance.END, 'AMIBOOT-APPLIANCE '
                                  'kernels1 %s\n%s' % (b64(
                                      b'vmlinuz-1 ../../x').decode(),
                                      appliance.END))
        with self.assertRaises(exception.InvalidImage):
            appliance.parse(bad_kernel, 'i')
        with self.assertRaises(exception.InvalidImage):
            appliance.parse(good.replace(appliance.END, ''), 'i')

    def test_root_on_lvm(self):
        root = self.linux_tree('root', modules=False, boot=False)
        boot = self.scratch('boot')
        os.makedirs(boot)
        with open(os.path.join(boot, 'vmlinuz-5.14.0-1.el9.x86_64'),
                  'wb') as f:
            f.write(b'kernel')
        disk = self.make_disk('rhel-lvm', [
            (tfd.BIOS_BOOT, 1, None), (tfd.ESP, 8, self.vfat),
            (tfd.LINUX, 300, self.xfs_of(boot)),
            (LVM, 320, self.lvm_of(root))])
        devices = self.probe(disk)
        found = appliance.find_root(devices, 'd')
        self.assertEqual('/dev/mapper/amivg-root', found.path)
        self.assertEqual('xfs', found.fstype)
        self.assertEqual('Test Linux 1', found.os_name)
        by_part = {d.partition: d for d in devices}
        self.assertEqual('LVM2_member', by_part[4].fstype)
        self.assertEqual(['vmlinuz-5.14.0-1.el9.x86_64'], by_part[3].kernels)
