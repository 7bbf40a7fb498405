"""The amiboot command against the real libvirtd, QEMU and e2fsprogs."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from nova_amiboot import guest
from nova_amiboot.local import hostcheck
from tests.functional import base
from tests.testbed import report

AMIBOOT = os.path.join(os.path.dirname(sys.executable), 'amiboot')


class CliTestCase(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        self.state = self.scratch('state')
        os.makedirs(self.state)
        self.config = self.scratch('amiboot.conf')
        with open(self.config, 'w') as f:
            f.write('[local]\nvirt_type = qemu\n'
                    'flavors = lab.small:2:256:1\n')
        self.host = guest.Host()
        self.addCleanup(self.host.close)
        self.names = []
        self.addCleanup(self._remove_domains)
        keydir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, keydir)
        self.key = os.path.join(keydir, 'id_ed25519')
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '',
                        '-C', 'cli@test', '-f', self.key], check=True)

    def _remove_domains(self):
        # Only domains this test's state directory made (its owner mark):
        # other users of this libvirtd may have the same names.
        for name in self.names:
            dom = self.host.lookup('amiboot-' + name)
            owner = dom is not None and self.host.owner_of(dom)
            if owner and owner.state_dir == os.path.realpath(self.state):
                self.host.destroy_owned(owner)

    def amiboot(self, *args, ok=True):
        p = subprocess.run([AMIBOOT, '--state-dir', self.state,
                            '--config-file', self.config] + list(args),
                           capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if ok and p.returncode != 0:
            self.fail("amiboot %s failed (%d): %s"
                      % (' '.join(args), p.returncode, p.stderr))
        return p

    def json(self, *args):
        return json.loads(self.amiboot(*args, '-f', 'json').stdout)

    def error(self, *args):
        p = self.amiboot(*args, ok=False)
        self.assertEqual(1, p.returncode, p.stdout + p.stderr)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(1, len(lines), p.stderr)
        self.assertTrue(lines[0].startswith('amiboot: error: '), lines[0])
        self.assertNotIn('Traceback', p.stderr)
        return lines[0]

    def import_testbed(self, name='tb', *extra):
        tb = self.testbed
        return self.json('image', 'import', name, '--kernel', tb['kernel'],
                         '--ramdisk', tb['ramdisk'], '--root', tb['root'],
                         *extra)

    def state_snapshot(self):
        files = []
        for dirpath, _dirs, names in os.walk(self.state):
            for n in names:
                p = os.path.join(dirpath, n)
                files.append((os.path.relpath(p, self.state),
                              os.path.getsize(p)))
        return sorted(files)

    def boot(self, name, *args):
        self.names.append(name)
        return self.json('boot', name, *args)


class TestImages(CliTestCase):

    def test_import_records_what_glance_would(self):
        ami = self.import_testbed('tb', '--property',
                                  'os_command_line=root=/dev/vda ro',
                                  '--ramdisk-property',
                                  'amiboot_provision=guest')
        self.assertEqual('ami', ami['disk_format'])
        self.assertEqual('ami', ami['container_format'])
        self.assertEqual(os.path.getsize(self.testbed['root']), ami['size'])
        self.assertEqual('sha512', ami['os_hash_algo'])
        self.assertEqual(32, len(ami['checksum']))
        self.assertEqual('root=/dev/vda ro', ami['os_command_line'])
        kernel = self.json('image', 'show', ami['kernel_id'])
        self.assertEqual(('tb-kernel', 'aki'), (kernel['name'],
                                                kernel['disk_format']))
        ramdisk = self.json('image', 'show', 'tb-ramdisk')
        self.assertEqual(ami['ramdisk_id'], ramdisk['id'])
        # The ARI's own property, not the AMI's.
        self.assertEqual('guest', ramdisk['amiboot_provision'])
        self.assertNotIn('amiboot_provision', ami)
        names = [i['name'] for i in self.json('image', 'list')]
        self.assertEqual(['tb', 'tb-kernel', 'tb-ramdisk'], names)
        table = self.amiboot('image', 'list').stdout
        self.assertIn('tb-kernel', table)

    def test_duplicate_and_unsafe_imports_change_nothing(self):
        self.import_testbed()
        before = self.state_snapshot()
        msg = self.error('image', 'import', 'tb', '--kernel',
                         self.testbed['kernel'], '--ramdisk',
                         self.testbed['ramdisk'], '--root',
                         self.testbed['root'])
        self.assertIn('tb', msg)
        self.assertIn('exists already', msg)
        qcow = self.scratch('evil.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F',
                        'raw', '-b', '/etc/shadow', qcow, '64M'], check=True)
        msg = self.error('image', 'import', 'evil', '--kernel',
                         self.testbed['kernel'], '--ramdisk',
                         self.testbed['ramdisk'], '--root', qcow)
        self.assertIn('evil', msg)
        self.assertIn('qcow2', msg)
        msg = self.error('image', 'import', 'evil2', '--kernel', qcow,
                         '--ramdisk', self.testbed['ramdisk'], '--root',
                         self.testbed['root'])
        self.assertIn('evil2-kernel', msg)
        msg = self.error('image', 'import', 'evil3', '--kernel',
                         self.testbed['kernel'], '--ramdisk',
                         self.testbed['ramdisk'], '--root', '/nonexistent')
        self.assertIn('/nonexistent', msg)
        self.assertEqual(before, self.state_snapshot())

    def test_unknown_image(self):
        self.assertIn('no-such', self.error('image', 'show', 'no-such'))
        self.assertIn('no-such', self.error('boot', 'x', '--image',
                                            'no-such'))

    def test_build_ami_and_ari(self):
        tree = self.scratch('tree')
        os.makedirs(os.path.join(tree, 'etc'))
        with open(os.path.join(tree, 'etc/hostname'), 'w') as f:
            f.write('built\n')
        out = self.scratch('built.img')
        res = self.json('image', 'build-ami', '--from-dir', tree, out)
        self.assertEqual(os.path.getsize(out), res['size'])
        info = self.run_cmd('dumpe2fs', '-h', out)
        self.assertIn('Block size:               4096', info)
        self.assertIn('cloudimg-rootfs', info)
        self.assertEqual('built\n', self.run_cmd('debugfs', '-R',
                                                 'cat /etc/hostname', out))
        self.assertIn('exists already', self.error(
            'image', 'build-ami', '--from-dir', tree, out))
        ari_out = self.scratch('ari.img')
        res = self.json('image', 'build-ari', '--kernel-package',
                        self.testbed['kernel_package'], ari_out)
        self.assertEqual(self.testbed['modules'], res['modules'])
        self.assertEqual('amiboot_provision=guest', res['ramdisk_properties'])

    def test_flavors(self):
        flavors = {f['name']: f for f in self.json('flavor', 'list')}
        self.assertEqual({'name': 'm1.tiny', 'root_gb': 1, 'memory_mb': 512,
                          'vcpus': 1}, flavors['m1.tiny'])
        self.assertIn('m1.large', flavors)
        self.assertEqual(2, flavors['lab.small']['root_gb'])


class TestInstances(CliTestCase):

    def test_boot_wait_console_lifecycle(self):
        ami = self.import_testbed()
        nonce = uuid.uuid4().hex[:8]
        udata = self.scratch('user-data')
        with open(udata, 'w') as f:
            f.write('#cloud-config\nbootparams=amiboot.ud=%s\n' % nonce)
        inst = self.boot('vm1', '--image', 'tb', '--flavor', 'lab.small',
                         '--key-file', self.key + '.pub', '--boot-param',
                         'quiet', '--user-data', udata, '--wait')
        self.assertEqual('stopped' if inst['wait'] == 'stopped' else
                         'ready', inst['wait'])
        self.assertEqual(ami['id'], inst['image_id'])
        # The console is kept after the guest powered off.
        console = self.amiboot('console', 'vm1').stdout
        rep = report.parse(console)
        self.assertIn('quiet', rep['cmdline'].split())
        self.assertIn('amiboot.ud=%s' % nonce, rep['cmdline'].split())
        with open(self.key + '.pub') as f:
            self.assertIn(f.read().strip(),
                          rep['authorized_keys'].splitlines())
        self.assertEqual('vm1', rep['hostname'])
        self.assertGreater(int(rep['root_df_kb'].split()[0]), 1900000)
        listing = self.json('list')
        self.assertEqual(['vm1'], [i['name'] for i in listing])
        self.assertTrue(listing[0]['ssh'].startswith('127.0.0.1:'))
        # The image cannot go while vm1 uses it.
        before = self.state_snapshot()
        self.assertIn('vm1', self.error('image', 'delete', 'tb'))
        self.assertEqual(before, self.state_snapshot())
        self.assertIn('exists already', self.error(
            'boot', 'vm1', '--image', 'tb'))
        # start runs it again (the test image reports and powers off): the
        # console log, appended to, then holds a second report.
        self.assertEqual('stopped', self.json('stop', 'vm1')['state'])
        self.json('start', 'vm1')
        deadline = time.monotonic() + 120
        while self.amiboot('console', 'vm1').stdout.count(
                report.END) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        self.assertEqual(2, self.amiboot('console', 'vm1').stdout.count(
            report.END))
        cache = self.json('cache', 'list')
        self.assertEqual(3, len(cache))
        # All three are in use: the disk's backing file, and the bases the
        # instance's own kernel and ramdisk copies were made from.
        self.assertEqual(['vm1'] * 3, [c['users'] for c in cache])
        self.assertIn('vm1', self.amiboot('cache', 'list').stdout)
        self.amiboot('delete', 'vm1')
        self.assertIsNone(self.host.lookup('amiboot-vm1'))
        self.assertEqual([], self.json('list'))
        # Deleting an instance never removes a base; clean does.
        self.assertEqual(3, len(self.json('cache', 'list')))
        self.assertEqual([], self.json('cache', 'clean')['removed'])
        self.assertEqual(3, len(self.json('cache', 'clean', '--min-age',
                                          '0')['removed']))
        self.assertEqual(3, len(self.json('image', 'delete', 'tb')
                                ['deleted']))

    def test_console_follow_until_the_guest_stops(self):
        self.import_testbed()
        self.boot('vm3', '--image', 'tb', '--network', 'none')
        p = subprocess.run([AMIBOOT, '--state-dir', self.state,
                            '--config-file', self.config, 'console', 'vm3',
                            '--follow'], capture_output=True, text=True,
                           timeout=180)
        self.assertEqual(0, p.returncode, p.stderr)
        # Followed from the first kernel line to the power-off.
        self.assertIn('Linux version', p.stdout)
        self.assertTrue(report.complete(p.stdout))
        self.assertIn('reboot: Power down', p.stdout)
        self.assertEqual('stopped', self.json('show', 'vm3')['state'])
        self.assertEqual('none', self.json('show', 'vm3')['network']['kind'])

    def test_refused_boots_leave_no_instance(self):
        self.import_testbed()
        before = self.state_snapshot()
        msg = self.error('boot', 'vm2', '--image', 'tb', '--boot-param',
                         'init=/bin/sh')
        self.assertIn('init=/bin/sh', msg)
        self.assertIn('Instance vm2:', msg)
        udata = self.scratch('ud')
        with open(udata, 'w') as f:
            f.write('bootparams=rd.break\n')
        self.assertIn('rd.break', self.error('boot', 'vm2', '--image', 'tb',
                                             '--user-data', udata))
        self.assertIn('/missing.pub', self.error(
            'boot', 'vm2', '--image', 'tb', '--key-file', '/missing.pub'))
        self.assertIn('nope', self.error('boot', 'vm2', '--image', 'tb',
                                         '--flavor', 'nope'))
        self.assertIn('bad name', self.error(
            'boot', 'bad name', '--image', 'tb'))
        self.assertIn('vm2', self.error('show', 'vm2'))
        self.assertEqual(before, self.state_snapshot())
        self.assertIsNone(self.host.lookup('amiboot-vm2'))

    def test_quiet_on_success(self):
        p = self.amiboot('flavor', 'list')
        self.assertEqual('', p.stderr)

    def test_debug_shows_traceback(self):
        p = self.amiboot('--debug', 'show', 'ghost', ok=False)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('Traceback', p.stderr)


class TestCommandLine(CliTestCase):
    """The command as users of the openstack command expect it."""

    def test_formats_and_columns(self):
        self.import_testbed()
        names = self.amiboot('image', 'list', '-f', 'value', '-c',
                             'name').stdout.split()
        self.assertEqual(['tb', 'tb-kernel', 'tb-ramdisk'], names)
        csv = self.amiboot('flavor', 'list', '-f', 'csv').stdout
        self.assertIn('"m1.tiny",1,512,1', csv)
        yaml = self.amiboot('image', 'show', 'tb', '-f', 'yaml').stdout
        self.assertIn('disk_format: ami', yaml)
        table = self.amiboot('image', 'show', 'tb', '-c', 'name').stdout
        self.assertIn('| name  | tb    |', table)
        self.assertIn('invalid choice', self.amiboot(
            'image', 'list', '-f', 'xml', ok=False).stderr)

    def test_every_option_has_help(self):
        import argparse

        from nova_amiboot.cli import app as cli
        app = cli.AmibootApp()
        names = [n for n, _ in app.command_manager]
        # Every resource's commands, and today's verbs as aliases.
        for want in ('server create', 'server list', 'boot', 'list',
                     'image list', 'cache clean', 'flavor list', 'doctor'):
            self.assertIn(want, names)
        for name, ep in app.command_manager:
            cls = ep.load()
            parser = cls(app, None).get_parser('amiboot ' + name)
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                self.assertTrue(action.help, "%s: %s has no help"
                                % (name, action.option_strings or
                                   action.dest))
        for action in app.parser._actions:
            self.assertTrue(action.help, action.option_strings)
        text = self.amiboot('boot', '--help').stdout
        for word in ('flavors:', 'networks:', 'user data:', 'bridge:NAME',
                     'bootparams='):
            self.assertIn(word, text)
        self.assertIn('image from-disk', self.amiboot('--help').stdout)

    def test_bash_completion(self):
        script = self.amiboot('complete').stdout
        self.assertIn('_amiboot()', script)
        self.assertIn('complete -F _amiboot amiboot', script)
        p = subprocess.run(['bash', '-n'], input=script, text=True,
                           capture_output=True)
        self.assertEqual(0, p.returncode, p.stderr)
        self.assertIn('from-disk', script)

    def test_doctor(self):
        rows = {r['check']: r for r in self.json(
            'doctor', '--kernel', self.testbed['kernel'])}
        for check in ('libvirtd', 'QEMU', 'KVM', 'virt_type', 'disk attach',
                      'e2fsprogs', 'tools', 'state dir'):
            self.assertIn(rows[check]['status'], ('OK', 'FAIL'), check)
            if rows[check]['status'] == 'FAIL':
                self.assertTrue(rows[check]['fix'], check)
        self.assertEqual('OK', rows['libvirtd']['status'])
        self.assertEqual('OK', rows['state dir']['status'])
        # The config says qemu: that always works.
        self.assertEqual('qemu -> qemu', rows['virt_type']['detail'])

    def test_virt_type_auto_follows_the_kvm_verdict(self):
        with open(self.config, 'w') as f:
            f.write('[local]\nvirt_type = auto\n')
        self.import_testbed()
        kvm = {r['check']: r for r in self.json(
            'doctor', '--kernel', self.testbed['kernel'])}['KVM']
        inst = self.boot('auto1', '--image', 'tb', '--network', 'none',
                         '--wait')
        self.assertEqual('kvm' if kvm['status'] == 'OK' else 'qemu',
                         inst['virt_type'])
        self.assertIn(inst['wait'], ('ready', 'stopped'))

    def test_state_dir_qemu_cannot_reach_fails_before_disk_work(self):
        if hostcheck.qemu_user()[1] == 0:
            self.skipTest("QEMU runs as root here; every directory is "
                          "reachable")
        # A --state-dir under a private (0700) directory.
        private = self.scratch('private')
        os.makedirs(private, mode=0o755)
        self.state = os.path.join(private, 'state')
        self.import_testbed()
        os.chmod(private, 0o700)
        self.addCleanup(os.chmod, private, 0o755)
        before = self.state_snapshot()
        self.names.append('vm9')
        msg = self.error('boot', 'vm9', '--image', 'tb')
        self.assertIn(self.state, msg)
        self.assertIn('chmod o+x %s' % private, msg)
        self.assertEqual(before, self.state_snapshot())
        self.assertIsNone(self.host.lookup('amiboot-vm9'))
        p = self.amiboot('doctor', '--kernel', self.testbed['kernel'], '-f',
                         'json', ok=False)
        # A missing requirement: exit status 1, and the row says the fix.
        self.assertEqual(1, p.returncode)
        rows = {r['check']: r for r in json.loads(p.stdout)}
        self.assertEqual('FAIL', rows['state dir']['status'])
        self.assertIn('chmod o+x %s' % private, rows['state dir']['fix'])
