"""Slow tier: a real Debian with systemd and OpenSSH, reached by SSH with
the key that the spawn pipeline injected."""

import time

from tests.functional import test_cli
from tests.testbed import debian


class TestDebianOverSSH(test_cli.CliTestCase):

    def test_ssh_df_shows_flavor_size(self):
        root = debian.build_image()
        tb = self.testbed
        self.json('image', 'import', 'bookworm', '--kernel', tb['kernel'],
                  '--ramdisk', tb['ramdisk'], '--root', root,
                  '--property', 'os_command_line=' + debian.OS_COMMAND_LINE)
        inst = self.boot('deb1', '--image', 'bookworm', '--root-gb', '2',
                         '--memory-mb', '512', '--vcpus', '1',
                         '--key-file', self.key + '.pub', '--wait',
                         '--timeout', '300')
        self.assertEqual('ready', inst['wait'])
        # The login prompt can come a little before sshd listens.
        deadline = time.monotonic() + 120
        while True:
            p = self.amiboot('ssh', 'deb1', '--', 'df', '-h', '/', ok=False)
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        self.assertEqual(0, p.returncode, p.stderr)
        lines = p.stdout.strip().splitlines()
        self.assertEqual(['Filesystem', 'Size'], lines[0].split()[:2])
        dev, size = lines[1].split()[:2]
        self.assertEqual('/dev/vda', dev)
        # 2 GiB less ext4's own metadata: df -h rounds it to 2.0G.
        self.assertEqual('2.0G', size)
        p = self.amiboot('ssh', 'deb1', '--', 'df', '-B1', '--output=size',
                         '/')
        self.assertGreater(int(p.stdout.split()[-1]), 0.95 * 2 * 1024 ** 3)
        # The login used the injected key: password logins are off.
        p = self.amiboot('ssh', 'deb1', '--', 'cat',
                         '/root/.ssh/authorized_keys')
        with open(self.key + '.pub') as f:
            self.assertIn(f.read().strip(), p.stdout)
        self.amiboot('delete', 'deb1')
        self.assertIsNone(self.host.lookup('amiboot-deb1'))
