"""Server operations after the first boot, for AMI instances.

Same harness as test_servers: nova's API, conductor, scheduler and
compute(s) in-process, nova's fake libvirt (QEMU does not run here), real
disk work (our cache, qemu-img, qemu-storage-daemon, e2fsprogs). Two
in-process computes share one instances directory, which is what a cloud
with shared instance storage looks like; where an operation asks whether
the path is shared (over ssh, in nova), the answer is that fact.
"""

import hashlib
import json
import os
import subprocess

import fixtures
from nova import context as nova_context
from nova import objects
from nova.tests.functional.api import client
from nova.virt.libvirt import driver as nova_driver

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import CONF
from nova_amiboot import inject
from tests.nova_functional import test_servers

GiB = test_servers.GiB
MARKER = b'written by the user before the operation\n'


def disk_info(disk):
    return json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', disk],
        check=True, capture_output=True, text=True).stdout)


def fs_size(disk):
    with attach.attached(disk, 'qcow2', CONF) as target:
        out = target.run('dumpe2fs', ['-h'])[0]
    fields = dict(line.split(':', 1) for line in out.splitlines()
                  if ':' in line)
    return int(fields['Block count']) * int(fields['Block size'])


def read_files(disk, *paths):
    with attach.attached(disk, 'qcow2', CONF) as target:
        fs = inject.GuestFS(target)
        return [fs.read(p) for p in paths]


def write_file(disk, path, data):
    with attach.attached(disk, 'qcow2', CONF) as target:
        inject.GuestFS(target).write(path, data)


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


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
        before = sha256(disk)
        server = self._reboot_server(server, hard=True)
        self.assertEqual(before, sha256(disk))
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

    def test_cold_migrate_to_a_host_without_the_base(self):
        server = self._boot_ami()
        src = server['OS-EXT-SRV-ATTR:host']
        dest = 'compute2' if src == 'compute1' else 'compute1'
        disk = self._disk(server)
        write_file(disk, '/root/marker', MARKER)
        before = sha256(disk)
        # The destination has no base (or it was aged out since).
        os.unlink(self._base('ami'))

        server = self._migrate_server(server, host=dest,
                                      api=self.api_fixture.admin_api)
        self.assertEqual(dest, server['OS-EXT-SRV-ATTR:host'])
        # The disk came over untouched; its base is back, fetched and
        # checked by our cache (the disk_format it records says so).
        self.assertEqual(before, sha256(disk))
        self.assertEqual(
            b'ami', os.getxattr(self._base('ami'),
                                'user.amiboot.disk_format'))
        self.assertEqual(GiB, fs_size(disk))
        server = self._confirm_resize(server)
        self.assertEqual(['quiet', 'amiboot.md=2'], self._cmdline(server)[-2:])

    def test_hard_reboot_base_aged_out_and_image_gone(self):
        server = self._boot_ami()
        disk = self._disk(server)
        before = sha256(disk)
        os.unlink(self._base('ami'))
        server = self._reboot_server(server, hard=True)
        self.assertTrue(os.path.exists(self._base('ami')))
        self.assertEqual(before, sha256(disk))

        # Gone from the cache and from Glance: nova's ImageNotFound.
        os.unlink(self._base('ami'))
        self._delete_from_glance('ami')
        self._action_may_fail(server, {'reboot': {'type': 'HARD'}},
                              'ImageNotFound')
        server = self._wait_for_state_change(server, 'ERROR')
        self.assertEqual('Image %s could not be found.' % self.images['ami'],
                         server['fault']['message'])
        self.assertEqual(before, sha256(disk))


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
        self.assertEqual(sha256(self._base('aki2')),
                         sha256(os.path.join(inst_dir, 'kernel.rescue')))
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


class TestCacheDirName(LifecycleBase):

    def setUp(self):
        self.flags(subdirectory_name='_amicache', group='image_cache')
        super().setUp()

    def test_subdirectory_name(self):
        server = self._boot_ami()
        base_dir = os.path.join(CONF.instances_path, '_amicache')
        base = os.path.join(base_dir, cache_mod.base_name(self.images['ami']))
        info = disk_info(self._disk(server))
        self.assertEqual(base, info['full-backing-filename'])
        for part in ('aki', 'ari'):
            self.assertTrue(os.path.exists(os.path.join(
                base_dir, cache_mod.base_name(self.images[part]))))
        self.assertFalse(os.path.exists(os.path.join(CONF.instances_path,
                                                     '_base')))
