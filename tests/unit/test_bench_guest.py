"""tools/bench_guest.py: the guest-side figures read from a console."""

import unittest

from tools import bench_guest

CONSOLE = """\
[    1.204113] Freeing unused kernel image memory: 2048K
[    1.250001] Run /init as init process
amiboot-ari: started at 1.31 s
amiboot-ari: loaded the virtio modules in 0.40 s
amiboot-ari: grew / from 236 MiB to 19.9 GiB (xfs) in 1.09 s
amiboot-ari: ssh keys in /root/.ssh/authorized_keys: 1 added, 0 already \
there, in 0.02 s
amiboot-ari: layer 0123456789ab applied
amiboot-ari: provisioned in 1.89 s
amiboot-ari: switch_root at 6.23 s, 4.92 s after /init started
"""


class TestParsers(unittest.TestCase):

    def test_guest_seconds(self):
        self.assertEqual(4.98, bench_guest.guest_seconds(CONSOLE))

    def test_grow_step(self):
        self.assertEqual({'from': '236 MiB', 'to': '19.9 GiB',
                          'fstype': 'xfs', 's': 1.09},
                         bench_guest.grow_step(CONSOLE))

    def test_provisioned_seconds(self):
        self.assertEqual(1.89, bench_guest.provisioned_seconds(CONSOLE))

    def test_missing_lines(self):
        # A boot that never reached switch_root, or grew nothing.
        text = CONSOLE.split('amiboot-ari: grew')[0]
        self.assertIsNone(bench_guest.guest_seconds(text))
        self.assertIsNone(bench_guest.grow_step(text))
        self.assertIsNone(bench_guest.provisioned_seconds(text))
