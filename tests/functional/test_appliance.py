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
import subprocess
import tempfile

from nova_amiboot import exception
from nova_amiboot.imagetools import ami as ami_mod
from nova_amiboot.imagetools import appliance
from nova_amiboot.imagetools import ari
from tests.functional import test_from_disk as tfd

MiB = 1024 * 1024
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

    def xfs_of(self, tree):
        def maker(path, size):
            with open(path, 'wb') as f:
                f.truncate(size * MiB)
            proto = path + '.proto'
            with open(proto, 'w') as f:
                f.write(ami_mod.xfs_protofile(tree))
            run('mkfs.xfs', '-q', '-f', '-p', proto, path)
            os.unlink(proto)
        return maker

    def lvm_of(self, tree, lv_mb=300):
        """A maker: an LVM physical volume whose LV ``amivg/root`` is XFS.

        The metadata is written by the host's lvm on a loop device of the
        partition's file without the device mapper (``--driverloaded n``:
        nothing is activated here), no backup under /etc/lvm; the XFS
        image goes where the LV's one segment starts.
        """
        def maker(path, size):
            with open(path, 'wb') as f:
                f.truncate(size * MiB)
            loop = run('losetup', '-f', '--show', path).stdout.decode()
            loop = loop.strip()
            conf = ('devices { filter = [ "a|^%s$|", "r|.*|" ] '
                    'obtain_device_list_from_udev = 0 } '
                    'backup { backup = 0 archive = 0 }' % loop)
            lvm = ['lvm', '--driverloaded', 'n', '--config', conf]
            env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1')
            try:
                for cmd in (['pvcreate', '-q', loop],
                            ['vgcreate', '-q', 'amivg', loop],
                            ['lvcreate', '-q', '-an', '-Zn', '-L',
                             '%dM' % lv_mb, '-n', 'root', 'amivg']):
                    run(lvm[0], cmd[0], *(lvm[1:] + cmd[1:]), env=env)
                start = run(lvm[0], 'pvs', *lvm[1:], '-o', 'pe_start',
                            '--units', 'b', '--noheadings', '--nosuffix',
                            loop, env=env).stdout.decode().split()[-1]
            finally:
                run('losetup', '-d', loop)
            lv = path + '.lv'
            self.xfs_of(tree)(lv, lv_mb)
            run('dd', 'if=' + lv, 'of=' + path, 'bs=1M',
                'seek=%d' % (int(start) // MiB), 'conv=notrunc,sparse',
                'status=none')
            os.unlink(lv)
        return maker

    def probe(self, disk):
        # The image must be readable by QEMU's user.
        os.chmod(os.path.dirname(disk), 0o755)
        d = os.path.dirname(disk)
        while d != '/':
            os.chmod(d, os.stat(d).st_mode | 0o005)
            d = os.path.dirname(d)
        return appliance.probe(self.testbed['kernel'], self.appliance_ari(),
                               disk, 'qcow2', image='test-disk',
                               work=self._work.name)

    def test_rhel_like_layout(self):
        root = self.linux_tree('root', modules=False, boot=False)
        boot = self.scratch('boot')
        os.makedirs(boot)
        with open(os.path.join(boot, 'vmlinuz-5.14.0-1.el9.x86_64'),
                  'wb') as f:
            f.write(b'kernel')
        disk = self.make_disk('rhel', [(tfd.BIOS_BOOT, 1, None),
                                       (tfd.ESP, 8, self.vfat),
                                       (tfd.LINUX, 300, self.xfs_of(boot)),
                                       (tfd.LINUX, 300, self.xfs_of(root))])
        devices = self.probe(disk)
        by_part = {d.partition: d for d in devices}
        self.assertEqual('vfat', by_part[2].fstype)
        self.assertEqual('xfs', by_part[3].fstype)
        self.assertEqual(['vmlinuz-5.14.0-1.el9.x86_64'], by_part[3].kernels)
        self.assertFalse(by_part[3].root)
        self.assertTrue(by_part[4].root)
        self.assertTrue(by_part[4].mounted)
        self.assertEqual('Test Linux 1', by_part[4].os_name)
        self.assertEqual(by_part[4], appliance.find_root(devices, 'd'))

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
