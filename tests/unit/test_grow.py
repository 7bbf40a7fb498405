"""grow: filesystem check and growth on a real small ext4 in a file.

attach.Target(path, 'file') runs the real e2fsprogs (in the sandbox) on a
plain file, so nothing is mocked here.
"""

import os
import subprocess
import tempfile
import unittest

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import grow

MB = 1024 * 1024


def blocks(path):
    out = subprocess.run(['dumpe2fs', '-h', path], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith('Block count:'):
            return int(line.split(':')[1])
    raise AssertionError('no block count for %s' % path)


class GrowTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.img = os.path.join(self.tmp.name, 'fs')

    def make(self, size=8 * MB, fstype='ext4'):
        subprocess.run(['mkfs.' + fstype, '-q', '-F', '-b', '4096',
                        self.img, str(size // 4096)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return attach.Target(self.img, 'file', image='img-g')

    def test_fs_type(self):
        self.assertEqual('ext4', grow.fs_type(self.make()))

    def test_fs_type_none_for_zeros(self):
        with open(self.img, 'wb') as f:
            f.truncate(MB)
        self.assertIsNone(grow.fs_type(attach.Target(self.img, 'file')))

    def test_grow_to_file_size(self):
        target = self.make()
        self.assertEqual(8 * MB // 4096, blocks(self.img))
        with open(self.img, 'r+b') as f:
            f.truncate(16 * MB)
        self.assertTrue(grow.grow(target, 'inst-1', 'img-g'))
        self.assertEqual(16 * MB // 4096, blocks(self.img))

    def test_non_ext_left_alone(self):
        with open(self.img, 'wb') as f:
            f.truncate(4 * MB)
        before = open(self.img, 'rb').read()
        self.assertFalse(grow.grow(attach.Target(self.img, 'file'),
                                   'inst-1', 'img-g', fstype='xfs'))
        self.assertEqual(before, open(self.img, 'rb').read())

    def test_corrupt_refused(self):
        self.make()
        with open(self.img, 'r+b') as f:
            # The primary superblock (offset 1024) and the group
            # descriptors after it: e2fsck -p cannot mend that alone.
            f.seek(1024)
            f.write(b'\xff' * 8192)
        target = attach.Target(self.img, 'file', image='img-g')
        with self.assertRaises(exception.FilesystemCorrupt) as cm:
            grow.check(target, 'inst-9', 'img-g')
        self.assertIn('inst-9', str(cm.exception))
        self.assertNotIn('\n', str(cm.exception))

    def test_template_path_beside_base(self):
        p = grow.template_path('/c/base', 10, 'abc')
        self.assertEqual(os.path.join('/c', grow.TEMPLATE_DIR),
                         os.path.dirname(p))
        self.assertIn('10', os.path.basename(p))
        self.assertIn('abc', os.path.basename(p))

    def test_base_id_stable(self):
        self.make()
        first = grow.base_id(self.img)
        if first is None:
            # Only where user xattrs cannot be set at all.
            self.assertRaises(OSError, os.setxattr, self.img,
                              'user.amiboot.probe', b'1')
        else:
            self.assertRegex(first, r'\A[0-9a-f]{32}\Z')
            self.assertEqual(first, grow.base_id(self.img))
