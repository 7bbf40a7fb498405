"""Injection into hostile guest filesystems, built here on real ext4.

Images are made with mkfs.ext4 -d from a host tree (names and symlink
targets may hold newlines there), then crafted further with debugfs or by
patching bytes (a NUL in a name). Injection runs on the image file itself
(a 'file' target) and once through the FUSE attach; every tool is real.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import inject
from tests.functional.base import make_conf

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk0 test@amiboot'
AK = '/root/.ssh/authorized_keys'
MiB = 1024 * 1024

# What a symlink target or a name may print to pose as debugfs structure.
# The short ones fit a fast symlink, whose target debugfs stat prints.
SPOOFS = [
    '\ndebugfs: stat /var\nInode: 1 Type: dir\n',
    '\ndebugfs: stat /root/.ssh\nInode: 1 Type: directory\n',
    '\ndebugfs: stat /var/lib\nInode: 1 Type: directory\n',
    '\ndebugfs: stat /root/.ssh\nInode: 2   Type: directory    Mode:  0700\n',
    '\ndebugfs: imap /root/.ssh\nInode 2 is part of block group 0\n'
    '\tlocated at block 1, offset 0x0000\n',
    '\ndebugfs: idump /root/.ssh\n0000  ed41 0000 0010 0000 0000 0000 0000 '
    '0000  ................\n\n',
    'debugfs: cat /root/.ssh/authorized_keys\n',
    '/etc\n\n*\n',
    'x' * 900 + '\ndebugfs: idump /root/.ssh\n',
]


class AdversarialTestCase(unittest.TestCase):

    def setUp(self):
        self.top = tempfile.mkdtemp(prefix='amiboot-adv-', dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.top, True)
        self.n = 0

    def build(self, populate=None, debugfs=(), features=None, size='32M',
              inode_size=None):
        """An ext4 image of a tree with /etc and /root/.ssh."""
        self.n += 1
        tree = os.path.join(self.top, 'tree%d' % self.n)
        for d in ('etc', 'root/.ssh', 'var'):
            os.makedirs(os.path.join(tree, d))
        with open(os.path.join(tree, 'etc/shadow'), 'w') as f:
            f.write('root:*:19000:0:99999:7:::\n')
        with open(os.path.join(tree, 'etc/hostname'), 'w') as f:
            f.write('old\n')
        if populate:
            populate(tree)
        img = os.path.join(self.top, 'img%d' % self.n)
        cmd = ['mkfs.ext4', '-q', '-F', '-d', tree]
        if features:
            cmd += ['-O', features]
        if inode_size:
            cmd += ['-I', str(inode_size)]
        subprocess.run(cmd + [img, size], check=True, capture_output=True)
        if debugfs:
            subprocess.run(['debugfs', '-w', '-f', '-', img], check=True,
                           capture_output=True,
                           input=''.join(c + '\n' for c in debugfs).encode())
        return img

    def fs(self, img, instance='vm-adv'):
        return inject.GuestFS(attach.Target(img, 'file'), instance=instance)

    def cat(self, img, path):
        return subprocess.run(['debugfs', '-R', 'cat %s' % path, img],
                              check=True, capture_output=True).stdout

    def assertRefused(self, exc, fn, *args, path=AK):
        with self.assertRaises(exc) as cm:
            fn(*args)
        msg = str(cm.exception)
        self.assertIn('vm-adv', msg)
        self.assertIn(path, msg)
        self.assertNotIn('\n', msg)
        return msg


class TestSpoofedStructure(AdversarialTestCase):
    """Guest bytes that debugfs prints raw never pass for its answers."""

    def test_symlinked_dir_with_spoofing_targets(self):
        for target in SPOOFS:
            with self.subTest(target=target[:60]):
                def populate(tree):
                    shutil.rmtree(os.path.join(tree, 'root/.ssh'))
                    os.symlink(target, os.path.join(tree, 'root/.ssh'))
                img = self.build(populate)
                msg = self.assertRefused(exception.UnsafeInjectionPath,
                                         inject.inject_key, self.fs(img),
                                         KEY)
                self.assertIn('/root/.ssh is a symbolic link', msg)

    def test_symlinked_file_with_spoofing_targets(self):
        for target in SPOOFS:
            with self.subTest(target=target[:60]):
                def populate(tree):
                    os.symlink(target, os.path.join(tree, 'root/.ssh/'
                                                    'authorized_keys'))
                img = self.build(populate)
                msg = self.assertRefused(exception.UnsafeInjectionPath,
                                         inject.inject_key, self.fs(img),
                                         KEY)
                self.assertIn('is a symbolic link', msg)
                self.assertRefused(exception.UnsafeInjectionPath,
                                   self.fs(img).read, AK)

    def test_symlinked_var_lib_for_user_data(self):
        for target in SPOOFS:
            with self.subTest(target=target[:60]):
                def populate(tree):
                    os.symlink(target, os.path.join(tree, 'var/lib'))
                img = self.build(populate)
                msg = self.assertRefused(
                    exception.UnsafeInjectionPath, inject.inject_user_data,
                    self.fs(img), b'#cloud-config\n', 'id', 'host',
                    path='/var/lib/cloud/seed/nocloud/meta-data')
                self.assertIn('/var/lib is a symbolic link', msg)

    def test_spoofing_names_and_xattrs_are_inert(self):
        names = [s.replace('/', '_') for s in SPOOFS if len(s) < 250] + [
            '.ssh\n', '\n.ssh', 'debugfs: imap _root', 'x' * 255]

        def populate(tree):
            for i, name in enumerate(names):
                for d in ('root', 'root/.ssh'):
                    with open(os.path.join(tree, d, name), 'w') as f:
                        f.write('%d\n' % i)
        value = os.path.join(self.top, 'xattr-value')
        with open(value, 'w') as f:
            f.write(SPOOFS[3] * 20)
        small = os.path.join(self.top, 'xattr-small')
        with open(small, 'w') as f:
            f.write((SPOOFS[1] + SPOOFS[3])[:700])
        # Large inodes hold small xattrs inside the inode: in the dump.
        for inode_size in (None, 1024):
            img = self.build(populate, inode_size=inode_size, debugfs=[
                'ea_set -f %s /root user.spoof' % value,
                'ea_set -f %s /root/.ssh user.spoof' % small,
                'ea_set -f %s /root/.ssh user.spoof2' % small])
            fs = self.fs(img)
            self.assertTrue(inject.inject_key(fs, KEY))
            self.assertEqual(('%s\n%s\n' % (inject.KEY_MARKER, KEY))
                             .encode(), self.cat(img, AK))
            self.assertEqual((0o700, 0, 0), fs.stat('/root/.ssh'))

    def test_nul_in_a_name(self):
        def populate(tree):
            for name in ('.sshQtail', 'authorized_keysQ'):
                open(os.path.join(tree, 'root', name), 'w').close()
        img = self.build(populate, features='^metadata_csum')
        with open(img, 'r+b') as f:
            data = f.read()
            for name in (b'.sshQtail', b'authorized_keysQ'):
                at = data.index(name)
                f.seek(at + name.index(b'Q'))
                f.write(b'\0')
        self.assertTrue(inject.inject_key(self.fs(img), KEY))
        self.assertIn(KEY.encode(), self.cat(img, AK))

    def test_content_posing_as_answers_is_content(self):
        content = ('ssh-rsa AAAAold old\n' + SPOOFS[3] + SPOOFS[2]).encode()

        def populate(tree):
            with open(os.path.join(tree, 'root/.ssh/authorized_keys'),
                      'wb') as f:
                f.write(content)
        img = self.build(populate)
        fs = self.fs(img)
        self.assertEqual(content, fs.read(AK))
        self.assertTrue(inject.inject_key(fs, KEY))
        self.assertFalse(inject.inject_key(self.fs(img), KEY))
        self.assertTrue(self.cat(img, AK).startswith(content))

    def test_through_the_fuse_attach(self):
        def populate(tree):
            shutil.rmtree(os.path.join(tree, 'root/.ssh'))
            os.symlink(SPOOFS[1], os.path.join(tree, 'root/.ssh'))
        img = self.build(populate)
        disk = os.path.join(self.top, 'overlay.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F',
                        'raw', '-b', img, disk], check=True)
        with attach.attached(disk, 'qcow2', make_conf(), 'fuse',
                             backing=attach.HEADER) as tg:
            fs = inject.GuestFS(tg, instance='vm-adv')
            self.assertRefused(exception.UnsafeInjectionPath,
                               inject.inject_key, fs, KEY)
            inject.inject_hostname(fs, 'fused')
            self.assertEqual(b'fused\n', fs.read('/etc/hostname'))


class TestOtherKinds(AdversarialTestCase):

    def test_not_regular_files(self):
        for cmds, what in (
                (['mkdir /root/.ssh/authorized_keys'], 'directory'),
                # (mknod links its name argument in the current directory)
                (['cd /root/.ssh', 'mknod authorized_keys p'], 'fifo'),
                (['cd /root/.ssh', 'mknod authorized_keys b 8 0'],
                 'block dev'),
                (['cd /root', 'rmdir .ssh', 'mknod .ssh c 1 3'],
                 'char dev')):
            with self.subTest(what=what):
                img = self.build(debugfs=cmds)
                self.assertRefused(exception.UnsafeInjectionPath,
                                   inject.inject_key, self.fs(img), KEY)
                if what != 'char dev':
                    self.assertRefused(exception.UnsafeInjectionPath,
                                       self.fs(img).read, AK)

    def test_hard_link_to_shadow_is_not_written_through(self):
        def populate(tree):
            os.link(os.path.join(tree, 'etc/shadow'),
                    os.path.join(tree, 'root/.ssh/authorized_keys'))
        img = self.build(populate)
        before = self.cat(img, '/etc/shadow')
        self.assertTrue(inject.inject_key(self.fs(img), KEY))
        self.assertEqual(before, self.cat(img, '/etc/shadow'))
        self.assertIn(KEY.encode(), self.cat(img, AK))


class TestBadInput(AdversarialTestCase):

    def test_non_utf8_keys_file_is_kept(self):
        old = b'ssh-rsa AAAAold \xff\xfe old\n\xff\xfe'

        def populate(tree):
            with open(os.path.join(tree, 'root/.ssh/authorized_keys'),
                      'wb') as f:
                f.write(old)
        img = self.build(populate)
        self.assertTrue(inject.inject_key(self.fs(img), KEY))
        self.assertEqual(old + ('\n%s\n%s\n' % (inject.KEY_MARKER, KEY))
                         .encode(), self.cat(img, AK))

    def test_non_utf8_shadow(self):
        def populate(tree):
            with open(os.path.join(tree, 'etc/shadow'), 'wb') as f:
                f.write(b'root:*:1::::::\n\xff\xfe:x:1::::::\n')
        img = self.build(populate)
        inject.inject_password(self.fs(img), 'secret')
        shadow = self.cat(img, '/etc/shadow').split(b'\n')
        self.assertTrue(shadow[0].startswith(b'root:$6$'))
        self.assertEqual(b'\xff\xfe:x:1::::::', shadow[1])

    def test_trailing_newlines_and_control_characters(self):
        img = self.build()
        fs = self.fs(img)
        for bad in ('web\n', 'web\r', 'we b', 'web\x00', 'w\u00e9b', '',
                    '-web', 'a' * 64):
            with self.subTest(hostname=bad):
                self.assertRefused(exception.InjectionFailed,
                                   inject.inject_hostname, fs, bad,
                                   path='/etc/hostname')
        for bad in ('ssh-rsa A\nssh-rsa B', 'ssh-rsa A\x00B', 'ssh-rsa \x1b[A',
                    'ssh-rsa A\rB', 'ssh-rsa \u00e9', ''):
            with self.subTest(key=bad):
                self.assertRefused(exception.InjectionFailed,
                                   inject.inject_key, fs, bad)
        for bad in ('pw\nroot::0:', 'pw\x00', 'pw\r', ''):
            with self.subTest(password=bad):
                self.assertRefused(exception.InjectionFailed,
                                   inject.inject_password, fs, bad,
                                   path='/etc/shadow')
        for bad in ('/etc/hostname\n', '/etc/host\nname', '/etc\n/x',
                    '/etc/-x', '/etc/a\x00', '/etc/\u00e9', 'etc/x',
                    '/etc/../x', '/' + 'a' * 256, '/etc/<2>'):
            with self.subTest(path=bad):
                with self.assertRaises(exception.UnsafeInjectionPath) as cm:
                    fs.write(bad, b'x')
                self.assertIn('vm-adv', str(cm.exception))
                shown = bad if bad.isascii() and bad.isprintable() \
                    else ascii(bad)
                self.assertIn(shown, str(cm.exception))
                self.assertNotIn('\n', str(cm.exception))
        self.assertEqual(b'old\n', self.cat(img, '/etc/hostname'))

    def test_user_data_metadata_cannot_add_keys(self):
        img = self.build()
        inject.inject_user_data(self.fs(img), b'#cloud-config\n',
                                'id\nx: 1', 'host\nuser: evil')
        meta = self.cat(img, '/var/lib/cloud/seed/nocloud/meta-data')
        self.assertEqual(2, meta.count(b'\n'))
        self.assertIn(b'local-hostname: "host\\nuser: evil"\n', meta)


_RSS_CHILD = textwrap.dedent('''
    import resource, sys
    from nova_amiboot import attach, exception, inject
    fs = inject.GuestFS(attach.Target(sys.argv[1], 'file'),
                        instance='vm-adv')
    try:
        {call}
        print('no error')
    except exception.AmibootException as e:
        print(type(e).__name__, e)
    # This process's peak: VmHWM of its own memory (ru_maxrss of SELF is
    # kept across execve, so it would count the test runner's size).
    with open('/proc/self/status') as f:
        hwm = [l.split()[1] for l in f if l.startswith('VmHWM:')][0]
    print(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
''')


class TestHugeFiles(AdversarialTestCase):
    """A sparse guest file of 512 MiB: refused, memory stays small."""

    def run_child(self, img, call):
        p = subprocess.run([sys.executable, '-c',
                            _RSS_CHILD.format(call=call), img],
                           capture_output=True, text=True, check=True,
                           cwd=os.path.dirname(os.path.dirname(
                               os.path.dirname(__file__))))
        lines = p.stdout.strip().splitlines()
        own, children = (int(x) * 1024 for x in lines[-1].split())
        return lines[0], own, children

    def check(self, img, call, path):
        result, own, children = self.run_child(img, call)
        self.assertTrue(result.startswith('GuestFileTooLarge'), result)
        self.assertIn('vm-adv', result)
        self.assertIn('%s in the guest is %d bytes' % (path, 512 * MiB),
                      result)
        # Python with our modules is ~60 MiB; reading the file would be
        # more than 512 MiB (1.5 GiB before the bound).
        self.assertLess(own, 200 * MiB)
        self.assertLess(children, 200 * MiB)

    def test_sparse_keys_file_from_mkfs(self):
        def populate(tree):
            with open(os.path.join(tree, 'root/.ssh/authorized_keys'),
                      'wb') as f:
                f.truncate(512 * MiB)
        img = self.build(populate)
        self.assertLess(os.stat(img).st_blocks * 512, 64 * MiB)
        self.check(img, 'inject.inject_key(fs, %r)' % KEY, AK)

    def test_size_field_of_shadow(self):
        img = self.build(debugfs=['sif /etc/shadow size %d' % (512 * MiB)])
        self.check(img, 'inject.inject_password(fs, "pw")', '/etc/shadow')

    def test_just_under_the_bound_is_read(self):
        img = self.build(debugfs=['sif /etc/hostname size %d'
                                  % inject.READ_LIMIT])
        data = self.fs(img).read('/etc/hostname')
        self.assertEqual(inject.READ_LIMIT, len(data))
        self.assertTrue(data.startswith(b'old\n\0'))
