"""Slow tier: a whole-disk Debian (GPT, ESP + root, its own cloud kernel)
becomes a triplet with ``amiboot image from-disk`` and boots on a bigger
flavor, reached by SSH with the injected key (provisioned in the guest:
from-disk declares its ARI's amiboot_provision=guest).

The same Debian laid out as the RHEL family (XFS /boot and root, the root
also on LVM) and as Fedora (ext4 /boot, btrfs root and home subvolumes)
is converted in the appliance VM, booted, reached by SSH, its root grown
to the flavor; the XFS and btrfs instances are snapshotted and the
snapshot boots again (with its own key, the first instance's gone).
Conversion time and sizes are printed.
"""

import os
import sys
import time

from tests.functional import test_cli
from tests.testbed import wholedisk


def ssh(test, name, *command, timeout=180):
    """Run a command in the guest; retry while sshd comes up."""
    deadline = time.monotonic() + timeout
    while True:
        p = test.amiboot('ssh', name, '--', *command, ok=False)
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(3)
    test.assertEqual(0, p.returncode, p.stderr)
    return p.stdout


def contains(path, needle):
    overlap = len(needle)
    with open(path, 'rb') as f:
        tail = b''
        for chunk in iter(lambda: f.read(1 << 22), b''):
            if needle in tail + chunk:
                return True
            tail = chunk[-overlap:]
    return False


class WholeDiskBoot(test_cli.CliTestCase):
    """Boot a converted image; check it from inside over SSH."""

    def boot_and_check(self, name, image, fstype, gib=3):
        inst = self.boot(name, '--image', image, '--root-gb', str(gib),
                         '--memory-mb', '512', '--vcpus', '1',
                         '--key-file', self.key + '.pub', '--wait',
                         '--timeout', '600')
        self.assertEqual('ready', inst['wait'])
        self.assertEqual('guest', inst['provision'])
        self.assertEqual('whole-disk test image\n',
                         ssh(self, name, 'cat', '/etc/amiboot-origin'))
        src, fs, opts = ssh(self, name, 'findmnt', '-no',
                            'SOURCE,FSTYPE,OPTIONS', '/').split()
        self.assertTrue(src.startswith('/dev/vda'), src)
        self.assertEqual(fstype, fs)
        self.assertIn('rw', opts.split(','))
        size = int(ssh(self, name, 'df', '-B1', '--output=size',
                       '/').split()[-1])
        self.assertGreater(size, 0.9 * gib * 1024 ** 3)
        # The /boot partition's kernel is in the root's /boot now; the
        # vanished /boot and ESP are not mounted (nor waited for).
        self.assertIn('vmlinuz-', ssh(self, name, 'ls', '/boot'))
        mounts = ssh(self, name, 'cat', '/proc/mounts')
        self.assertNotIn(' /boot ', mounts)
        self.assertNotIn('/boot/efi', mounts)
        return opts, mounts


class TestWholeDiskDebian(WholeDiskBoot):

    def test_convert_boot_and_ssh(self):
        disk = wholedisk.build_image()
        res = self.json('image', 'from-disk', disk, 'debdisk', '--append',
                        'net.ifnames=0')
        self.assertEqual(2, res['root_partition'])
        self.assertIn('Debian GNU/Linux 12', res['os'])
        self.assertTrue(res['kernel_version'].endswith('-cloud-amd64'))
        self.assertEqual(['UUID=%s /boot/efi vfat umask=0077 0 1'
                          % wholedisk.ESP_UUID], res['fstab_dropped'])
        # The deleted file's blocks were in the root partition; the AMI's
        # free blocks are zero.
        root = os.path.join(self.state, 'images', res['id'])
        self.assertFalse(contains(root, wholedisk.MARKER))
        # from-disk's ARI is ours and declared: grown and keyed by the
        # guest's own /init, nothing attached on the host; mounted
        # read-write by LABEL= from the rewritten fstab, and systemd did
        # not wait for the vanished ESP.
        self.boot_and_check('dd1', 'debdisk', 'ext4')
        self.assertEqual(res['kernel_version'],
                         ssh(self, 'dd1', 'uname', '-r').strip())
        self.amiboot('delete', 'dd1')


def allocated(path):
    return os.stat(path).st_blocks * 512


class TestWholeDiskFamilies(WholeDiskBoot):
    """RHEL-like, RHEL-like on LVM, Fedora-like: from-disk in the VM."""

    def convert(self, layout, name):
        disk = wholedisk.build_image(layout)
        start = time.monotonic()
        res = self.json('image', 'from-disk', disk, name, '--append',
                        'net.ifnames=0', '--appliance-kernel-package',
                        self.testbed['kernel_package'])
        took = time.monotonic() - start
        root = os.path.join(self.state, 'images', res['id'])
        print('\nfrom-disk %s: %.1f s; source %d MiB allocated (qcow2), '
              'AMI %d MiB, %d MiB allocated' % (
                  layout, took, allocated(disk) >> 20,
                  os.path.getsize(root) >> 20, allocated(root) >> 20),
              file=sys.stderr)
        # Partition 4 (after BIOS boot, ESP, /boot); an LV is none.
        self.assertEqual(0 if layout == 'rhel-lvm' else 4,
                         res['root_partition'])
        self.assertIn('Debian GNU/Linux 12', res['os'])
        self.assertTrue(res['kernel_version'].endswith('-cloud-amd64'))
        self.assertIn('root=UUID=', res['os_command_line'])
        return res

    def snapshot_boots(self, name, fstype):
        self.json('stop', name)
        snap = self.json('image', 'snapshot', name, name + '-snap',
                         '--appliance-kernel-package',
                         self.testbed['kernel_package'])
        self.assertIn('/root/.ssh/authorized_keys', snap['removed'])
        self.assertIn('/etc/hostname', snap['removed'])
        self.amiboot('delete', name)
        self.boot_and_check(name + 's', name + '-snap', fstype)
        with open(self.key + '.pub') as f:
            key = f.read().strip()
        keys = ssh(self, name + 's', 'cat', '/root/.ssh/authorized_keys')
        self.assertEqual(1, keys.count(key), keys)
        self.assertEqual(name + 's', ssh(self, name + 's', 'hostname').strip())
        self.amiboot('delete', name + 's')

    def test_rhel_like_xfs(self):
        res = self.convert('rhel', 'rhel')
        self.assertEqual(sorted([
            'UUID=%s /boot xfs defaults 0 0' % wholedisk.BOOT_UUID,
            'UUID=%s /boot/efi vfat umask=0077,shortname=winnt 0 2'
            % wholedisk.ESP_UUID]), sorted(res['fstab_dropped']))
        self.boot_and_check('rh1', 'rhel', 'xfs')
        self.snapshot_boots('rh1', 'xfs')

    def test_rhel_like_on_lvm(self):
        res = self.convert('rhel-lvm', 'rhlvm')
        self.assertEqual(2, len(res['fstab_dropped']))
        self.boot_and_check('rl1', 'rhlvm', 'xfs')
        # fstab named /dev/mapper/amivg-root: now the root by UUID.
        fstab = ssh(self, 'rl1', 'cat', '/etc/fstab')
        self.assertNotIn('\n/dev/mapper', '\n' + fstab)
        self.amiboot('delete', 'rl1')

    def test_fedora_like_btrfs_subvolumes(self):
        res = self.convert('fedora', 'fedora')
        # The whole btrfs is the AMI, the root its subvolume "root"
        # (rootflags=subvol=root); /home, the "home" subvolume of the
        # same filesystem, stays in fstab.
        self.assertIn('rootflags=subvol=root', res['os_command_line'])
        self.assertEqual(2, len(res['fstab_dropped']))
        opts, mounts = self.boot_and_check('fd1', 'fedora', 'btrfs')
        self.assertIn('subvol=/root', opts)
        self.assertIn(' /home btrfs ', mounts)
        self.snapshot_boots('fd1', 'btrfs')
