"""Server operations after the first boot, for AMI instances.

Same harness as test_servers: nova's API, conductor, scheduler and
compute(s) in-process, nova's fake libvirt (QEMU does not run here), real
disk work (our cache, qemu-img, qemu-storage-daemon, e2fsprogs). Two
in-process computes share one instances directory, which is what a cloud
with shared instance storage looks like; where an operation asks whether
the path is shared (over ssh, in nova), the answer is that fact.
"""

import base64
import json
import os
import shutil
import subprocess
import time

import fixtures
from nova import context as nova_context
from nova import objects
from nova.tests.functional.api import client
from nova.virt.libvirt import driver as nova_driver
from nova.virt.libvirt import utils as nova_libvirt_utils

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import CONF
from nova_amiboot import inject
from nova_amiboot import layer
from tests.nova_functional import test_servers
from tests.testbed import build

GiB = test_servers.GiB
REAL_FILE_OPEN = nova_libvirt_utils.file_open
MARKER = b'written by the user before the operation\n'


def disk_info(disk):
    return json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', disk],
        check=True, capture_output=True, text=True).stdout)


def fs_size(disk):
    with attach.attached(disk, 'qcow2', CONF,
                         backing=attach.HEADER) as target:
        out = target.run('dumpe2fs', ['-h'])[0]
    fields = dict(line.split(':', 1) for line in out.splitlines()
                  if ':' in line)
    return int(fields['Block count']) * int(fields['Block size'])


def read_files(disk, *paths):
    with attach.attached(disk, 'qcow2', CONF,
                         backing=attach.HEADER) as target:
        fs = inject.GuestFS(target)
        return [fs.read(p) for p in paths]


def write_file(disk, path, data):
    with attach.attached(disk, 'qcow2', CONF,
                         backing=attach.HEADER) as target:
        inject.GuestFS(target).write(path, data)


class LifecycleBase(test_servers.AmiServersBase):

    def setUp(self):
        super().setUp()
        # The two in-process computes share CONF.instances_path.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._is_path_shared_with',
            lambda drv, dest, path: True))
        self.flags(allow_resize_to_same_host=True)
        self.big = self._create_flavor(memory_mb=512, vcpu=1, disk=2,
                                       ephemeral=0)
        # A request through keystone carries a token; nova's noauth API
        # does not, and without one _hard_reboot skips re-creating missing
        # backing files (as after a host restart, on purpose).
        real_hard_reboot = nova_driver.LibvirtDriver._hard_reboot

        def with_token(drv, context, *args, **kwargs):
            context.auth_token = context.auth_token or 'keystone-token'
            return real_hard_reboot(drv, context, *args, **kwargs)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._hard_reboot',
            with_token))

    def _disk(self, server):
        return os.path.join(self._instance_dir(server), 'disk')

    def _cmdline(self, server):
        xml = self._domain_xml(server)
        return xml.split('<cmdline>')[1].split('</cmdline>')[0].split()

    def _boot_ami(self, **extra):
        extra.setdefault('key_name', 'k1')
        extra.setdefault('metadata', {'amiboot_boot_params':
                                      'quiet amiboot.md=2'})
        return self._boot('ami', **extra)

    def _delete_from_glance(self, *names):
        for name in names:
            self.glance.delete(None, self.images[name])

    def _instance(self, server):
        return objects.Instance.get_by_uuid(
            nova_context.get_admin_context(), server['id'])

    def _action_may_fail(self, server, action, error):
        try:
            self.api.post_server_action(server['id'], action)
        except client.OpenStackApiException as e:
            # In-process, nova's RPC can hand the compute's error back to
            # the API (a 500 naming its class).
            self.assertIn(error, str(e))

    def _driver(self, host='compute1'):
        return self.computes[host].driver


class TestResize(LifecycleBase):

    def test_resize_grows_fs_without_glance(self):
        server = self._boot_ami()
        disk = self._disk(server)
        self.assertEqual(GiB, fs_size(disk))
        write_file(disk, '/root/marker', MARKER)
        # Every part of the triplet deleted from Glance: the verified bases
        # in _base are enough.
        self._delete_from_glance('ami', 'aki', 'ari')

        server = self._resize_server(server, self.big)
        self.assertEqual(2 * GiB, disk_info(disk)['virtual-size'])
        self.assertEqual(self._base('ami'),
                         disk_info(disk)['full-backing-filename'])
        self.assertEqual(2 * GiB, fs_size(disk))
        marker, keys = read_files(disk, '/root/marker',
                                  '/root/.ssh/authorized_keys')
        self.assertEqual(MARKER, marker)
        self.assertIn(test_servers.KEY, keys.decode())
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

        server = self._confirm_resize(server)
        self.assertEqual(2 * GiB, fs_size(disk))
        self.assertFalse(os.path.exists(self._instance_dir(server)
                                        + '_resize'))
        # A hard reboot asks for the same size again: no work.
        before = build.sha256_file(disk)
        server = self._reboot_server(server, hard=True)
        self.assertEqual(before, build.sha256_file(disk))
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

    def test_resize_revert_keeps_the_old_disk(self):
        server = self._boot_ami()
        disk = self._disk(server)
        server = self._resize_server(server, self.big)
        self.assertEqual(2 * GiB, fs_size(disk))
        server = self._revert_resize(server)
        self.assertEqual(GiB, disk_info(disk)['virtual-size'])
        self.assertEqual(GiB, fs_size(disk))
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])


class TestTwoHosts(LifecycleBase):

    def setUp(self):
        super().setUp()
        self.start_compute('compute2')

    def _marked_server_without_base(self):
        """An AMI server with a marker written, its base gone.

        Returns (server, source host, other host, disk, disk's sha256).
        """
        server = self._boot_ami()
        src = server['OS-EXT-SRV-ATTR:host']
        dest = 'compute2' if src == 'compute1' else 'compute1'
        disk = self._disk(server)
        write_file(disk, '/root/marker', MARKER)
        before = build.sha256_file(disk)
        os.unlink(self._base('ami'))
        return server, src, dest, disk, before

    def test_cold_migrate_to_a_host_without_the_base(self):
        # The destination has no base (or it was aged out since).
        server, _src, dest, disk, before = \
            self._marked_server_without_base()

        server = self._migrate_server(server, host=dest,
                                      api=self.api_fixture.admin_api)
        self.assertEqual(dest, server['OS-EXT-SRV-ATTR:host'])
        # The disk came over untouched; its base is back, fetched and
        # checked by our cache (the disk_format it records says so).
        self.assertEqual(before, build.sha256_file(disk))
        self.assertEqual(
            b'ami', os.getxattr(self._base('ami'),
                                'user.amiboot.disk_format'))
        self.assertEqual(GiB, fs_size(disk))
        server = self._confirm_resize(server)
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

    def test_evacuate_on_shared_storage_without_the_base(self):
        server, src, dest, disk, before = self._marked_server_without_base()
        admin = self.api_fixture.admin_api
        admin.microversion = 'latest'
        self.computes[src].stop()
        service_id = admin.get_services(host=src,
                                        binary='nova-compute')[0]['id']
        admin.put_service_force_down(service_id, True)
        server = self._evacuate_server(server, {'host': dest},
                                       expected_host=dest,
                                       expected_state='SHUTOFF')
        # Shared storage: the disk is the instance's own, untouched; only
        # its base came back through our cache.
        self.assertEqual(before, build.sha256_file(disk))
        self.assertEqual(
            b'ami', os.getxattr(self._base('ami'),
                                'user.amiboot.disk_format'))
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

    def test_hard_reboot_base_aged_out_and_image_gone(self):
        server = self._boot_ami()
        disk = self._disk(server)
        before = build.sha256_file(disk)
        os.unlink(self._base('ami'))
        server = self._reboot_server(server, hard=True)
        self.assertTrue(os.path.exists(self._base('ami')))
        self.assertEqual(before, build.sha256_file(disk))

        # Gone from the cache and from Glance: nova's ImageNotFound.
        os.unlink(self._base('ami'))
        self._delete_from_glance('ami')
        self._action_may_fail(server, {'reboot': {'type': 'HARD'}},
                              'ImageNotFound')
        server = self._wait_for_state_change(server, 'ERROR')
        self.assertEqual('Image %s could not be found.' % self.images['ami'],
                         server['fault']['message'])
        self.assertEqual(before, build.sha256_file(disk))


class TestBootParams(LifecycleBase):

    def test_reboots_keep_params_and_denied_is_refused_first(self):
        server = self._boot_ami()
        server = self._reboot_server(server)
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])
        self.guest_xml.clear()
        server = self._reboot_server(server, hard=True)
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

        conn = self._driver()._host.get_connection()
        dom_before = conn.lookupByUUIDString(server['id'])
        self.api.post_server_metadata(
            server['id'], {'amiboot_boot_params': 'init=/bin/sh'})
        self._action_may_fail(server, {'reboot': {'type': 'HARD'}},
                              'InvalidInput')
        server = self._wait_for_server_parameter(
            server, {'OS-EXT-STS:task_state': None})
        # Refused before destroy(): the guest still runs, same domain.
        self.assertEqual('ACTIVE', server['status'])
        dom = conn.lookupByUUIDString(server['id'])
        self.assertIs(dom_before, dom)
        self.assertEqual(1, dom.isActive())
        fault = self._fault_of_last_action(server)
        self.assertIn('init=/bin/sh', fault)

        # Stopped, then started with the denied parameter: refused before
        # the domain is undefined.
        self.api.post_server_metadata(
            server['id'], {'amiboot_boot_params': 'quiet'})
        server = self._stop_server(server)
        self.api.post_server_metadata(
            server['id'], {'amiboot_boot_params': 'rdinit=/bin/sh'})
        self._action_may_fail(server, {'os-start': None}, 'InvalidInput')
        server = self._wait_for_server_parameter(
            server, {'OS-EXT-STS:task_state': None})
        self.assertEqual('SHUTOFF', server['status'])
        self.assertIn('rdinit=/bin/sh', self._fault_of_last_action(server))
        self.assertIs(dom_before, conn.lookupByUUIDString(server['id']))
        # Allowed again: starts, with the current parameters.
        self.api.post_server_metadata(
            server['id'], {'amiboot_boot_params': 'amiboot.again=1'})
        server = self._start_server(server)
        self.assertEqual(['amiboot.again=1'], self._cmdline(server)[-1:])

    def _fault_of_last_action(self, server):
        # The API shows a fault only for servers in ERROR.
        fault = objects.InstanceFault.get_latest_for_instance(
            nova_context.get_admin_context(), server['id'])
        return fault.message if fault else ''


class TestRescue(LifecycleBase):

    def test_rescue_keeps_params_and_uses_our_cache(self):
        # A rescue kernel configured by the operator, another AKI.
        self.images['aki2'] = self._upload('aki2', self.testbed['kernel'],
                                           'aki')
        self.flags(rescue_kernel_id=self.images['aki2'], group='libvirt')
        server = self._boot_ami()
        server = self._rescue_server(server)
        inst_dir = self._instance_dir(server)
        cmdline = self._cmdline(server)
        self.assertIn('root=/dev/vda', cmdline)
        self.assertEqual(['quiet', 'amiboot.md=2'], cmdline[-2:])
        xml = self._domain_xml(server)
        self.assertIn('<kernel>%s/kernel.rescue</kernel>' % inst_dir, xml)
        # The rescue kernel entered _base through our inspected cache.
        self.assertEqual(b'aki', os.getxattr(self._base('aki2'),
                                             'user.amiboot.disk_format'))
        self.assertEqual(build.sha256_file(self._base('aki2')),
                         build.sha256_file(
                             os.path.join(inst_dir, 'kernel.rescue')))
        server = self._unrescue_server(server)
        self.assertFalse(os.path.exists(os.path.join(inst_dir,
                                                     'kernel.rescue')))

    def test_stable_device_rescue_boots_the_rescue_disk(self):
        self.images['rescue'] = self._upload(
            'rescue', self.testbed['root'], 'ami',
            {'kernel_id': self.images['aki'],
             'ramdisk_id': self.images['ari'],
             'hw_rescue_device': 'disk', 'hw_rescue_bus': 'virtio'})
        server = self._boot_ami()
        self.api.post_server_action(
            server['id'], {'rescue': {'rescue_image_ref':
                                      self.images['rescue']}})
        server = self._wait_for_state_change(server, 'RESCUE')
        cmdline = self._cmdline(server)
        # disk is vda, the rescue disk comes last.
        self.assertIn('root=/dev/vdb', cmdline)
        self.assertNotIn('root=/dev/vda', cmdline)
        self.assertEqual(['quiet', 'amiboot.md=2'], cmdline[-2:])


class TestCacheOptions(LifecycleBase):

    def setUp(self):
        self.flags(subdirectory_name='_amicache', group='image_cache')
        super().setUp()
        # What each download from Glance was given.
        self.downloads = []
        real_download = self.glance.download

        def download(context, image_id, data=None, dst_path=None,
                     trusted_certs=None):
            self.downloads.append((image_id, trusted_certs))
            return real_download(context, image_id, data=data,
                                 dst_path=dst_path,
                                 trusted_certs=trusted_certs)
        self.glance.download = download

    def test_subdirectory_name_and_trusted_certs(self):
        server = self._boot_ami(trusted_image_certificates=['cert-a',
                                                            'cert-b'])
        self.assertEqual(
            sorted(self.images[p] for p in ('ami', 'aki', 'ari')),
            sorted(i for i, _c in self.downloads))
        for image_id, certs in self.downloads:
            self.assertEqual(['cert-a', 'cert-b'],
                             certs.ids if certs else None, image_id)
        base_dir = os.path.join(CONF.instances_path, '_amicache')
        base = os.path.join(base_dir, cache_mod.base_name(self.images['ami']))
        info = disk_info(self._disk(server))
        self.assertEqual(base, info['full-backing-filename'])
        for part in ('aki', 'ari'):
            self.assertTrue(os.path.exists(os.path.join(
                base_dir, cache_mod.base_name(self.images[part]))))
        self.assertFalse(os.path.exists(os.path.join(CONF.instances_path,
                                                     '_base')))


class TestImages(LifecycleBase):
    """Rebuild, snapshot, shelve: other images than the one booted."""

    def setUp(self):
        super().setUp()
        # nova's fake Glance drops the bytes of an image update (the
        # snapshot upload); keep them, with the checksums Glance computes.
        real_update = self.glance.update

        def update(context, image_id, metadata, data=None,
                   purge_props=False):
            if data is not None:
                content = data.read()
                self.glance._imagedata[image_id] = content
                metadata = dict(metadata, **test_servers._hashes(content))
            return real_update(context, image_id, metadata,
                               purge_props=purge_props)
        self.glance.update = update
        # ServersTestBase makes libvirt_utils.file_open return an empty
        # file; the snapshot upload reads the real one.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.utils.file_open', REAL_FILE_OPEN))
        # A live snapshot needs libvirt's block copy, which nova's fake
        # libvirt does not perform; the cold one is qemu-img's.
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')

    def _base_of(self, image_id):
        return os.path.join(CONF.instances_path, '_base',
                            cache_mod.base_name(image_id))

    def test_rebuild_same_and_other_ami(self):
        server = self._boot_ami()
        disk = self._disk(server)
        write_file(disk, '/root/marker', MARKER)
        server = self._rebuild_server(server, self.images['ami'])
        # A new disk from the image: grown, key, the old content gone.
        self.assertEqual(GiB, fs_size(disk))
        marker, keys = read_files(disk, '/root/marker',
                                  '/root/.ssh/authorized_keys')
        self.assertIsNone(marker)
        self.assertIn(test_servers.KEY, keys.decode())

        self.images['aki2'] = self._upload('aki2', self.testbed['kernel'],
                                           'aki')
        self.images['ami2'] = self._upload(
            'ami2', self.testbed['root'], 'ami',
            {'kernel_id': self.images['aki2'],
             'ramdisk_id': self.images['ari']})
        server = self._rebuild_server(server, self.images['ami2'])
        info = disk_info(disk)
        self.assertEqual(self._base('ami2'), info['full-backing-filename'])
        self.assertEqual(GiB, fs_size(disk))
        self.assertIn(test_servers.KEY, read_files(
            disk, '/root/.ssh/authorized_keys')[0].decode())
        inst = self._instance(server)
        self.assertEqual(self.images['aki2'], inst.kernel_id)
        self.assertEqual(b'aki', os.getxattr(self._base('aki2'),
                                             'user.amiboot.disk_format'))
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

    def _snapshot(self, server, name):
        self._snapshot_server(server, name)
        for _ in range(600):
            images = [i for i in self.glance.images.values()
                      if i['name'] == name and i['status'] == 'active'
                      and i['id'] in self.glance._imagedata]
            if images:
                return images[0]
            time.sleep(0.5)
        self.fail('no snapshot %s' % name)

    def test_snapshot_boots_as_ami(self):
        server = self._boot_ami()
        write_file(self._disk(server), '/root/marker', MARKER)
        snap = self._snapshot(server, 'snap1')
        self.assertEqual(self.images['aki'], snap['properties']['kernel_id'])
        self.assertEqual(self.images['ari'],
                         snap['properties']['ramdisk_id'])
        self.assertEqual('qcow2', snap['disk_format'])

        server2 = self.api.post_server({'server': dict(
            self._build_server(image_uuid=snap['id'], flavor_id=self.big,
                               networks='none'), key_name='k1')})
        server2 = self._wait_for_state_change(server2, 'ACTIVE')
        disk = self._disk(server2)
        info = disk_info(disk)
        base = self._base_of(snap['id'])
        self.assertEqual(base, info['full-backing-filename'])
        self.assertEqual('raw', info['backing-filename-format'])
        self.assertEqual(b'qcow2', os.getxattr(base,
                                               'user.amiboot.disk_format'))
        self.assertEqual(2 * GiB, fs_size(disk))
        marker, keys = read_files(disk, '/root/marker',
                                  '/root/.ssh/authorized_keys')
        self.assertEqual(MARKER, marker)
        self.assertIn(test_servers.KEY, keys.decode())
        inst_dir = self._instance_dir(server2)
        self.assertIn('<kernel>%s/kernel</kernel>' % inst_dir,
                      self._domain_xml(server2))

    def test_shelve_unshelve(self):
        server = self._boot_ami()
        write_file(self._disk(server), '/root/marker', MARKER)
        server = self._shelve_server(server)
        self.assertFalse(os.path.exists(self._instance_dir(server)))
        server = self._unshelve_server(server)
        disk = self._disk(server)
        # nova rebased the disk onto the original AMI's base.
        self.assertEqual(self._base('ami'),
                         disk_info(disk)['full-backing-filename'])
        self.assertEqual(GiB, fs_size(disk))
        marker, keys = read_files(disk, '/root/marker',
                                  '/root/.ssh/authorized_keys')
        self.assertEqual(MARKER, marker)
        self.assertIn(test_servers.KEY, keys.decode())
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])


class TestInjection(LifecycleBase):

    def _shadow_hash(self, disk):
        shadow = read_files(disk, '/etc/shadow')[0].decode()
        return shadow.splitlines()[0].split(':')[1]

    def _matches(self, crypted, password):
        salt = crypted.split('$')[2]
        out = subprocess.run(['openssl', 'passwd', '-6', '-salt', salt,
                              '-stdin'], input=password + '\n',
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() == crypted

    def test_off_by_default(self):
        self.api.microversion = '2.56'
        server = self._boot_ami(adminPass='Not-injected-1', personality=[
            {'path': '/etc/amiboot-file',
             'contents': base64.b64encode(b'x').decode()}])
        disk = self._disk(server)
        self.assertEqual('*', self._shadow_hash(disk))
        self.assertIsNone(read_files(disk, '/etc/amiboot-file')[0])

    def test_password_and_files(self):
        self.flags(inject_password=True, inject_files=True, group='amiboot')
        self.api.microversion = '2.56'
        server = self._boot_ami(adminPass='Create-pass-1', personality=[
            {'path': '/etc/amiboot-file',
             'contents': base64.b64encode(b'from nova\n').decode()}])
        disk = self._disk(server)
        self.assertTrue(self._matches(self._shadow_hash(disk),
                                      'Create-pass-1'))
        content, = read_files(disk, '/etc/amiboot-file')
        self.assertEqual(b'from nova\n', content)

        self.api.post_server_action(server['id'], {'rebuild': {
            'imageRef': self.images['ami'], 'adminPass': 'Rebuild-pass-2'}})
        self.notifier.wait_for_versioned_notifications('instance.rebuild.end')
        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertTrue(self._matches(self._shadow_hash(disk),
                                      'Rebuild-pass-2'))

    def test_unsafe_file_path_fails_the_build(self):
        self.flags(inject_files=True, group='amiboot')
        self.api.microversion = '2.56'
        server = self._build_server(image_uuid=self.images['ami'],
                                    flavor_id='1', networks='none')
        server['personality'] = [{'path': '/etc/../root/x',
                                  'contents': base64.b64encode(b'x').decode()}]
        server = self.api.post_server({'server': server})
        server = self._wait_for_state_change(server, 'ERROR')
        self.assertIn('/etc/../root/x', server['fault']['message'])


class TestLiveMigration(LifecycleBase):

    def test_block_migration_destination_is_a_plain_overlay(self):
        server = self._boot_ami()
        drv = self._driver()
        ctx = nova_context.get_admin_context()
        instance = self._instance(server)
        inst_dir = self._instance_dir(server)
        disk_json = json.dumps(drv._get_instance_disk_info(instance, None))
        # The destination: no instance dir, no bases.
        os.rename(inst_dir, inst_dir + '.source')
        self.addCleanup(shutil.rmtree, inst_dir + '.source',
                        ignore_errors=True)
        for part in ('ami', 'aki', 'ari'):
            os.unlink(self._base(part))
        md = objects.LibvirtLiveMigrateData(
            is_shared_instance_path=False, is_shared_block_storage=False,
            block_migration=True, instance_relative_path=server['id'],
            graphics_listen_addr_vnc='127.0.0.1',
            graphics_listen_addr_spice='127.0.0.1',
            serial_listen_addr='127.0.0.1')
        drv.pre_live_migration(ctx, instance, None, [], disk_json, md)

        disk = self._disk(server)
        info = disk_info(disk)
        self.assertEqual(self._base('ami'), info['full-backing-filename'])
        self.assertEqual(GiB, info['virtual-size'])
        # Untouched: the overlay reads exactly as its base (no growth, no
        # key), ready for libvirt's copy.
        subprocess.run(['qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw',
                        disk, self._base('ami')], check=True,
                       capture_output=True)
        for part, fmt in (('kernel', b'aki'), ('ramdisk', b'ari')):
            base = self._base('aki' if part == 'kernel' else 'ari')
            self.assertEqual(fmt, os.getxattr(base,
                                              'user.amiboot.disk_format'))
            self.assertEqual(build.sha256_file(base),
                             build.sha256_file(os.path.join(inst_dir, part)))


class TestSharedBases(LifecycleBase):
    """The shared raw base is left unlabelled by every XML nova defines.

    The raw base in _base is shared by every instance of the image: each
    XML our driver hands to libvirt states it under the instance's qcow2
    disk with DAC relabelling off (so it stays root-owned 0644 while guests
    run), whichever operation wrote the XML.
    """

    def test_every_xml_leaves_the_base_unlabelled(self):
        server = self._boot_ami()
        inst_dir = self._instance_dir(server)
        disk, base = self._disk(server), self._base('ami')

        def check(*extra):
            for path in (disk,) + extra:
                self.assertBaseUnlabelled(server, path, base)
            st = os.stat(base)
            self.assertEqual((0, 0, 0o644),
                             (st.st_uid, st.st_gid, st.st_mode & 0o7777))
        check()

        self.defined_xml.clear()
        server = self._reboot_server(server, hard=True)
        check()

        self.defined_xml.clear()
        server = self._rescue_server(server)
        check(os.path.join(inst_dir, 'disk.rescue'))
        self.defined_xml.clear()
        server = self._unrescue_server(server)
        # nova defines the domain saved before the rescue (libvirt's XML).
        check()

        self.defined_xml.clear()
        server = self._resize_server(server, self.big)
        check()
        self.defined_xml.clear()
        server = self._revert_resize(server)
        check()

    def test_other_images_keep_nova_xml(self):
        server = self._boot('plain', key_name='k1')
        self.assertIsNone(self._backing_stores(server)[self._disk(server)])


class TestGuestProvisioning(LifecycleBase):
    """[amiboot] provision: an image that declares guest provisioning.

    QEMU does not run here: what is checked is what the host made (the
    ramdisk is the ARI followed by the layer, the disk is left alone);
    the cloud and functional tiers boot such guests.
    """

    def setUp(self):
        super().setUp()
        self.images['gari'] = self._upload(
            'gari', self.testbed['ramdisk'], 'ari',
            {'amiboot_provision': 'guest'})
        self.images['gami'] = self._upload(
            'gami', self.testbed['root'], 'ami',
            {'kernel_id': self.images['aki'],
             'ramdisk_id': self.images['gari']})

    def _layer(self, server, name='ramdisk'):
        from tests.unit import test_layer
        with open(self.testbed['ramdisk'], 'rb') as f:
            ari = f.read()
        with open(os.path.join(self._instance_dir(server), name), 'rb') as f:
            data = f.read()
        self.assertEqual(ari, data[:len(ari)])
        rest = data[len(ari):].lstrip(b'\0')
        members, _ = test_layer.read_newc(rest)
        prefix = layer.PREFIX + '/'
        return {k[len(prefix):]: v[4] for k, v in members.items()
                if k.startswith(prefix) and v[0] & 0o100000}

    def test_spawn_and_resize_leave_the_disk_to_the_ari(self):
        server = self._boot('gami', key_name='k1')
        disk = self._disk(server)
        base_fs = os.path.getsize(self.testbed['root'])
        # A plain overlay at the flavor's size, its filesystem untouched.
        self.assertEqual(GiB, disk_info(disk)['virtual-size'])
        self.assertEqual(self._base('gami'),
                         disk_info(disk)['full-backing-filename'])
        self.assertEqual(base_fs, fs_size(disk))
        self.assertLess(base_fs, GiB)
        members = self._layer(server)
        self.assertEqual(b'1\n', members['version'])
        self.assertEqual(b'1\n', members['grow'])
        self.assertEqual(test_servers.KEY + '\n',
                         members['ssh-keys'].decode())
        self.assertEqual(server['id'] + '\n',
                         members['instance-id'].decode())
        inst = self._instance(server)
        self.assertEqual(inst.hostname + '\n', members['hostname'].decode())

        # A resize grows the qcow2 only; the ramdisk made anew for the
        # destination only grows (the key is in the guest already).
        server = self._resize_server(server, self.big)
        self.assertEqual(2 * GiB, disk_info(disk)['virtual-size'])
        self.assertEqual(base_fs, fs_size(disk))
        members = self._layer(server)
        self.assertEqual(b'1\n', members['grow'])
        self.assertNotIn('ssh-keys', members)
        self.assertNotIn('hostname', members)
        server = self._confirm_resize(server)

        # A rebuild is a new first boot: the full layer again.
        server = self._rebuild_server(server, self.images['gami'])
        self.assertIn('ssh-keys', self._layer(server))

        # A hard reboot that finds the ramdisk gone makes it again, with
        # the layer that only grows.
        os.unlink(os.path.join(self._instance_dir(server), 'ramdisk'))
        server = self._reboot_server(server, hard=True)
        members = self._layer(server)
        self.assertEqual(b'1\n', members['grow'])
        self.assertNotIn('ssh-keys', members)

    def test_forced_guest_refuses_an_undeclared_image(self):
        self.flags(provision='guest', group='amiboot')
        server = self._build_server(image_uuid=self.images['ami'],
                                    flavor_id='1', networks='none')
        server = self.api.post_server({'server': server})
        server = self._wait_for_state_change(server, 'ERROR')
        fault = self.api.get_server(server['id'])['fault']['message']
        # nova keeps the first 255 characters of the message.
        self.assertIn('is unacceptable', fault)
        self.assertIn('[amiboot] provision = guest, but image ami', fault)

    def test_host_mode_ignores_the_declaration(self):
        self.flags(provision='host', group='amiboot')
        server = self._boot('gami', key_name='k1')
        self.assertEqual(GiB, fs_size(self._disk(server)))
        with open(os.path.join(self._instance_dir(server), 'ramdisk'),
                  'rb') as f, open(self.testbed['ramdisk'], 'rb') as g:
            self.assertEqual(g.read(), f.read())
