"""Slow tier: amiboot image snapshot. A Debian instance writes a file, is
stopped and saved as an AMI; the AMI boots on a bigger flavor and the file
is there, while the first instance's key and hostname are not."""

import os
import subprocess
import uuid

from tests.functional import test_cli
from tests.functional import test_from_disk_boot
from tests.testbed import debian

ssh = test_from_disk_boot.ssh


class TestSnapshot(test_cli.CliTestCase):

    def debugfs_cat(self, image, path):
        return subprocess.run(['debugfs', '-R', 'cat %s' % path, image],
                              capture_output=True, text=True).stdout

    def test_snapshot_boots_bigger_with_the_file(self):
        tb = self.testbed
        self.json('image', 'import', 'bookworm', '--kernel', tb['kernel'],
                  '--ramdisk', tb['ramdisk'], '--root', debian.build_image(),
                  '--property', 'os_command_line=' + debian.OS_COMMAND_LINE)
        inst = self.boot('snap1', '--image', 'bookworm', '--root-gb', '2',
                         '--memory-mb', '512', '--vcpus', '1',
                         '--key-file', self.key + '.pub', '--wait',
                         '--timeout', '600')
        self.assertEqual('ready', inst['wait'])
        nonce = uuid.uuid4().hex
        ssh(self, 'snap1', 'sh', '-c',
            "'echo %s > /root/written-in-snap1 && sync'" % nonce)
        msg = self.error('image', 'snapshot', 'snap1', 'snapped')
        self.assertIn('snap1', msg)
        self.assertIn('stop it first', msg)
        self.json('stop', 'snap1')
        snap = self.json('image', 'snapshot', 'snap1', 'snapped')
        self.assertEqual(['/root/.ssh/authorized_keys', '/etc/hostname'],
                         snap['removed'])
        source = self.json('image', 'show', 'bookworm')
        for k in ('kernel_id', 'ramdisk_id', 'os_command_line'):
            self.assertEqual(source[k], snap[k])
        path = os.path.join(self.state, 'images', snap['id'])
        # Flattened (a bare filesystem) and shrunk below the 2 GiB disk.
        self.assertIn('ext4', subprocess.run(
            ['blkid', '-p', '-o', 'value', '-s', 'TYPE', path],
            capture_output=True, text=True).stdout)
        self.assertLess(snap['size'], 1024 ** 3)
        with open(self.key + '.pub') as f:
            key = f.read().strip()
        self.assertNotIn(key, self.debugfs_cat(path, '/root/.ssh/'
                                               'authorized_keys'))
        self.assertEqual('debian-ami\n',
                         self.debugfs_cat(path, '/etc/hostname'))
        kept = self.json('image', 'snapshot', 'snap1', 'kept',
                         '--keep-injected')
        self.assertEqual([], kept['removed'])
        kept_path = os.path.join(self.state, 'images', kept['id'])
        self.assertIn(key, self.debugfs_cat(kept_path,
                                            '/root/.ssh/authorized_keys'))
        self.assertEqual('snap1\n',
                         self.debugfs_cat(kept_path, '/etc/hostname'))

        self.amiboot('delete', 'snap1')
        inst = self.boot('snap2', '--image', 'snapped', '--root-gb', '3',
                         '--memory-mb', '512', '--vcpus', '1',
                         '--key-file', self.key + '.pub', '--wait',
                         '--timeout', '600')
        self.assertEqual('ready', inst['wait'])
        self.assertEqual(nonce + '\n',
                         ssh(self, 'snap2', 'cat', '/root/written-in-snap1'))
        self.assertEqual('snap2', ssh(self, 'snap2', 'hostname').strip())
        size = int(ssh(self, 'snap2', 'df', '-B1', '--output=size',
                       '/').split()[-1])
        self.assertGreater(size, 0.95 * 3 * 1024 ** 3)
        self.amiboot('delete', 'snap2')
        # The snapshot shares the source's kernel and ramdisk: deleting it
        # leaves them to the others.
        self.assertEqual([snap['id']],
                         self.json('image', 'delete', 'snapped')['deleted'])
