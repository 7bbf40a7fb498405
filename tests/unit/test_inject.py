"""inject: formatting of what is written into a guest.

Only the formatting rules (marker, idempotence, refusals) are tested
here: a recording stand-in with GuestFS's read/write interface takes
GuestFS's place. (GuestFS itself, debugfs on a Target, is not covered by
this file; it could run on attach.Target(path, 'file') and a real ext4.)
"""

import unittest

from nova_amiboot import exception
from nova_amiboot import inject

AK = '/root/.ssh/authorized_keys'
KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake user@host'


class FakeFS(object):
    # Stand-in for GuestFS: only read() and write() are used here.
    instance = 'inst-42'

    def __init__(self, files=None):
        self.files = dict(files or {})
        self.modes = {}

    def read(self, path):
        return self.files.get(path)

    def write(self, path, data, mode=0o644, **kw):
        self.files[path] = data
        self.modes[path] = (mode, kw)


class InjectKeyTest(unittest.TestCase):

    def test_new_file(self):
        fs = FakeFS()
        self.assertTrue(inject.inject_key(fs, KEY + '\n'))
        self.assertEqual((inject.KEY_MARKER + '\n' + KEY + '\n').encode(),
                         fs.files[AK])
        mode, kw = fs.modes[AK]
        self.assertEqual(0o600, mode)
        self.assertEqual(0o700, kw.get('dir_mode'))

    def test_existing_kept_and_newline_added(self):
        old = b'ssh-rsa AAAAold \xff latin\n# c\nssh-rsa last'
        fs = FakeFS({AK: old})
        self.assertTrue(inject.inject_key(fs, KEY))
        self.assertTrue(fs.files[AK].startswith(old + b'\n'))
        self.assertTrue(fs.files[AK].endswith(KEY.encode() + b'\n'))

    def test_idempotent(self):
        fs = FakeFS()
        inject.inject_key(fs, KEY)
        first = fs.files[AK]
        self.assertFalse(inject.inject_key(fs, KEY))
        self.assertEqual(first, fs.files[AK])
        self.assertEqual(1, first.count(inject.KEY_MARKER.encode()))

    def test_hostile_keys_refused(self):
        for key in ('ssh-rsa AAA\nssh-rsa evil', 'ssh-rsa A\x00B',
                    'ssh-rsa \u00e9', '', None, b'ssh-rsa AAA',
                    'x' * 20000):
            fs = FakeFS()
            with self.subTest(key=repr(key)[:40]):
                with self.assertRaises(exception.InjectionFailed) as cm:
                    inject.inject_key(fs, key)
                self.assertIn('inst-42', str(cm.exception))
                self.assertEqual({}, fs.files)


class InjectHostnameTest(unittest.TestCase):

    def test_short_name_written(self):
        fs = FakeFS()
        inject.inject_hostname(fs, 'web-1.example.org')
        self.assertEqual(b'web-1\n', fs.files['/etc/hostname'])

    def test_bad_names_refused(self):
        for name in ('-bad', 'bad-', 'a' * 64, 'a b', 'a\nb', '', None,
                     'x_y'):
            fs = FakeFS()
            with self.subTest(name=name):
                with self.assertRaises(exception.InjectionFailed) as cm:
                    inject.inject_hostname(fs, name)
                self.assertIn('inst-42', str(cm.exception))
                self.assertEqual({}, fs.files)
