"""The privileged nbd entry points, called with hostile arguments.

They run here in-process as root, as they would in the privsep daemon, on
real files with real qemu-img and e2fsprogs. Mocked, because these
machines have no nbd kernel module: the nbd device itself. qemu-nbd -c
(_qemu_nbd_connect) is replaced by a recorder, and for run_e2fs the device
/dev/nbd3 stands for an image file (the tools get the file's path where
they would get the device). Every check on the arguments is the real one.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from unittest import mock

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import privileged
from nova_amiboot import e2fs
from nova_amiboot.privileged import nbd

UUID = '0b6e6ad1-6d3c-4b0e-9a36-0d5c1c3b2f11'
BASE = 'a' * 40


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


class PrivilegedTestCase(unittest.TestCase):

    def setUp(self):
        if os.geteuid() != 0:
            self.fail("these tests run as root, as the privsep daemon does")
        privileged.run_in_process()
        self.top = tempfile.mkdtemp(prefix='amiboot-priv-', dir='/var/tmp')
        self.addCleanup(shutil.rmtree, self.top, True)
        self.instances = os.path.join(self.top, 'instances')
        os.makedirs(os.path.join(self.instances, '_base'))
        os.makedirs(os.path.join(self.instances, UUID))
        nbd.set_local_instances_path(self.instances)
        self.addCleanup(nbd.set_local_instances_path, None)
        # The devices "connected" by other tests are not this test's.
        p = mock.patch.object(nbd, '_CONNECTED', set())
        p.start()
        self.addCleanup(p.stop)
        # A canary host file that nothing may read or write.
        self.canary = os.path.join(self.top, 'canary')
        with open(self.canary, 'w') as f:
            f.write('host secret\n')

    def make_fs(self, path):
        tree = os.path.join(self.top, 'tree')
        os.makedirs(os.path.join(tree, 'etc'), exist_ok=True)
        with open(os.path.join(tree, 'etc/hostname'), 'w') as f:
            f.write('guest\n')
        _sh('mkfs.ext4', '-q', '-F', '-d', tree, path, '8M')
        return path

    def assert_canary_intact(self):
        with open(self.canary) as f:
            self.assertEqual('host secret\n', f.read())


class TestConnect(PrivilegedTestCase):

    def setUp(self):
        super().setUp()
        self.base = os.path.join(self.instances, '_base', BASE)
        self.make_fs(self.base)
        self.disk = os.path.join(self.instances, UUID, 'disk')
        _sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
            self.base, self.disk)
        self.seen = []

        def record(device, opts, fds):
            # What qemu-nbd would open: the files behind the fds.
            self.seen.append((device, opts, [os.readlink('/proc/self/fd/%d'
                                                         % fd)
                                             for fd in fds]))
        p = mock.patch.object(nbd, '_qemu_nbd_connect', side_effect=record)
        p.start()
        self.addCleanup(p.stop)

    def test_instance_disk_connects_with_pinned_backing(self):
        nbd.connect('/dev/nbd3', self.disk, 'qcow2')
        (device, opts, files), = self.seen
        self.assertEqual('/dev/nbd3', device)
        self.assertEqual([self.disk, self.base], files)
        spec = json.loads(opts[len('json:'):])
        self.assertEqual('qcow2', spec['driver'])
        self.assertEqual('raw', spec['backing']['driver'])
        self.assertNotIn(self.base, opts)

    def test_spec_opens_in_qemu_nbd(self):
        # The spec given to qemu-nbd -c, served by a real qemu-nbd on a
        # unix socket instead of the (absent) kernel device.
        copy = os.path.join(self.top, 'copy.raw')

        def serve(device, opts, fds):
            sock = os.path.join(self.top, 'nbd.sock')
            p = subprocess.Popen(['qemu-nbd', '-k', sock, '--', opts],
                                 pass_fds=fds)
            try:
                for _i in range(300):
                    if os.path.exists(sock):
                        break
                    time.sleep(0.05)
                _sh('qemu-img', 'convert', '-f', 'raw', '-O', 'raw',
                    'nbd+unix:///?socket=' + sock, copy)
                # It holds the checked files and nothing else.
                nbd.check_served_files(p.pid, fds)
            finally:
                p.terminate()
                p.wait()
        nbd._qemu_nbd_connect.side_effect = serve
        nbd.connect('/dev/nbd3', self.disk, 'qcow2')
        out = subprocess.run(['debugfs', '-R', 'cat /etc/hostname', copy],
                             capture_output=True, check=True).stdout
        self.assertEqual(b'guest\n', out)

    def test_a_file_opened_behind_the_checks_is_caught(self):
        # A data file named in a header rewritten after the check: the
        # post-check of qemu-nbd's open files catches it.
        data = os.path.join(self.top, 'host-data')
        os.unlink(self.disk)
        _sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
            'data_file=%s' % data, self.disk, '8M')
        sock = os.path.join(self.top, 'nbd2.sock')
        fd = os.open(self.disk, os.O_RDONLY)
        try:
            p = subprocess.Popen(['qemu-nbd', '-k', sock, '--',
                                  nbd.image_opts(fd, 'qcow2')],
                                 pass_fds=[fd])
            try:
                for _i in range(300):
                    if os.path.exists(sock):
                        break
                    time.sleep(0.05)
                with self.assertRaises(ValueError) as cm:
                    nbd.check_served_files(p.pid, [fd])
                self.assertIn(data, str(cm.exception))
            finally:
                p.terminate()
                p.wait()
        finally:
            os.close(fd)

    def test_raw_disk(self):
        os.unlink(self.disk)
        self.make_fs(self.disk)
        nbd.connect('/dev/nbd0', self.disk, 'raw')
        self.assertEqual([self.disk], self.seen[0][2])
        self.assertEqual('raw', json.loads(self.seen[0][1][5:])['driver'])

    def test_scratch_check_disk(self):
        d = tempfile.mkdtemp(prefix='amiboot-check-', dir=self.instances)
        shutil.copyfile(self.disk, os.path.join(d, 'disk'))
        nbd.connect('/dev/nbd1', os.path.join(d, 'disk'), 'qcow2')
        self.assertEqual(1, len(self.seen))

    def test_hostile_paths(self):
        idir = os.path.join(self.instances, UUID)
        other = os.path.join(self.top, 'elsewhere')
        os.makedirs(other)
        shutil.copyfile(self.disk, os.path.join(other, 'disk'))
        link_dir = os.path.join(self.instances,
                                'ffffffff-ffff-4fff-8fff-ffffffffffff')
        os.symlink(other, link_dir)
        link_disk_dir = os.path.join(self.instances,
                                     'eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee')
        os.makedirs(link_disk_dir)
        os.symlink(self.disk, os.path.join(link_disk_dir, 'disk'))
        hard_dir = os.path.join(self.instances,
                                'dddddddd-dddd-4ddd-8ddd-dddddddddddd')
        os.makedirs(hard_dir)
        os.link(self.canary, os.path.join(hard_dir, 'disk'))
        dir_disk = os.path.join(self.instances,
                                'cccccccc-cccc-4ccc-8ccc-cccccccccccc')
        os.makedirs(os.path.join(dir_disk, 'disk'))
        for bad in ('/etc/shadow', '/dev/vda', '/dev/sda', 'disk',
                    os.path.relpath(self.disk), self.canary,
                    os.path.join(idir, 'disk.rescue'),
                    os.path.join(idir, 'kernel'),
                    os.path.join(idir, '..', UUID, 'disk'),
                    os.path.join(idir, '.', 'disk'),
                    idir + '//disk',
                    os.path.join(self.instances, '_base', BASE),
                    os.path.join(self.instances, '_base', 'disk'),
                    os.path.join(other, 'disk'),
                    os.path.join(link_dir, 'disk'),
                    os.path.join(link_disk_dir, 'disk'),
                    os.path.join(hard_dir, 'disk'),
                    os.path.join(dir_disk, 'disk'),
                    self.disk + '\n', self.disk + '\0', None, 3,
                    [self.disk]):
            with self.subTest(path=bad):
                self.assertRaises((ValueError, OSError), nbd.connect,
                                  '/dev/nbd3', bad, 'qcow2')
        self.assertEqual([], self.seen)
        self.assert_canary_intact()

    def test_symlinked_instances_parent(self):
        # The configured path may itself be a link (it is resolved), but
        # a disk path through the unresolved link is not what was
        # configured.
        alias = os.path.join(self.top, 'alias')
        os.symlink(self.instances, alias)
        nbd.set_local_instances_path(alias)
        nbd.connect('/dev/nbd3', self.disk, 'qcow2')
        self.assertRaises(ValueError, nbd.connect, '/dev/nbd3',
                          os.path.join(alias, UUID, 'disk'), 'qcow2')
        self.assertEqual(1, len(self.seen))

    def test_hostile_backing_files(self):
        for backing, fmt in (('/etc/passwd', 'raw'), (self.canary, 'raw'),
                             ('/dev/vda', 'raw'),
                             (self.base, 'qcow2'),
                             (os.path.join(self.instances, UUID, 'disk2'),
                              'raw')):
            with self.subTest(backing=backing):
                if backing.endswith('disk2'):
                    shutil.copyfile(self.base, backing)
                os.unlink(self.disk)
                _sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-u', '-F',
                    fmt, '-b', backing, self.disk, '8M')
                self.assertRaises(ValueError, nbd.connect, '/dev/nbd3',
                                  self.disk, 'qcow2')
        os.unlink(self.disk)
        data = os.path.join(self.instances, UUID, 'data')
        _sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
            'data_file=%s' % data, self.disk, '8M')
        self.assertRaises(ValueError, nbd.connect, '/dev/nbd3', self.disk,
                          'qcow2')
        self.assertEqual([], self.seen)
        self.assert_canary_intact()

    def test_connected_devices_are_remembered(self):
        self.assertRaises(ValueError, nbd.disconnect, '/dev/nbd3')
        nbd.connect('/dev/nbd3', self.disk, 'qcow2')
        self.addCleanup(nbd._CONNECTED.discard, '/dev/nbd3')
        self.assertIn('/dev/nbd3', nbd._CONNECTED)
        self.assertNotIn('/dev/nbd4', nbd._CONNECTED)

    def test_base_directory_of_another_name(self):
        # nova's [image_cache] subdirectory_name need not be _base.
        other = os.path.join(self.instances, 'cache-dir')
        os.makedirs(other)
        base = os.path.join(other, BASE)
        shutil.copyfile(self.base, base)
        os.unlink(self.disk)
        _sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
            base, self.disk)
        nbd.connect('/dev/nbd3', self.disk, 'qcow2')
        nbd._CONNECTED.discard('/dev/nbd3')
        self.assertEqual([self.disk, base], self.seen[-1][2])
        # Not a directory of the instances path, or not a plain name.
        for bad in (os.path.join(self.top, BASE),
                    os.path.join(self.instances, UUID, BASE),
                    os.path.join(self.instances, '_base', 'sub', BASE)):
            with self.subTest(bad=bad):
                self.assertRaises(ValueError, nbd._check_base, bad)
        # A link on the way is refused.
        link = os.path.join(self.instances, 'linked')
        os.symlink(other, link)
        self.assertRaises(ValueError, nbd._check_base,
                          os.path.join(link, BASE))

    def test_recorded_backing_wins_over_the_header(self):
        # The guest's QEMU rewrote the header to name another base of this
        # host; the base recorded (root-only xattr) is the one served.
        other = os.path.join(self.instances, '_base', 'b' * 40)
        shutil.copyfile(self.base, other)
        os.setxattr(self.disk, 'trusted.amiboot.backing',
                    self.base.encode())
        _sh('qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'raw', '-b',
            other, self.disk)
        nbd.connect('/dev/nbd3', self.disk, 'qcow2')
        nbd._CONNECTED.discard('/dev/nbd3')
        self.assertEqual([self.disk, self.base], self.seen[-1][2])

    def test_hostile_devices_and_formats(self):
        for dev in ('/dev/sda', '/dev/nbd1p1', '/dev/nbd1/../sda', 'nbd0',
                    '/dev/nbd0\n', '/dev/nbd', None):
            self.assertRaises(ValueError, nbd.connect, dev, self.disk,
                              'qcow2')
            self.assertRaises(ValueError, nbd.disconnect, dev)
        for fmt in ('vmdk', 'qcow2,file.filename=/etc/shadow', None):
            self.assertRaises(ValueError, nbd.connect, '/dev/nbd3',
                              self.disk, fmt)
        self.assertEqual([], self.seen)


class TestRunE2fs(PrivilegedTestCase):

    def setUp(self):
        super().setUp()
        self.image = self.make_fs(os.path.join(self.instances, UUID,
                                               'disk'))
        real_run = e2fs.run

        # The device stands for the image file (see the module doc).
        def on_image(tool, options, target, **kwargs):
            if target == '/dev/nbd3':
                target = self.image
            return real_run(tool, options, target, **kwargs)
        p = mock.patch.object(e2fs, 'run', side_effect=on_image)
        p.start()
        self.addCleanup(p.stop)
        # As if connect() had connected it (no nbd module here).
        nbd._CONNECTED.add('/dev/nbd3')
        self.addCleanup(nbd._CONNECTED.discard, '/dev/nbd3')

    def test_only_devices_this_process_connected(self):
        for dev in ('/dev/nbd4', '/dev/nbd0'):
            with self.assertRaises(ValueError) as cm:
                nbd.run_e2fs('blkid', dev,
                             ['-p', '-o', 'value', '-s', 'TYPE'])
            self.assertIn('not connected by this process', str(cm.exception))
            self.assertRaises(ValueError, nbd.disconnect, dev)

    def debugfs(self, requests, write=False, **kw):
        return nbd.run_e2fs('debugfs', '/dev/nbd3', ['-w'] if write else [],
                            requests=requests, **kw)

    def test_allowed_use(self):
        out, _err, trunc = nbd.run_e2fs('blkid', '/dev/nbd3',
                                        ['-p', '-o', 'value', '-s', 'TYPE'],
                                        ok_codes=[0, 2])
        self.assertEqual(b'ext4\n', out)
        nbd.run_e2fs('e2fsck', '/dev/nbd3', ['-fp'])
        nbd.run_e2fs('resize2fs', '/dev/nbd3', ['-f'], size='16M')
        self.assertEqual(16 * 1024 ** 2, os.path.getsize(self.image))
        _out, err, _t = self.debugfs(
            [('cd', '/etc'), ('write', b'x\ny\n', 'new'),
             ('sif', 'new', 'mode', 0o100600), ('sif', 'new', 'uid', 7),
             ('mkdir', '/etc/d'), ('sif', 2, 'gid', 0)], write=True)
        self.assertNotIn('rror', err)
        out, _err, _t = self.debugfs([('cat', '/etc/new')])
        self.assertEqual(b'debugfs: cat /etc/new\nx\ny\n', out)
        # Bounded output: the run stops and says so.
        out, _err, trunc = self.debugfs([('cat', '/etc/new')], out_limit=24)
        self.assertTrue(trunc)
        self.assertEqual(24, len(out))

    def test_hostile_options(self):
        shadow_like = os.path.join(self.top, 'x')
        for tool, opts in (
                ('debugfs', ['-R', 'write %s x' % self.canary]),
                ('debugfs', ['-w', '-R', 'dump /etc/hostname %s'
                             % shadow_like]),
                ('debugfs', ['-f', self.canary]),
                ('debugfs', ['-f', 'canary']),
                ('debugfs', ['-z', 'undo']),
                ('debugfs', ['-d', 'x']),
                ('debugfs', ['-w', '-w']),
                ('e2fsck', ['-z', 'etc/cron.d/x']),
                ('e2fsck', ['-fp', '-z', 'x']),
                ('e2fsck', ['-fy']),
                ('e2fsck', ['-E', 'x']),
                ('e2fsck', ['-fp', '/dev/vda']),
                ('e2fsck', ['-fp', 'relative/file']),
                ('resize2fs', ['-f', '-z', 'x']),
                ('resize2fs', ['-P']),
                ('blkid', ['-c', self.canary]),
                ('blkid', ['-p', '/etc/shadow']),
                ('mke2fs', []), ('tune2fs', ['-O', '^has_journal']),
                ('/sbin/debugfs', []), ('e2fsck', '-fp'),
                ('e2fsck', [['-fp']])):
            with self.subTest(tool=tool, opts=opts):
                self.assertRaises(ValueError, nbd.run_e2fs, tool,
                                  '/dev/nbd3', opts)
        for size in ('1G /dev/vda', '-1', '1G;', '16M\n', 16):
            self.assertRaises(ValueError, nbd.run_e2fs, 'resize2fs',
                              '/dev/nbd3', ['-f'], size=size)
        self.assertRaises(ValueError, nbd.run_e2fs, 'e2fsck', '/dev/nbd3',
                          ['-fp'], size='16M')
        for codes in ([], [300], ['0'], [True], list(range(20))):
            self.assertRaises(ValueError, nbd.run_e2fs, 'e2fsck',
                              '/dev/nbd3', ['-fn'], ok_codes=codes)
        for limit in (0, -1, 2 ** 40, '1'):
            self.assertRaises(ValueError, self.debugfs, [('imap', '/etc')],
                              out_limit=limit)
        self.assertFalse(os.path.exists(shadow_like))
        self.assert_canary_intact()

    def test_hostile_debugfs_requests(self):
        dumped = os.path.join(self.top, 'dumped')
        long_stat = 'stat ' + 'A' * 8185
        cases = [
            'write %s x\n' % self.canary,            # a script string
            b'dump /etc/hostname x',
            [],
            [('dump', '/etc/hostname', dumped)],
            [('rdump', '/', self.top)],
            [('!', 'sh')],
            [('stat', '/etc')],
            [('write', self.canary, 'x')],           # a host path, no data
            [('write', b'x', '/etc/x')],             # a path, not a name
            [('write', b'x', 'a\nb')],
            [('write', b'x' * (e2fs.MAX_WRITE + 1), 'x')],
            [('cat', 'etc/hostname/../../x')],
            [('cat', '/etc/../etc/hostname')],
            [('cat', '/etc/./hostname')],
            [('cat', '/etc//hostname')],
            [('cat', '/')],
            [('cat', '/etc/host name')],
            [('cat', '/etc/"x')],
            [('cat', '/etc/host\nname')],
            [('cat', '/etc/hostname\n')],
            [('cat', '/etc/host\0name')],
            [('cat', '/etc/h\u00e9')],
            [('cat', '<12>')],
            [('cat', '-p')],
            [('cat', 0)], [('cat', True)], [('cat', 2 ** 32)],
            [('cat', None)],
            [('cat', '/' + 'a' * 256)],
            [('cat', '/a' * 600)],
            [('imap', '/' + 'A' * 8185 + ' dump /etc/hostname ' + dumped)],
            [(long_stat + ' dump /etc/hostname ' + dumped,)],
            [('imap', long_stat)],
            [('cd', '/etc', 'extra')],
            [('cd',)],
            ['imap /etc'],
            [('sif', 'x', 'links_count', 0)],
            [('sif', 'x', 'mode', -1)],
            [('sif', 'x', 'mode', 0o1000000)],
            [('sif', 'x', 'uid', 2 ** 32)],
            [('sif', 'x', 'uid', True)],
            [('sif', 'x', 'uid', '0')],
            [('sif', 'x', 'mode', '0100644; dump /etc/hostname x')],
            [('mkdir', 'relative')],
            [('rm', '/etc/hostname')],
            [('imap', '/etc')] * (e2fs.MAX_REQUESTS + 1),
        ]
        for requests in cases:
            with self.subTest(requests=repr(requests)[:100]):
                self.assertRaises(ValueError, self.debugfs, requests,
                                  write=True)
        self.assertFalse(os.path.exists(dumped))
        self.assert_canary_intact()
        self.assertRaises(ValueError, nbd.run_e2fs, 'e2fsck', '/dev/nbd3',
                          ['-fn'], requests=[('imap', '/etc')])
        # Nothing was written to the image either.
        out, _e, _t = self.debugfs([('cat', '/etc/hostname')])
        self.assertEqual(b'debugfs: cat /etc/hostname\nguest\n', out)

    def test_the_unprivileged_route_has_the_same_grammar(self):
        # FUSE and file targets run e2fsprogs in the caller's process,
        # through the same builder.
        tg = attach.Target(self.image, 'file')
        for requests in ([('dump', '/etc/hostname', self.canary)],
                         [('cat', '/etc/host\nname')],
                         [('write', self.canary, 'x')],
                         'cat /etc/hostname\n'):
            self.assertRaises(exception.E2fsRequestRefused, tg.debugfs,
                              requests)
        for tool, opts in (('debugfs', ['-R', 'cat /etc/hostname']),
                           ('e2fsck', ['-z', 'x']), ('mke2fs', [])):
            self.assertRaises(exception.E2fsRequestRefused, tg.run, tool,
                              opts)
        out, _err, _t = tg.debugfs([('cat', '/etc/hostname')])
        self.assertEqual(b'debugfs: cat /etc/hostname\nguest\n', out)
        self.assert_canary_intact()

    def test_every_line_is_short(self):
        # The longest request the grammar admits still fits a debugfs
        # line (8191 bytes), so no request can become two commands.
        stage = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, stage)
        longest = '/' + '/'.join(['a' * 255] * 3) + '/' + 'b' * 255
        self.assertEqual(e2fs.MAX_PATH, len(longest))
        script = e2fs.build_script(
            [('cat', longest), ('sif', longest, 'mode', 0o177777),
             ('write', b'', 'n' * 255)], stage)
        lines = script.split(b'\n')
        self.assertEqual(b'', lines[-1])
        self.assertTrue(all(len(line) < e2fs.MAX_LINE for line in lines))
        self.assertLess(e2fs.MAX_LINE, 8191)


_DAEMON_CHILD = textwrap.dedent('''
    import json, sys
    from oslo_privsep import priv_context
    from nova_amiboot import privileged
    from nova_amiboot.privileged import nbd
    privileged.nbd_pctxt.start(method=priv_context.Method.FORK)
    results = []
    def call(fn, *args, **kwargs):
        try:
            r = fn(*args, **kwargs)
            results.append(['ok', [type(x).__name__ for x in r], r[1]])
        except Exception as e:
            results.append([type(e).__name__, str(e)])
    call(nbd.run_e2fs, 'debugfs', '/dev/nbd3', ['-R', 'write x y'])
    call(nbd.run_e2fs, 'debugfs', '/dev/nbd3', ['-w'],
         requests=[('cd', '/etc'), ('write', b'\\\\xff\\\\xfe', 'x')])
    call(nbd.run_e2fs, 'debugfs', '/dev/nbd3', [],
         requests=[('dump', '/etc/shadow', '/tmp/x')])
    call(nbd.connect, '/dev/nbd3', sys.argv[1], 'qcow2')
    call(nbd.connect, '/dev/nbd3', '/etc/shadow', 'raw')
    privileged.nbd_pctxt.stop()
    print(json.dumps(results))
''')


class TestThroughPrivsepDaemon(unittest.TestCase):
    """The same checks across a real privsep daemon (forked, as root).

    Arguments travel as msgpack there (tuples become lists, bytes stay
    bytes); the daemon reads its own configuration (no nova.conf here, so
    nova's default instances path, which does not exist).
    """

    def test_round_trip(self):
        p = subprocess.run(
            [sys.executable, '-c', _DAEMON_CHILD,
             '/var/lib/nova/instances/%s/disk' % UUID],
            capture_output=True, text=True, timeout=120,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
        self.assertEqual(0, p.returncode, p.stderr[-2000:])
        res = json.loads(p.stdout.strip().splitlines()[-1])
        self.assertEqual('RequestRefused', res[0][0])
        self.assertIn('not allowed for debugfs', res[0][1])
        # A valid request on a device this daemon did not connect: refused
        # before anything is opened.
        self.assertEqual('ValueError', res[1][0])
        self.assertIn('/dev/nbd3 was not connected by this process',
                      res[1][1])
        self.assertEqual('RequestRefused', res[2][0])
        for r in res[3:]:
            self.assertEqual('ValueError', r[0])
        self.assertIn('instances path', res[3][1])
