"""Hostile boots against the real libvirtd: another state directory's
domain survives them, attack parameters never reach a guest, and the shared
bases stay root-owned while a guest runs.

Names carry a random suffix: other users of this libvirtd may run the same
tests at the same time.
"""

import os
import shutil
import stat
import uuid

from nova_amiboot import domain
from tests.functional import base
from tests.functional import faults
from tests.functional import test_cli
from tests.testbed import report

# The image owner of state directory A keeps its guest running: /bin/sh as
# PID 1 waits on the serial console (nobody types), unlike the test bed's
# init, which reports and powers off.
HOLD_CMDLINE = 'root=/dev/vda console=ttyS0 init=/bin/sh'


class ScopedLeakCheck(object):
    """The leak check for this test's own files only.

    Other users of this host run qemu-storage-daemon at the same time; a
    daemon or export of this test names its scratch directory.
    """

    def assertNothingLeaked(self):
        for tool in ('qemu-storage-daemon', 'qemu-nbd'):
            self.assertEqual(
                [], faults.processes_mentioning(tool, self.instances))
        self.assertNoPartials()


class OwnerTestCase(ScopedLeakCheck, test_cli.CliTestCase):

    def setUp(self):
        super().setUp()
        self.state_b = self.scratch('state-b')
        os.makedirs(self.state_b)
        self.name = 'own-' + uuid.uuid4().hex[:8]

    def amiboot_b(self, *args):
        saved = self.state
        self.state = self.state_b
        try:
            return self.amiboot(*args, ok=False)
        finally:
            self.state = saved

    def error_b(self, *args):
        saved = self.state
        self.state = self.state_b
        try:
            return self.error(*args)
        finally:
            self.state = saved

    def a_domain(self):
        dom = self.host.lookup('amiboot-' + self.name)
        self.assertIsNotNone(dom, "A's domain is gone")
        return dom

    def base_files(self):
        # The cached images (not the directory of grown templates, which
        # no guest opens: instance disks are copies of them).
        d = os.path.join(self.state, 'instances', '_base')
        return {n: os.stat(os.path.join(d, n)) for n in os.listdir(d)
                if os.path.isfile(os.path.join(d, n))}


class TestOtherStateDirectory(OwnerTestCase):

    def test_failed_boots_from_b_leave_a_running(self):
        self.import_testbed('tb', '--property',
                            'os_command_line=' + HOLD_CMDLINE)
        inst_a = self.boot(self.name, '--image', 'tb', '--network', 'none')
        # The cache wrote AMI, AKI and ARI bases root-owned 0644.
        bases_before = {n: (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode),
                            s.st_size) for n, s in self.base_files().items()}
        self.assertEqual(3, len(bases_before))
        self.assertEqual({(0, 0, 0o644)},
                         {v[:3] for v in bases_before.values()})
        dom = self.a_domain()
        self.assertTrue(dom.isActive())
        uuid_a = dom.UUIDString()
        self.assertEqual(inst_a['uuid'], uuid_a)
        self.assertEqual(
            domain.Owner(os.path.realpath(self.state), uuid_a),
            self.host.owner_of(dom))

        # B has the same test bed and tries the same name, with input that
        # fails at each stage (refused early, or at define).
        saved = self.state
        self.state = self.state_b
        try:
            self.import_testbed('tb')
        finally:
            self.state = saved
        hostile = [
            (('--network', 'bogus'), 'bogus'),
            (('--network', 'bridge:br0\n'), 'br0'),
            (('--boot-param', 'init=/bin/sh'), 'init=/bin/sh'),
            (('--boot-param', 'console="ttyS0 init=/bin/sh"'), 'refused'),
            (('--network', 'none'), 'exists already'),
        ]
        for extra, expected in hostile:
            with self.subTest(extra):
                msg = self.error_b('boot', self.name, '--image', 'tb',
                                   *extra)
                self.assertIn(expected, msg)
                self.assertIn(self.name, msg)
                dom = self.a_domain()
                self.assertEqual(uuid_a, dom.UUIDString())
                self.assertTrue(dom.isActive(), "A's guest was stopped")
        self.assertIn(os.path.realpath(self.state), msg)
        self.assertEqual([], self.json_b('list'))

        # A record forged in B (A's uuid, so libvirt finds A's domain):
        # B's commands see a domain without B's mark and leave it alone.
        rec_dir = os.path.join(self.state, 'instances', uuid_a)
        forged = os.path.join(self.state_b, 'instances', uuid_a)
        os.makedirs(forged)
        shutil.copy(os.path.join(rec_dir, 'amiboot.json'), forged)
        self.assertEqual('foreign', self.json_b('show', self.name)['state'])
        for cmd in ('stop', 'delete', 'start'):
            with self.subTest(cmd):
                msg = self.error_b(cmd, self.name)
                self.assertIn('not created from state directory', msg)
                self.assertTrue(self.a_domain().isActive())
        shutil.rmtree(forged)

        # While A's guest runs, the shared bases are root's and unchanged;
        # libvirt relabels only A's own files (so the check means
        # something: its DAC labelling is active).
        for n, s in self.base_files().items():
            with self.subTest(base=n):
                self.assertEqual(bases_before[n],
                                 (s.st_uid, s.st_gid,
                                  stat.S_IMODE(s.st_mode), s.st_size))
        own = os.stat(os.path.join(rec_dir, 'disk'))
        self.assertNotEqual(0, own.st_uid)
        self.assertNotEqual(0, os.stat(os.path.join(rec_dir,
                                                    'kernel')).st_uid)

        # A itself can still delete it.
        self.amiboot('delete', self.name)
        self.assertIsNone(self.host.lookup('amiboot-' + self.name))
        for n, s in self.base_files().items():
            self.assertEqual(bases_before[n],
                             (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode),
                              s.st_size))

    def json_b(self, *args):
        p = self.amiboot_b(*args, '-f', 'json')
        self.assertEqual(0, p.returncode, p.stderr)
        return test_cli.json.loads(p.stdout)

    def test_unmarked_domain_of_the_same_name(self):
        # A domain nobody marked (another libvirt user) with our name.
        self.import_testbed()
        xml = domain.build_domain_xml(domain.DomainSpec(
            name='amiboot-' + self.name, uuid=str(uuid.uuid4()),
            memory_mb=64, vcpus=1, kernel=self.testbed['kernel'],
            initrd=self.testbed['ramdisk'], cmdline='quiet',
            disk_path='/nonexistent', console_log='/dev/null',
            virt_type='qemu', network=domain.Network('none')))
        dom = self.host.conn.defineXML(xml)
        self.addCleanup(dom.undefine)
        msg = self.error('boot', self.name, '--image', 'tb', '--network',
                         'none')
        self.assertIn('not made by amiboot', msg)
        self.assertEqual(dom.UUIDString(), self.a_domain().UUIDString())
        self.assertEqual([], self.json('list'))


class TestHostileBootParameters(OwnerTestCase):

    def test_attack_never_reaches_the_guest_and_legit_does(self):
        self.import_testbed()
        nonce = uuid.uuid4().hex[:8]
        before = self.state_snapshot()
        udata = self.scratch('ud')
        attacks = [
            ('--boot-param', 'console="ttyS0 init=/bin/sh"'),
            ('--boot-param', 'console=ttyS0\\ init=/bin/sh'),
            ('--boot-param', 'console=ttyS0\x0binit=/bin/sh'),
            ('--boot-param', 'console=ttyS0\x0crdinit=/bin/sh'),
            ('--boot-param', 'console=ttyS0\u00a0rdinit=/bin/sh'),
            ('--boot-param', 'console=ttyS0\ninit=/bin/sh'),
            ('--boot-param', 'console=ttyS0\tinit=/bin/sh'),
            ('--boot-param', 'quiet\n'),
            ('--boot-param', '=init=/bin/sh'),
        ]
        for data in (b'bootparams=console="ttyS0 init=/bin/sh"\n',
                     b'bootparams=console=ttyS0\xc2\xa0rdinit=/bin/sh\n',
                     b'bootparams=quiet\x0binit=/bin/sh\n'):
            with open(udata, 'wb') as f:
                f.write(data)
            with self.subTest(data):
                msg = self.error('boot', self.name, '--image', 'tb',
                                 '--user-data', udata)
                self.assertIn('Instance %s:' % self.name, msg)
        for extra in attacks:
            with self.subTest(extra):
                msg = self.error('boot', self.name, '--image', 'tb', *extra)
                self.assertIn('Instance %s:' % self.name, msg)
        # Refused before any work: no instance, no disk, no domain.
        self.assertEqual(before, self.state_snapshot())
        self.assertIsNone(self.host.lookup('amiboot-' + self.name))

        # The legit parameters reach the guest's kernel exactly.
        with open(udata, 'w') as f:
            f.write('#cloud-config\nbootparams="amiboot.ud=%s"\r\n' % nonce)
        self.boot(self.name, '--image', 'tb', '--network', 'none',
                  '--boot-param', ' quiet  amiboot.cli=%s' % nonce,
                  '--boot-param', 'no-timer-check',
                  '--user-data', udata, '--wait')
        rep = report.parse(self.amiboot('console', self.name).stdout)
        words = rep['cmdline'].split()
        self.assertEqual(['quiet', 'amiboot.cli=%s' % nonce,
                          'no-timer-check', 'amiboot.ud=%s' % nonce],
                         words[-4:])
        self.assertFalse([w for w in words
                          if w.split('=')[0] in ('init', 'rdinit')])
        self.amiboot('delete', self.name)


class TestLocalCloudVirtType(ScopedLeakCheck, base.RealToolsTestCase):
    """[local] virt_type = auto outside the command line."""

    def test_boot_decides_auto(self):
        from nova_amiboot.local import cloud as local_cloud
        from nova_amiboot.local import hostcheck
        from nova_amiboot import spawn

        state = self.scratch('state-auto')
        cloud = local_cloud.LocalCloud(self.conf, state)
        self.conf.set_override('virt_type', 'auto', 'local')
        self.addCleanup(cloud.close)
        tb = self.testbed
        cloud.import_triplet('tb', tb['kernel'], tb['ramdisk'], tb['root'])
        name = 'auto-' + uuid.uuid4().hex[:8]
        inst = cloud.boot(name, 'tb', spawn.Flavor('t', 1, 256, 1),
                          network='none', start=False)
        self.addCleanup(cloud.delete, name)
        kernel = os.path.join(cloud.store.path,
                              cloud.find_image('tb').kernel_id)
        want = hostcheck.choose_virt_type('auto', cloud.host.conn, kernel,
                                          state)[0]
        dom = cloud.host.lookup(local_cloud.DOMAIN_PREFIX + inst.name)
        self.assertIn(want, ('kvm', 'qemu'))
        self.assertIn("<domain type='%s'" % want, dom.XMLDesc(0))
