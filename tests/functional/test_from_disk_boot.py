"""Slow tier: a whole-disk Debian (GPT, ESP + root, its own cloud kernel)
becomes a triplet with ``amiboot image from-disk`` and boots on a bigger
flavor, reached by SSH with the injected key (provisioned in the guest:
from-disk declares its ARI's amiboot_provision=guest)."""

import os
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


class TestWholeDiskDebian(test_cli.CliTestCase):

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
        inst = self.boot('dd1', '--image', 'debdisk', '--root-gb', '3',
                         '--memory-mb', '512', '--vcpus', '1',
                         '--key-file', self.key + '.pub', '--wait',
                         '--timeout', '600')
        self.assertEqual('ready', inst['wait'])
        # from-disk's ARI is ours and declared: grown and keyed by the
        # guest's own /init, nothing attached on the host.
        self.assertEqual('guest', inst['provision'])
        self.assertEqual('whole-disk test image\n',
                         ssh(self, 'dd1', 'cat', '/etc/amiboot-origin'))
        self.assertEqual(res['kernel_version'],
                         ssh(self, 'dd1', 'uname', '-r').strip())
        # The flavor's 3 GiB, not the image's few hundred MiB.
        size = int(ssh(self, 'dd1', 'df', '-B1', '--output=size',
                       '/').split()[-1])
        self.assertGreater(size, 0.95 * 3 * 1024 ** 3)
        # Mounted read-write by LABEL= from the rewritten fstab, and
        # systemd did not wait for the vanished ESP.
        mounts = ssh(self, 'dd1', 'findmnt', '-no', 'SOURCE,OPTIONS', '/')
        self.assertIn('/dev/vda', mounts)
        self.assertIn('rw', mounts.split()[1].split(','))
        self.assertNotIn('efi', ssh(self, 'dd1', 'cat', '/proc/mounts'))
        self.amiboot('delete', 'dd1')
