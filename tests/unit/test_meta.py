"""meta: the xattrs and marker files, on real files."""

import errno
import os
import subprocess
import sys
import tempfile
import unittest

from nova_amiboot import meta


class XattrTest(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.d = tmp.name
        self.f = os.path.join(self.d, 'base')
        with open(self.f, 'wb') as f:
            f.write(b'bytes')

    def test_names_are_the_on_disk_format(self):
        # Renaming any of them orphans what existing hosts recorded.
        self.assertEqual(
            {'user.amiboot.base', 'user.amiboot.disk_format',
             'user.amiboot.fs', 'user.amiboot.id', 'user.amiboot.template',
             'trusted.amiboot.backing'},
            {meta.USED_BASE, meta.DISK_FORMAT, meta.FS_FACTS, meta.BASE_ID,
             meta.TEMPLATE, meta.BACKING})
        self.assertEqual('.amiboot-building', meta.BUILDING)
        self.assertEqual('owner', meta.OWNER)

    def test_absent_reads_none(self):
        self.assertIsNone(meta.get(self.f, meta.FS_FACTS))
        self.assertIsNone(meta.get_text(self.f, meta.DISK_FORMAT))
        self.assertIsNone(meta.get_json(self.f, meta.FS_FACTS))
        self.assertIsNone(meta.recorded_backing(self.f))
        missing = os.path.join(self.d, 'missing')
        self.assertIsNone(meta.get_text(missing, meta.DISK_FORMAT))

    def test_text_round_trip(self):
        meta.put(self.f, meta.DISK_FORMAT, 'ami')
        self.assertEqual(b'ami', os.getxattr(self.f, meta.DISK_FORMAT))
        self.assertEqual('ami', meta.get_text(self.f, meta.DISK_FORMAT))

    def test_json_round_trip_on_path_and_fd(self):
        facts = {'fstype': 'ext4', 'clean': True}
        meta.put(self.f, meta.FS_FACTS, facts)
        self.assertEqual(facts, meta.get_json(self.f, meta.FS_FACTS))
        with open(self.f, 'rb') as f:
            self.assertEqual(facts, meta.get_json(f.fileno(), meta.FS_FACTS))

    def test_garbage_reads_none(self):
        os.setxattr(self.f, meta.FS_FACTS, b'{not json')
        self.assertIsNone(meta.get_json(self.f, meta.FS_FACTS))
        os.setxattr(self.f, meta.USED_BASE, b'\xff\xfe')
        self.assertIsNone(meta.get_text(self.f, meta.USED_BASE))

    def test_put_create_refuses_a_second_writer(self):
        meta.put(self.f, meta.BASE_ID, 'first', create=True)
        with self.assertRaises(OSError) as cm:
            meta.put(self.f, meta.BASE_ID, 'second', create=True)
        self.assertEqual(errno.EEXIST, cm.exception.errno)
        self.assertEqual('first', meta.get_text(self.f, meta.BASE_ID))

    def test_record_without_xattrs_is_no_error(self):
        # procfs has no user xattrs; a missing file has none either.
        self.assertFalse(meta.record('/proc/self/comm', meta.DISK_FORMAT,
                                     'ami'))
        self.assertFalse(meta.record(os.path.join(self.d, 'missing'),
                                     meta.DISK_FORMAT, 'ami'))
        self.assertTrue(meta.record(self.f, meta.DISK_FORMAT, 'aki'))
        self.assertEqual('aki', meta.get_text(self.f, meta.DISK_FORMAT))

    @unittest.skipUnless(os.geteuid() == 0, "trusted xattrs need root")
    def test_backing_is_absolute_and_trusted(self):
        # A relative name is recorded absolute.
        meta.record_backing(self.f, os.path.relpath(self.f))
        self.assertEqual(os.fsencode(self.f),
                         os.getxattr(self.f, 'trusted.amiboot.backing'))
        with open(self.f, 'rb') as f:
            self.assertEqual(self.f, meta.recorded_backing(f.fileno()))


class OwnerTest(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.mark = os.path.join(tmp.name, meta.BUILDING)

    def test_own_mark_is_alive(self):
        meta.write_owner(self.mark)
        with open(self.mark) as f:
            pid, start = f.read().split()
        self.assertEqual(os.getpid(), int(pid))
        self.assertEqual(meta.start_time(os.getpid()), start)
        self.assertFalse(meta.owner_dead(self.mark))

    def test_mark_of_a_process_that_exited_is_dead(self):
        subprocess.run([sys.executable, '-c',
                        'import sys; from nova_amiboot import meta; '
                        'meta.write_owner(sys.argv[1])', self.mark],
                       check=True)
        self.assertTrue(meta.owner_dead(self.mark))

    def test_reused_pid_is_dead(self):
        # Our pid with another start time: a process that had the pid.
        with open(self.mark, 'w') as f:
            f.write('%d 1\n' % os.getpid())
        self.assertTrue(meta.owner_dead(self.mark))

    def test_missing_or_partial_mark_is_not_dead(self):
        self.assertFalse(meta.owner_dead(self.mark))
        with open(self.mark, 'w') as f:
            f.write('123')
        self.assertFalse(meta.owner_dead(self.mark))


if __name__ == '__main__':
    unittest.main()
