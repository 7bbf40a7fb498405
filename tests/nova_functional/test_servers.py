"""Boot servers through nova's API with the AMI boot method.

nova's API, conductor, scheduler and compute run in-process on nova's own
fixtures. The hypervisor is nova's fake libvirt (QEMU does not run here);
all disk work is real: Glance data (nova's GlanceFixture) through our cache,
qemu-img, qemu-storage-daemon, e2fsprogs. ServersTestBase mocks out disk
creation; this test puts the real functions back.
"""

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings

import fixtures
from lxml import etree
from nova import context as nova_context
import nova.privsep as nova_privsep
from nova.tests.functional.libvirt import base as libvirt_base
from nova.virt.libvirt import driver as nova_driver
from nova.virt.libvirt import host as nova_host
from nova.virt.libvirt import imagebackend as nova_imagebackend
from nova.virt.libvirt import utils as nova_libvirt_utils
from oslo_utils.fixture import uuidsentinel as uuids
from sqlalchemy import exc as sqla_exc

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import CONF
from nova_amiboot import grow
from nova_amiboot import inject
from nova_amiboot import privileged
from nova_amiboot.virt import compute as wrapper
from tests.testbed import build

# The real functions, taken before any fixture patches them.
REAL = {
    'nova.virt.libvirt.LibvirtDriver._create_image':
        nova_driver.LibvirtDriver._create_image,
    'nova.virt.libvirt.imagebackend.Backend.backend':
        nova_imagebackend.Backend.backend,
    'nova.virt.libvirt.utils.fetch_image': nova_libvirt_utils.fetch_image,
    'nova.virt.libvirt.utils.fetch_raw_image':
        nova_libvirt_utils.fetch_raw_image,
}
GiB = 1024 ** 3


def _make_key():
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                        'nova@functional', '-f', d + '/k'], check=True)
        with open(d + '/k.pub') as f:
            return f.read().strip()


KEY = _make_key()


def _hashes(data):
    return {'size': len(data),
            'checksum': hashlib.md5(data, usedforsecurity=False).hexdigest(),
            'os_hash_algo': 'sha512',
            'os_hash_value': hashlib.sha512(data).hexdigest()}


class AmiServersBase(libvirt_base.ServersTestBase):
    """nova in-process with our driver, real disk work, an AMI triplet."""

    def setUp(self):
        self.flags(api_paste_config=os.path.join(
            sys.prefix, 'etc', 'nova', 'api-paste.ini'), group='wsgi')
        super().setUp()
        # nova 34's DB API uses noload(), which SQLAlchemy 2.1 deprecates;
        # nova's fixture turns that warning into an error (rescue, shelve).
        warnings.filterwarnings('ignore', message='The noload',
                                category=sqla_exc.SADeprecationWarning)
        for target, real in REAL.items():
            self.useFixture(fixtures.MonkeyPatch(target, real))
        # The domain XML nova generates, recorded on its way to libvirt
        # (nova's fake libvirt re-renders a parsed subset of it).
        self.guest_xml = {}
        real_get_guest_xml = nova_driver.LibvirtDriver._get_guest_xml

        def record_guest_xml(drv, context, instance, *args, **kwargs):
            xml = real_get_guest_xml(drv, context, instance, *args, **kwargs)
            self.guest_xml[instance.uuid] = xml
            return xml
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._get_guest_xml',
            record_guest_xml))
        # The XML as it reaches libvirt (after our driver's changes): the
        # last definition of each domain, by uuid.
        self.defined_xml = {}
        real_write = nova_host.Host.write_instance_config

        def record_defined_xml(host, xml):
            uuid = etree.fromstring(xml.encode()).findtext('uuid')
            self.defined_xml[uuid] = xml
            return real_write(host, xml)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.host.Host.write_instance_config',
            record_defined_xml))
        wrapper.register()
        # Root here: nova's and our privileged calls run in-process instead
        # of through a privsep daemon (nova's fixtures forbid starting one).
        for ctx in (nova_privsep.sys_admin_pctxt, privileged.nbd_pctxt,
                    privileged.net_pctxt):
            ctx.set_client_mode(False)
            self.addCleanup(ctx.set_client_mode, True)
        self.testbed = build.build()
        self.flags(allowed_boot_params=['quiet', 'amiboot.*'],
                   group='amiboot')
        self.start_compute()
        real_wait = self.notifier.wait_for_versioned_notifications

        def generous_wait(event_type, n_events=1, timeout=10.0):
            return real_wait(event_type, n_events, max(timeout, 300.0))
        self.notifier.wait_for_versioned_notifications = generous_wait
        self.images = {}
        for name, path, fmt in (('aki', self.testbed['kernel'], 'aki'),
                                ('ari', self.testbed['ramdisk'], 'ari'),
                                ('plain', self.testbed['root'], 'raw')):
            self.images[name] = self._upload(name, path, fmt)
        self.images['ami'] = self._upload(
            'ami', self.testbed['root'], 'ami',
            {'kernel_id': self.images['aki'],
             'ramdisk_id': self.images['ari']})
        # networks='none' needs 2.37 or later.
        self.api.microversion = 'latest'
        self.api.post_keypair({'keypair': {'name': 'k1',
                                           'public_key': KEY}})

    def _wait_for_server_parameter(self, server, expected_params,
                                   max_retries=10, **kwargs):
        # nova's default is 5 s; real disk work on a loaded shared host
        # takes longer.
        return super()._wait_for_server_parameter(
            server, expected_params, max(max_retries, 600), **kwargs)

    def _clear_attrs(self):
        # nova's TestCase deletes every instance attribute at clean-up (to
        # save memory under stestr); pytest deletes the test method's
        # attribute afterwards and fails on the missing one. Keep the
        # test method's attribute, drop the rest as nova does.
        keep = self._testMethodName
        for key in [k for k in self.__dict__ if k[0] != '_' and k != keep]:
            del self.__dict__[key]

    def _setup_compute_service(self):
        self.flags(compute_driver='amiboot.AmibootLibvirtDriver')

    def _upload(self, name, path, fmt, properties=None):
        with open(path, 'rb') as f:
            data = f.read()
        meta = {'id': getattr(uuids, 'image_' + name), 'name': name,
                'disk_format': fmt,
                'container_format': fmt if fmt != 'raw' else 'bare',
                'status': 'active', 'visibility': 'public',
                'properties': dict(properties or {})}
        meta.update(_hashes(data))
        self.glance.create(None, meta, data=io.BytesIO(data))
        return meta['id']

    def _boot(self, image, **extra):
        server = self._build_server(image_uuid=self.images[image],
                                    flavor_id='1', networks='none')
        server.update(extra)
        server = self.api.post_server({'server': server})
        return self._wait_for_state_change(server, 'ACTIVE')

    def _instance_dir(self, server):
        return os.path.join(CONF.instances_path, server['id'])

    def _base(self, image):
        return os.path.join(CONF.instances_path, '_base',
                            cache_mod.base_name(self.images[image]))

    def _domain_xml(self, server):
        return self.guest_xml[server['id']]

    def _backing_stores(self, server):
        """{disk file: its <backingStore>} in the XML libvirt was given."""
        dom = etree.fromstring(self.defined_xml[server['id']].encode())
        return {d.find('source').get('file'): d.find('backingStore')
                for d in dom.iterfind('devices/disk')
                if d.find('source') is not None}

    def assertBaseUnlabelled(self, server, disk, base):
        """``disk``'s raw base is stated and left alone by libvirt's DAC."""
        store = self._backing_stores(server).get(disk)
        self.assertIsNotNone(store, 'no <backingStore> for %s' % disk)
        self.assertEqual('file', store.get('type'))
        self.assertEqual('raw', store.find('format').get('type'))
        self.assertEqual(base, store.find('source').get('file'))
        labels = store.findall('source/seclabel')
        self.assertEqual([('dac', 'no')],
                         [(s.get('model'), s.get('relabel')) for s in labels])
        # The chain ends at the raw base.
        end = store.find('backingStore')
        self.assertIsNotNone(end)
        self.assertEqual(0, len(end))


class TestAmiServers(AmiServersBase):

    def test_ami_server(self):
        user_data = base64.b64encode(b'bootparams=amiboot.ud=1\n').decode()
        server = self._boot('ami', key_name='k1', user_data=user_data,
                            metadata={'amiboot_boot_params':
                                      'quiet amiboot.md=2'})
        disk = os.path.join(self._instance_dir(server), 'disk')
        info = json.loads(subprocess.run(
            ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', disk],
            check=True, capture_output=True, text=True).stdout)
        self.assertEqual(self._base('ami'), info['full-backing-filename'])
        self.assertEqual('raw', info['backing-filename-format'])
        self.assertEqual(GiB, info['virtual-size'])     # m1.tiny: root_gb 1
        with attach.attached(disk, 'qcow2', CONF,
                             backing=attach.HEADER) as target:
            out = target.run('dumpe2fs', ['-h'])[0]
            fields = dict(line.split(':', 1) for line in out.splitlines()
                          if ':' in line)
            self.assertEqual(GiB, int(fields['Block count'])
                             * int(fields['Block size']))
            fs = inject.GuestFS(target)
            self.assertEqual(inject.KEY_MARKER + '\n' + KEY + '\n',
                             fs.read('/root/.ssh/authorized_keys').decode())
            self.assertEqual((0o600, 0, 0),
                             fs.stat('/root/.ssh/authorized_keys'))
            self.assertEqual((0o700, 0, 0), fs.stat('/root/.ssh'))
        # Kernel and ramdisk came through our inspected cache.
        for part in ('aki', 'ari'):
            self.assertTrue(os.path.exists(self._base(part)))
        xml = self._domain_xml(server)
        inst_dir = self._instance_dir(server)
        self.assertIn('<kernel>%s/kernel</kernel>' % inst_dir, xml)
        self.assertIn('<initrd>%s/ramdisk</initrd>' % inst_dir, xml)
        cmdline = xml.split('<cmdline>')[1].split('</cmdline>')[0].split()
        self.assertEqual(['quiet', 'amiboot.md=2', 'amiboot.ud=1'],
                         cmdline[-3:])
        self.assertIn('root=/dev/vda', cmdline)

        # Deleting the server keeps the bases; nova's image cache manager
        # pass later removes them as unused.
        self._delete_server(server)
        for part in ('ami', 'aki', 'ari'):
            self.assertTrue(os.path.exists(self._base(part)), part)
        self.flags(remove_unused_base_images=True,
                   remove_unused_original_minimum_age_seconds=0,
                   group='image_cache')
        compute = self.computes['compute1']
        compute.manager._run_image_cache_manager_pass(
            nova_context.get_admin_context())
        for part in ('ami', 'aki', 'ari'):
            self.assertFalse(os.path.exists(self._base(part)), part)

    def test_denied_boot_param_fails_the_server(self):
        server = self._build_server(image_uuid=self.images['ami'],
                                    flavor_id='1', networks='none')
        server['metadata'] = {'amiboot_boot_params': 'init=/bin/sh'}
        server = self.api.post_server({'server': server})
        server = self._wait_for_state_change(server, 'ERROR')
        self.assertIn('init=/bin/sh', server['fault']['message'])
        # Refused before any download or disk work.
        self.assertFalse(os.path.exists(self._base('ami')))

    def test_unwritable_os_command_line_fails_the_server(self):
        # The image owner's line only has to be writable into the domain
        # XML; a control character cannot be, and must end the build with
        # the reason (not a reschedule, "No valid host") before any work.
        self.images['badline'] = self._upload(
            'badline', self.testbed['root'], 'ami',
            {'kernel_id': self.images['aki'],
             'ramdisk_id': self.images['ari'],
             'os_command_line': 'root=/dev/vda console=ttyS0\x01'})
        server = self._build_server(image_uuid=self.images['badline'],
                                    flavor_id='1', networks='none')
        server = self.api.post_server({'server': server})
        server = self._wait_for_state_change(server, 'ERROR')
        self.assertIn('kernel command line', server['fault']['message'])
        self.assertIn(self.images['badline'], server['fault']['message'])
        self.assertFalse(os.path.exists(self._base('badline')))

    def test_other_images_are_stock_nova(self):
        server = self._boot('plain', key_name='k1')
        disk = os.path.join(self._instance_dir(server), 'disk')
        info = json.loads(subprocess.run(
            ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', disk],
            check=True, capture_output=True, text=True).stdout)
        self.assertEqual(self._base('plain'), info['full-backing-filename'])
        with attach.attached(disk, 'qcow2', CONF,
                             backing=attach.HEADER) as target:
            out = target.run('dumpe2fs', ['-h'])[0]
            fields = dict(line.split(':', 1) for line in out.splitlines()
                          if ':' in line)
            # Stock nova does not grow the filesystem or inject the key.
            self.assertEqual(os.path.getsize(self.testbed['root']),
                             int(fields['Block count'])
                             * int(fields['Block size']))
            self.assertIsNone(inject.GuestFS(target).read(
                '/root/.ssh/authorized_keys'))
        self.assertNotIn('<kernel>', self._domain_xml(server))

    def test_second_server_copies_the_grown_template(self):
        # Every filesystem growth, counted (the real one runs).
        grows = []
        real_grow = grow.grow

        def counting_grow(*args, **kwargs):
            grows.append(args)
            return real_grow(*args, **kwargs)
        self.useFixture(fixtures.MonkeyPatch('nova_amiboot.grow.grow',
                                             counting_grow))
        tdir = os.path.join(CONF.instances_path, '_base', grow.TEMPLATE_DIR)
        first = self._boot('ami', key_name='k1')
        # The first server of (image, 1 GiB) built the template: the only
        # growth.
        (name,) = os.listdir(tdir)
        self.assertTrue(name.startswith(
            cache_mod.base_name(self.images['ami']) + '-%d-' % GiB), name)
        tpl = os.stat(os.path.join(tdir, name))
        self.assertEqual(1, len(grows))
        second = self._boot('ami', key_name='k1')
        # The second copied it: no growth of its own, the same template.
        self.assertEqual(1, len(grows))
        self.assertEqual([name], os.listdir(tdir))
        self.assertEqual(tpl.st_ino,
                         os.stat(os.path.join(tdir, name)).st_ino)
        for server in (first, second):
            disk = os.path.join(self._instance_dir(server), 'disk')
            info = json.loads(subprocess.run(
                ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json',
                 disk], check=True, capture_output=True, text=True).stdout)
            self.assertEqual(self._base('ami'),
                             info['full-backing-filename'])
            with attach.attached(disk, 'qcow2', CONF,
                                 backing=attach.HEADER) as target:
                target.run('e2fsck', ['-fn'])
                out = target.run('dumpe2fs', ['-h'])[0]
                fields = dict(line.split(':', 1) for line in
                              out.splitlines() if ':' in line)
                self.assertEqual(GiB, int(fields['Block count'])
                                 * int(fields['Block size']))
                self.assertIn(KEY, inject.GuestFS(target).read(
                    '/root/.ssh/authorized_keys').decode())
            # Nothing left of the disk's making.
            self.assertEqual([], [n for n in os.listdir(CONF.instances_path)
                                  if n.startswith('amiboot-check-')])

        # Nothing to write (no key, no hostname): the template's copy is
        # the disk, never attached.
        attaches = []
        real_attached = attach.attached

        def counting_attached(*args, **kwargs):
            attaches.append(args)
            return real_attached(*args, **kwargs)
        self.useFixture(fixtures.MonkeyPatch('nova_amiboot.attach.attached',
                                             counting_attached))
        self.flags(inject_hostname=False, group='amiboot')
        third = self._boot('ami')
        self.assertEqual([], attaches)
        self.assertEqual(1, len(grows))
        disk = os.path.join(self._instance_dir(third), 'disk')
        with real_attached(disk, 'qcow2', CONF,
                           backing=attach.HEADER) as target:
            out = target.run('dumpe2fs', ['-h'])[0]
        fields = dict(line.split(':', 1) for line in out.splitlines()
                      if ':' in line)
        self.assertEqual(GiB, int(fields['Block count'])
                         * int(fields['Block size']))
