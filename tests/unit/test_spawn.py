"""spawn: the instance's private kernel/ramdisk copy and instance-dir state."""

import os
import stat
import tempfile
import unittest

from nova_amiboot import spawn


class PrivateCopyTest(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.d = tmp.name
        self.src = os.path.join(self.d, 'base')
        with open(self.src, 'wb') as f:
            f.write(b'kernel bytes')
        os.chmod(self.src, 0o600)

    def test_copy_not_link(self):
        dst = os.path.join(self.d, 'kernel')
        spawn.private_copy(self.src, dst)
        with open(dst, 'rb') as f:
            self.assertEqual(b'kernel bytes', f.read())
        st = os.stat(dst)
        self.assertNotEqual(os.stat(self.src).st_ino, st.st_ino)
        self.assertEqual(0o644, stat.S_IMODE(st.st_mode))
        self.assertEqual(['base', 'kernel'], sorted(os.listdir(self.d)))

    def test_failure_leaves_no_partial_file(self):
        # The copy is written, then its rename fails (the destination is
        # a directory): the written part must not stay behind.
        dst = os.path.join(self.d, 'kernel')
        os.mkdir(dst)
        with self.assertRaises(OSError):
            spawn.private_copy(self.src, dst)
        self.assertEqual(['base', 'kernel'], sorted(os.listdir(self.d)))
        self.assertEqual([], os.listdir(dst))

    def test_missing_source_leaves_nothing(self):
        dst = os.path.join(self.d, 'kernel')
        with self.assertRaises(FileNotFoundError):
            spawn.private_copy(os.path.join(self.d, 'nope'), dst)
        self.assertEqual(['base'], os.listdir(self.d))


class InstanceDirTest(unittest.TestCase):

    def test_finished_without_marker(self):
        with tempfile.TemporaryDirectory() as d:
            spawn.finished(d)
            self.assertFalse(spawn.interrupted(d))
            self.assertEqual([], os.listdir(d))
