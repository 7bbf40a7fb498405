"""Plain templates: guest mode's overlay, made once per (base, size).

In guest mode the instance disk is the empty overlay ``qemu-img create``
makes; it is made once per (base, size) in ``_base/amiboot-plain`` and
copied per instance. Checked with real qemu-img: each copy is a qcow2
overlay of the raw base at the flavor's size, the instance's own file,
byte for byte what ``qemu-img create`` makes; the template is removed with
its base.
"""

import json
import os
import stat
import uuid

from nova_amiboot import disk
from nova_amiboot import grow
from nova_amiboot import meta
from nova_amiboot import spawn
from tests.functional import base

GiB = 1024 ** 3
DECLARED = {'amiboot_provision': 'guest'}


class TestPlainTemplate(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        self.conf.set_override('provision', 'guest', 'amiboot')

    def request(self, image_id, root_gb=2):
        return spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='vm-%s' % uuid.uuid4().hex[:6],
            image_id=image_id, flavor=spawn.Flavor('t', root_gb, 256, 1))

    def prepare(self, req):
        p = spawn.prepare(self.conf, self.make_cache(), req,
                          virt_type='qemu')
        self.assertEqual('guest', p.provision)
        return p

    def templates(self, kind=grow.PLAIN_DIR):
        d = os.path.join(self.instances, '_base', kind)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def qemu_info(self, path):
        return json.loads(self.run_cmd('qemu-img', 'info', '-U',
                                       '--output=json', path))

    def test_one_plain_template_per_base_and_size(self):
        ami, _a, _r = self.add_triplet(properties=DECLARED)
        base_path = self.make_cache().path_for(ami.id)
        p1 = self.prepare(self.request(ami.id, root_gb=2))
        (name,) = self.templates()
        tpl = os.path.join(self.instances, '_base', grow.PLAIN_DIR, name)
        # Shared, so never writable; it names base, size and identity.
        self.assertEqual(0o444, stat.S_IMODE(os.stat(tpl).st_mode))
        self.assertEqual('%s-%d-%s.qcow2' % (os.path.basename(base_path),
                                             2 * GiB,
                                             grow.base_id(base_path)), name)
        # Guest mode makes no grown template.
        self.assertEqual([], self.templates(grow.TEMPLATE_DIR))
        mtime = os.stat(tpl).st_mtime_ns
        p2 = self.prepare(self.request(ami.id, root_gb=2))
        self.assertEqual(mtime, os.stat(tpl).st_mtime_ns)
        self.assertEqual([name], self.templates())
        p3 = self.prepare(self.request(ami.id, root_gb=3))
        self.assertEqual(2, len(self.templates()))
        # What qemu-img create makes for the instance, for comparison.
        made = self.scratch('made.qcow2')
        disk.create(base_path, made, 2 * GiB,
                    cluster_size=self.conf.amiboot.overlay_cluster_size)
        with open(made, 'rb') as f:
            expected = f.read()
        for p, size in ((p1, 2), (p2, 2), (p3, 3)):
            info = self.qemu_info(p.disk)
            self.assertEqual('qcow2', info['format'])
            self.assertEqual(size * GiB, info['virtual-size'])
            self.assertEqual(base_path, info['full-backing-filename'])
            self.assertEqual('raw', info['backing-filename-format'])
            # The instance's own file, writable by its QEMU only.
            self.assertNotEqual(os.stat(tpl).st_ino, os.stat(p.disk).st_ino)
            self.assertEqual(0o644, stat.S_IMODE(os.stat(p.disk).st_mode))
            self.assertEqual(1, os.stat(p.disk).st_nlink)
            self.assertFalse(p.grown)
            # It records its base, as a created overlay does.
            self.assertEqual(base_path, meta.recorded_backing(p.disk))
        for p in (p1, p2):
            with open(p.disk, 'rb') as f:
                self.assertEqual(expected, f.read())
        # A write to one instance's disk reaches neither the template nor
        # the other instance.
        self.run_cmd('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 64k',
                     p1.disk)
        with open(tpl, 'rb') as f:
            self.assertEqual(expected, f.read())
        with open(p2.disk, 'rb') as f:
            self.assertEqual(expected, f.read())

    def test_cache_clean_takes_plain_templates_with_bases(self):
        ami, _a, _r = self.add_triplet(properties=DECLARED)
        p = self.prepare(self.request(ami.id))
        cache = self.make_cache()
        self.assertEqual([], cache.clean(min_age=0))
        self.assertEqual(1, len(self.templates()))
        os.unlink(p.disk)
        removed = cache.clean(min_age=0)
        self.assertIn(cache.path_for(ami.id), removed)
        self.assertEqual([], self.templates())

    def test_dead_build_is_swept(self):
        ami, _a, _r = self.add_triplet(properties=DECLARED)
        p = self.prepare(self.request(ami.id))
        cache = self.make_cache()
        (name,) = self.templates()
        tdir = os.path.join(self.instances, '_base', grow.PLAIN_DIR)
        # What a build killed midway leaves (pid 2**22 + 1: beyond
        # pid_max, never alive).
        part = os.path.join(tdir, name + '.part-%d' % (2 ** 22 + 1))
        with open(part, 'wb') as f:
            f.write(b'half')
        self.assertEqual([os.path.basename(part)],
                         grow.sweep_templates(cache.base_dir))
        self.assertEqual([name], self.templates())
        self.assertTrue(os.path.exists(p.disk))

    def test_no_identity_no_template(self):
        ami, _a, _r = self.add_triplet(properties=DECLARED)
        cache = self.make_cache()
        cache.fetch(ami.id)
        base_path = cache.path_for(ami.id)
        os.setxattr(base_path, 'user.amiboot.id', b'')
        self.assertFalse(grow.plain_disk(base_path, self.scratch('d'),
                                         2 * GiB, self.conf, None))
        self.assertFalse(os.path.exists(self.scratch('d')))
        # The instance disk is then created by qemu-img: the same overlay.
        p = self.prepare(self.request(ami.id))
        self.assertEqual([], self.templates())
        info = self.qemu_info(p.disk)
        self.assertEqual(2 * GiB, info['virtual-size'])
        self.assertEqual(base_path, info['full-backing-filename'])
