"""Guest-mode provisioning through the core pipeline (the local route).

An XFS reporting AMI whose ARI declares ``amiboot_provision=guest``: the
spawn pipeline attaches nothing and runs no filesystem tool on the
instance disk (both are made to fail the test if called); the guest's own
report says its root was grown to the flavor's disk and holds the key,
hostname and seed. Once through spawn.prepare, once through
LocalCloud.boot (the ``amiboot`` command's route). The refusals (guest
forced on an image that does not declare it; host mode on XFS with a key
to write) cost nothing: no instance directory is left.
"""

import os
import subprocess
import sys
import time
from unittest import mock
import uuid

import yaml

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import grow
from nova_amiboot import guest
from nova_amiboot import inject
from nova_amiboot import meta
from nova_amiboot.local import cloud as local_cloud
from nova_amiboot import spawn
from tests.functional import base
from tests.functional import test_cli
from tests.functional import test_provision_guest as tpg
from tests.testbed import boot
from tests.testbed import report

GiB = 1 << 30
MiB = 1 << 20


def _refuse(*args, **kwargs):
    raise AssertionError("guest mode ran a host tool on the instance disk")


class LocalGuestProvisionTest(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        self.host_tools = []
        for target in (attach, 'attached'), (grow, 'base_facts'), \
                (grow, 'grow'), (inject, 'GuestFS'):
            patcher = mock.patch.object(*target, side_effect=_refuse)
            self.host_tools.append(patcher.start())
            self.addCleanup(patcher.stop)

    def tearDown(self):
        for m in self.host_tools:
            m.assert_not_called()
        super().tearDown()

    def xfs_triplet(self, on='ari'):
        tb = self.testbed
        declared = {'amiboot_provision': 'guest'}
        aki = self.store.add('k', tb['kernel'], 'aki')
        ari = self.store.add('r', tb['ramdisk'], 'ari',
                             declared if on == 'ari' else None)
        props = {'kernel_id': aki.id, 'ramdisk_id': ari.id}
        if on == 'ami':
            props.update(declared)
        return self.store.add('xfs-ami', tb['roots']['xfs'], 'ami', props)

    def check_report(self, rep, disk_bytes, hostname, instance_id,
                     local_hostname=None):
        self.assertEqual('xfs', rep['root_dev'].split()[1])
        self.assertEqual(disk_bytes, int(rep['disk_bytes']))
        total = int(rep['root_df_kb'].split()[0]) * 1024
        # Grown (the AMI's XFS is 236 MiB in df), less its 64 MiB log.
        self.assertGreater(total, 0.97 * disk_bytes - 64 * MiB)
        self.assertLessEqual(total, disk_bytes)
        self.assertEqual('%s\n%s\n' % (inject.KEY_MARKER, tpg._key(7)),
                         rep['authorized_keys'])
        self.assertEqual('600 0 0 regular file', rep['authorized_keys_stat'])
        self.assertEqual(hostname, rep['hostname'])
        self.assertEqual('#cloud-config\n', rep['user_data'])
        # The seed as the host route writes it: the full hostname.
        self.assertEqual('instance-id: "%s"\nlocal-hostname: "%s"\n'
                         % (instance_id, local_hostname or hostname),
                         rep['meta_data'])

    def test_prepare_and_boot_xfs(self):
        ami = self.xfs_triplet()
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='prov-%s' % uuid.uuid4().hex[:6],
            image_id=ami.id, flavor=spawn.Flavor('t2', 2, 256, 1),
            key=tpg._key(7), hostname='guest-mode.example.org',
            user_data=b'#cloud-config\n')
        cache = self.make_cache()
        prepared = spawn.prepare(self.conf, cache, req, virt_type='qemu')
        self.assertEqual('guest', prepared.provision)
        self.assertFalse(prepared.grown)
        self.assertEqual('qcow2', prepared.disk_format)
        # The private ramdisk: the ARI, then the layer; root's, 0644,
        # marked as a copy of its base.
        st = os.stat(prepared.ramdisk)
        self.assertEqual((0o100644, 0), (st.st_mode, st.st_uid))
        with open(self.testbed['ramdisk'], 'rb') as f:
            ari_bytes = f.read()
        with open(prepared.ramdisk, 'rb') as f:
            mine = f.read()
        self.assertEqual(ari_bytes, mine[:len(ari_bytes)])
        self.assertIn(b'amiboot/provision/ssh-keys', mine[len(ari_bytes):])
        # The base was cached with its type probed only: no facts (they
        # need an attach), until a host-mode spawn wants them.
        self.assertIsNone(grow.known_facts(cache.path_for(ami.id)))
        base = os.getxattr(prepared.ramdisk,
                           meta.USED_BASE).decode()
        self.assertTrue(os.path.isfile(
            os.path.join(self.instances, '_base', base)))
        host = guest.Host()
        self.addCleanup(host.close)
        rep, text = boot.boot_prepared(host, prepared, req.name)
        self.check_report(rep, 2 * GiB, 'guest-mode', req.uuid,
                          'guest-mode.example.org')
        secs = tpg.guest_seconds(text)
        print('\nlocal route, xfs, 2 GiB: %.2f s "Run /init" to switch_root'
              % secs, file=sys.stderr)
        print('\n'.join(tpg.ari_lines(text)), file=sys.stderr)

    def test_local_cloud_boot_xfs(self):
        state = self.scratch('state')
        cloud = local_cloud.LocalCloud(self.conf, state)
        self.addCleanup(cloud.close)
        self.conf.set_override('virt_type', 'qemu', group='local')
        key_file = self.scratch('key.pub')
        with open(key_file, 'w') as f:
            f.write(tpg._key(7) + '\n')
        # The command's store is its own: the image goes in through it.
        tb = self.testbed
        cloud.import_triplet('xfs', tb['kernel'], tb['ramdisk'],
                             tb['roots']['xfs'],
                             {'amiboot_provision': 'guest'})
        name = 'prov-%s' % uuid.uuid4().hex[:6]
        inst = cloud.boot(name, 'xfs', spawn.Flavor('t3', 3, 256, 1),
                          key_file=key_file, user_data=b'#cloud-config\n')
        try:
            self.assertEqual('guest', inst.provision)
            self.assertEqual('guest', cloud.get(name).provision)
            log = cloud.console_log(inst)
            try:
                guest.wait_for_console(cloud.host, inst.domain_name, log,
                                       report.complete, boot.BOOT_TIMEOUT,
                                       owner=cloud.owner(inst))
            except exception.GuestStopped:
                pass        # powered off after its report
            text = guest.read_console(log)
            self.check_report(report.parse(text), 3 * GiB, name, inst.uuid)
            print('\nLocalCloud.boot, xfs, 3 GiB: %.2f s "Run /init" to '
                  'switch_root' % tpg.guest_seconds(text), file=sys.stderr)
        finally:
            cloud.delete(name)

    def test_unservable_root_refused_unattached(self):
        # A "root" with no filesystem: refused by the sandboxed probe, as
        # the host route refuses it through its facts; nothing cached.
        junk = self.scratch('junk.img')
        with open(junk, 'wb') as f:
            f.write(os.urandom(1 << 20))
        aki = self.store.add('k', self.testbed['kernel'], 'aki')
        ari = self.store.add('r', self.testbed['ramdisk'], 'ari',
                             {'amiboot_provision': 'guest'})
        ami = self.store.add('junk', junk, 'ami',
                             {'kernel_id': aki.id, 'ramdisk_id': ari.id})
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='junk', image_id=ami.id,
            flavor=spawn.Flavor('t1', 1, 256, 1))
        cache = self.make_cache()
        with self.assertRaises(exception.InvalidImage) as cm:
            spawn.prepare(self.conf, cache, req, virt_type='qemu')
        self.assertIn('no filesystem', str(cm.exception))
        self.assertFalse(os.path.exists(cache.path_for(ami.id)))
        self.assertFalse(os.path.exists(
            os.path.join(self.instances, req.uuid)))

    def test_guest_forced_on_undeclared_image(self):
        self.conf.set_override('provision', 'guest', group='amiboot')
        ami, _aki, _ari = self.add_triplet()
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='undeclared', image_id=ami.id,
            flavor=spawn.Flavor('t1', 1, 256, 1))
        with self.assertRaises(exception.GuestProvisionNotDeclared) as cm:
            spawn.prepare(self.conf, self.make_cache(), req,
                          virt_type='qemu')
        self.assertIn('image ami (%s) does not declare' % ami.id,
                      str(cm.exception))
        self.assertNotIn('\n', str(cm.exception))
        self.assertFalse(os.path.exists(
            os.path.join(self.instances, req.uuid)))


class HostModeXfsTest(base.RealToolsTestCase):
    """Host mode, XFS AMI: refused when something is to be written."""

    def test_refused_with_key(self):
        tb = self.testbed
        ami, _aki, _ari = self.add_triplet(root=tb['roots']['xfs'])
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='host-xfs', image_id=ami.id,
            flavor=spawn.Flavor('t1', 1, 256, 1), key=tpg._key(7))
        with self.assertRaises(exception.InjectionFailed) as cm:
            spawn.prepare(self.conf, self.make_cache(), req,
                          virt_type='qemu')
        self.assertIn('filesystem xfs of image %s cannot be written' % ami.id,
                      str(cm.exception))
        self.assertIn('amiboot_provision=guest', str(cm.exception))
        self.assertFalse(os.path.exists(
            os.path.join(self.instances, req.uuid)))

    def test_boots_ungrown_without_anything_to_write(self):
        tb = self.testbed
        ami, _aki, _ari = self.add_triplet(root=tb['roots']['xfs'])
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='host-xfs', image_id=ami.id,
            flavor=spawn.Flavor('t1', 1, 256, 1))
        with self.assertLogs('nova_amiboot.grow', 'WARNING') as logs:
            prepared = spawn.prepare(self.conf, self.make_cache(), req,
                                     virt_type='qemu')
        self.assertEqual('host', prepared.provision)
        self.assertFalse(prepared.grown)
        self.assertIn('not ext2/3/4; left at its size', logs.output[0])


class GuestSnapshotTest(test_cli.CliTestCase):
    """A guest-mode instance's snapshot provisions its own instances."""

    def debugfs_cat(self, image, path):
        return subprocess.run(['debugfs', '-R', 'cat %s' % path, image],
                              capture_output=True, text=True).stdout

    def console_report(self, name):
        deadline = time.monotonic() + boot.BOOT_TIMEOUT
        while True:
            text = self.amiboot('console', name, '--raw').stdout
            if report.complete(text) or time.monotonic() > deadline:
                return report.parse(text), text
            time.sleep(1)

    def _snapshot_and_boot_again(self, fs):
        tb = self.testbed
        self.json('image', 'import', 'tb', '--kernel', tb['kernel'],
                  '--ramdisk', tb['ramdisk'], '--root', tb['roots'][fs],
                  '--ramdisk-property', 'amiboot_provision=guest')
        with open(self.key + '.pub') as f:
            key = f.read().strip()
        inst = self.boot('g1', '--image', 'tb', '--flavor', 'lab.small',
                         '--key-file', self.key + '.pub')
        self.assertEqual('guest', inst['provision'])
        rep, text = self.console_report('g1')
        self.assertIn(key, rep['authorized_keys'].splitlines())
        self.assertEqual('g1', rep['hostname'])
        self.assertIn('amiboot-ari: layer ', text)
        self.json('stop', 'g1')
        snap = self.json('image', 'snapshot', 'g1', 'snapped',
                         '--appliance-kernel-package', tb['kernel_package'])
        self.assertEqual(['/root/.ssh/authorized_keys', '/etc/hostname',
                          '/var/lib/amiboot/provisioned'], snap['removed'])
        path = os.path.join(self.state, 'images', snap['id'])
        if fs == 'ext4':
            self.assertEqual('', self.debugfs_cat(
                path, '/var/lib/amiboot/provisioned'))
            self.assertNotIn(key, self.debugfs_cat(
                path, '/root/.ssh/authorized_keys'))
        else:
            # Cleaned in the appliance VM (the host reads no XFS or
            # btrfs): the filesystem, not grown to the flavor's 2 GiB
            # in the file (btrfs shrunk, XFS's free space holes).
            info = subprocess.run(['blkid', '-p', '-o', 'value', '-s',
                                   'TYPE', path], capture_output=True,
                                  text=True).stdout.strip()
            self.assertEqual(fs, info)
            st = os.stat(path)
            self.assertLess(st.st_blocks * 512, 1 << 30)
            if fs == 'btrfs':
                self.assertLess(st.st_size, 1 << 30)
        self.amiboot('delete', 'g1')
        # The same key and flavor, another instance: its own layer, and
        # g1's key and stamp are gone (the report of g2's own boot).
        inst = self.boot('g2', '--image', 'snapped', '--flavor', 'lab.small',
                         '--key-file', self.key + '.pub')
        self.assertEqual('guest', inst['provision'])
        rep, text = self.console_report('g2')
        self.assertEqual('%s\n%s\n' % (inject.KEY_MARKER, key),
                         rep['authorized_keys'])
        self.assertEqual('g2', rep['hostname'])
        self.assertNotIn('applied already', text)
        self.assertGreater(int(rep['root_df_kb'].split()[0]), 1800000)
        self.amiboot('delete', 'g2')

    def test_snapshot_and_boot_again(self):
        self._snapshot_and_boot_again('ext4')

    def test_snapshot_xfs_and_boot_again(self):
        self._snapshot_and_boot_again('xfs')

    def test_snapshot_btrfs_and_boot_again(self):
        self._snapshot_and_boot_again('btrfs')


class SharedBaseTest(base.RealToolsTestCase):

    def test_host_route_after_guest_route(self):
        # One base, first cached by the guest route (no facts), then used
        # by the host route: its facts are made then, once.
        ami, _aki, _ari = self.add_triplet(
            properties={'amiboot_provision': 'guest'})
        cache = self.make_cache()

        def req(name):
            return spawn.InstanceRequest(
                uuid=str(uuid.uuid4()), name=name, image_id=ami.id,
                flavor=spawn.Flavor('t1', 1, 256, 1), key=tpg._key(3))
        p = spawn.prepare(self.conf, cache, req('first'), virt_type='qemu')
        self.assertEqual('guest', p.provision)
        self.assertIsNone(grow.known_facts(cache.path_for(ami.id)))
        self.conf.set_override('provision', 'host', group='amiboot')
        p = spawn.prepare(self.conf, cache, req('second'), virt_type='qemu')
        self.assertEqual('host', p.provision)
        self.assertTrue(p.grown)
        self.assertEqual('ext4',
                         grow.known_facts(cache.path_for(ami.id))['fstype'])


class ModeParityTest(base.RealToolsTestCase):
    """One ext4 AMI, one request, booted host mode and guest mode.

    The guest reports the same facts either way (root grown to the flavor's
    disk, key, hostname, seed); the host-side preparation, the guest-side
    "Run /init" to switch_root and the start-to-report time of each are
    printed side by side.
    """

    def _run(self, mode, cache, ami):
        self.conf.set_override('provision', mode, group='amiboot')
        name = 'parity-%s-%s' % (mode, uuid.uuid4().hex[:6])
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name=name, image_id=ami.id,
            flavor=spawn.Flavor('t2', 2, 256, 1), key=tpg._key(5),
            hostname='parity.example.org',
            user_data=b'#cloud-config\nhostname: parity\n')
        host_mode = mode == 'host'
        with mock.patch.object(attach, 'attached', side_effect=(
                attach.attached if host_mode else _refuse)) as att, \
                mock.patch.object(inject, 'GuestFS', side_effect=(
                    inject.GuestFS if host_mode else _refuse)) as gfs:
            prepared = spawn.prepare(self.conf, cache, req, virt_type='qemu')
        # The guest route attaches nothing and writes nothing; the host
        # route does both.
        self.assertEqual(host_mode, att.called)
        self.assertEqual(host_mode, gfs.called)
        self.assertEqual(mode, prepared.provision)
        host = guest.Host()
        self.addCleanup(host.close)
        t = time.monotonic()
        rep, text = boot.boot_prepared(host, prepared, name)
        booted = time.monotonic() - t
        return req, prepared, rep, text, booted

    def test_same_facts_host_and_guest(self):
        ami, _aki, _ari = self.add_triplet(
            properties={'amiboot_provision': 'guest'})
        cache = self.make_cache()
        # Warm: the base is cached (and its facts made) before either.
        self._run('host', cache, ami)
        seen = {}
        for mode in ('host', 'guest', 'host', 'guest'):
            req, prepared, rep, text, booted = self._run(mode, cache, ami)
            self.assertEqual('ext4', rep['root_dev'].split()[1])
            self.assertEqual(2 * GiB, int(rep['disk_bytes']))
            total = int(rep['root_df_kb'].split()[0]) * 1024
            self.assertGreater(total, 0.95 * 2 * GiB, text)
            self.assertEqual('%s\n%s\n' % (inject.KEY_MARKER, tpg._key(5)),
                             rep['authorized_keys'])
            self.assertEqual('600 0 0 regular file',
                             rep['authorized_keys_stat'])
            self.assertEqual('700 0 0 directory', rep['ssh_dir'])
            self.assertEqual('parity', rep['hostname'])
            self.assertEqual('#cloud-config\nhostname: parity\n',
                             rep['user_data'])
            self.assertEqual({'instance-id': req.uuid,
                              'local-hostname': 'parity.example.org'},
                             yaml.safe_load(rep['meta_data']))
            # Each route did its own part only.
            layer_lines = [x for x in tpg.ari_lines(text)
                           if x.startswith('amiboot-ari: layer ')]
            self.assertEqual(mode == 'guest', bool(layer_lines), text)
            self.assertEqual(mode == 'host', prepared.grown)
            seen.setdefault(mode, []).append(
                (prepared.timings['total'], tpg.guest_seconds(text), booted))
        print('\next4 AMI, 2 GiB, key + hostname + user data; seconds:',
              file=sys.stderr)
        print('  mode   host prep  "Run /init"->switch_root  start->report',
              file=sys.stderr)
        for mode, runs in sorted(seen.items()):
            for prep, ari, booted in runs:
                print('  %-5s  %9.3f  %24.2f  %13.2f'
                      % (mode, prep, ari, booted), file=sys.stderr)
