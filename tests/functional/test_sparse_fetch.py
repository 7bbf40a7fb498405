"""The base stays sparse where the image is zeros."""

import hashlib
import os

from nova_amiboot import cache as cache_mod
from tests.functional import base

MiB = 1024 ** 2


class TestSparseFetch(base.RealToolsTestCase):

    def test_zeros_become_holes_and_bytes_stay_equal(self):
        img = self.scratch('sparse.img')
        with open(img, 'wb') as f:
            f.write(os.urandom(MiB + 1000))
            # No boot-sector signature by chance: it is not a whole disk.
            f.seek(510)
            f.write(b'\0\0')
            f.seek(30 * MiB)
            f.write(os.urandom(4096))
            f.seek(63 * MiB)
            # Ends in zeros: the base must keep its full size anyway.
            f.write(bytes(MiB))
        ami, _a, _r = self.add_triplet(root=img, root_format='raw')
        c = self.make_cache()
        # Fetched as an image part, not as an AMI's root: random bytes hold
        # no filesystem, which an AMI's fetch refuses (test_refused_ami).
        root = c.fetch(ami.id)
        st = os.stat(root.path)
        self.assertEqual(os.path.getsize(img), st.st_size)
        # ~1 MiB + 4 KiB of data in 64 MiB: far less than all of it.
        self.assertLess(st.st_blocks * 512, 4 * MiB)
        with open(img, 'rb') as a, open(root.path, 'rb') as b:
            self.assertEqual(hashlib.sha256(a.read()).hexdigest(),
                             hashlib.sha256(b.read()).hexdigest())
        self.assertEqual(cache_mod.base_name(ami.id),
                         os.path.basename(root.path))
