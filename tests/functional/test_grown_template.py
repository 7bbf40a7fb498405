"""Grown templates: made once per (base, size), copied per instance."""

import json
import os
import stat
import uuid

from nova_amiboot import attach
from nova_amiboot import grow
from nova_amiboot import inject
from nova_amiboot import spawn
from tests.functional import base

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITemplate test@amiboot'
GiB = 1024 ** 3


class TestGrownTemplate(base.RealToolsTestCase):

    def request(self, image_id, root_gb=2, **kw):
        kw.setdefault('key', KEY)
        return spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='vm-%s' % uuid.uuid4().hex[:6],
            image_id=image_id, flavor=spawn.Flavor('t', root_gb, 256, 1),
            **kw)

    def prepare(self, req):
        return spawn.prepare(self.conf, self.make_cache(), req,
                             virt_type='qemu')

    def templates(self):
        d = os.path.join(self.instances, '_base', grow.TEMPLATE_DIR)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def qemu_info(self, path):
        return json.loads(self.run_cmd('qemu-img', 'info', '-U',
                                       '--output=json', path))

    def fs_bytes(self, prepared):
        with attach.attached(prepared.disk, prepared.disk_format,
                             self.conf) as tg:
            out = tg.run('dumpe2fs', ['-h'])[0]
            keys = inject.GuestFS(tg).read('/root/.ssh/authorized_keys')
        f = dict(line.split(':', 1) for line in out.splitlines()
                 if ':' in line)
        return int(f['Block count']) * int(f['Block size']), keys

    def test_one_template_per_base_and_size(self):
        ami, _a, _r = self.add_triplet()
        base_path = self.make_cache().path_for(ami.id)
        p1 = self.prepare(self.request(ami.id, root_gb=2))
        self.assertEqual(1, len(self.templates()))
        tpl = os.path.join(self.instances, '_base', grow.TEMPLATE_DIR,
                           self.templates()[0])
        # Shared, so never writable; it names base, size and base identity.
        self.assertEqual(0o444, stat.S_IMODE(os.stat(tpl).st_mode))
        self.assertIn('%s-%d-%s' % (os.path.basename(base_path), 2 * GiB,
                                    grow.base_id(base_path)), tpl)
        mtime = os.stat(tpl).st_mtime_ns
        p2 = self.prepare(self.request(ami.id, root_gb=2,
                                       key=KEY.replace('Template', 'Other')))
        self.assertEqual(mtime, os.stat(tpl).st_mtime_ns)
        self.assertEqual(1, len(self.templates()))
        self.prepare(self.request(ami.id, root_gb=3))
        self.assertEqual(2, len(self.templates()))
        for p in (p1, p2):
            # Each instance disk is its own qcow2 overlay of the raw base.
            info = self.qemu_info(p.disk)
            self.assertEqual('qcow2', info['format'])
            self.assertEqual(base_path, info['full-backing-filename'])
            self.assertEqual('raw', info['backing-filename-format'])
            self.assertNotEqual(os.stat(tpl).st_ino, os.stat(p.disk).st_ino)
            self.assertEqual(0o644, stat.S_IMODE(os.stat(p.disk).st_mode))
            self.assertTrue(p.grown)
        size1, keys1 = self.fs_bytes(p1)
        size2, keys2 = self.fs_bytes(p2)
        self.assertEqual(2 * GiB, size1)
        self.assertEqual(2 * GiB, size2)
        # One instance's key never reaches another through the template.
        self.assertIn(KEY.encode(), keys1)
        self.assertNotIn(KEY.encode(), keys2)
        self.assertIn(b'Other', keys2)
        self.assertNotIn(b'Other', keys1)
        # The template itself holds no key.
        with attach.attached(tpl, 'qcow2', self.conf) as tg:
            self.assertIsNone(inject.GuestFS(tg).read(
                '/root/.ssh/authorized_keys'))

    def test_overlay_cluster_size(self):
        ami, _a, _r = self.add_triplet()
        p = self.prepare(self.request(ami.id))
        tpl = os.path.join(self.instances, '_base', grow.TEMPLATE_DIR,
                           self.templates()[0])
        for path in (p.disk, tpl):
            self.assertEqual(16384, self.qemu_info(path)['cluster-size'])
        self.conf.set_override('overlay_cluster_size', 65536, 'amiboot')
        p = self.prepare(self.request(ami.id, root_gb=3))
        self.assertEqual(65536, self.qemu_info(p.disk)['cluster-size'])

    def _image_with_keys(self, content):
        root = self.scratch('keys.img')
        self.run_cmd('cp', '--sparse=always', self.testbed['root'], root)
        with attach.attached(root, 'raw', self.conf) as tg:
            inject.GuestFS(tg).write('/root/.ssh/authorized_keys', content,
                                     mode=0o600)
        return root

    def tpl_record(self):
        tpl = os.path.join(self.instances, '_base', grow.TEMPLATE_DIR,
                           self.templates()[0])
        return tpl, json.loads(os.getxattr(tpl, 'user.amiboot.template'))

    def test_template_remembers_authorized_keys(self):
        # What the image holds already is read once, at the template, and
        # every instance's key is appended to exactly that.
        old = b'ssh-rsa AAAAB3Old old@image\n'
        ami, _a, _r = self.add_triplet(root=self._image_with_keys(old))
        p1 = self.prepare(self.request(ami.id))
        _tpl, facts = self.tpl_record()
        rec = facts['known']['/root/.ssh/authorized_keys']
        self.assertEqual(old.hex(), rec['content'])
        self.assertEqual(['/root', '/root/.ssh',
                          '/root/.ssh/authorized_keys'],
                         [p for p, _i in rec['parts']])
        p2 = self.prepare(self.request(ami.id,
                                       key=KEY.replace('Template', 'Two')))
        for p, key in ((p1, KEY), (p2, KEY.replace('Template', 'Two'))):
            keys = self.fs_bytes(p)[1]
            self.assertTrue(keys.startswith(old), keys)
            self.assertTrue(keys.endswith(key.encode() + b'\n'), keys)

    def test_bad_template_record_is_not_used(self):
        # A record that does not hold together is ignored: the file is
        # read from the disk as without one.
        ami, _a, _r = self.add_triplet()
        self.prepare(self.request(ami.id, key=None))
        tpl, facts = self.tpl_record()
        rec = facts['known']['/root/.ssh/authorized_keys']
        # The image has no authorized_keys: its last part is absent.
        self.assertIsNone(rec['content'])
        self.assertIsNone(rec['parts'][-1][1])
        for bad in ({'parts': rec['parts'], 'content': b'x'.hex()},
                    {'parts': rec['parts'][:-1], 'content': None},
                    {'parts': [[p, [1, 2]] for p, _i in rec['parts']],
                     'content': None},
                    'nonsense'):
            facts['known'] = {'/root/.ssh/authorized_keys': bad}
            os.chmod(tpl, 0o644)
            os.setxattr(tpl, 'user.amiboot.template',
                        json.dumps(facts).encode())
            os.chmod(tpl, 0o444)
            p = self.prepare(self.request(ami.id))
            self.assertEqual(
                (inject.KEY_MARKER + '\n' + KEY + '\n').encode(),
                self.fs_bytes(p)[1])

    def test_write_forgets_remembered_reads(self):
        root = self._image_with_keys(b'ssh-rsa AAAAB3Old old@image\n')
        with attach.attached(root, 'raw', self.conf) as tg:
            record = inject.GuestFS(tg).remember()
            fs = inject.GuestFS(tg, known=record)
            fs.write('/root/.ssh/authorized_keys', b'new\n', mode=0o600)
            self.assertEqual(b'new\n',
                             fs.read('/root/.ssh/authorized_keys'))

    def test_replaced_base_never_meets_old_template(self):
        ami, _a, _r = self.add_triplet()
        cache = self.make_cache()
        self.prepare(self.request(ami.id, key=None))
        old = self.templates()
        self.assertEqual(1, len(old))
        # The base goes (cache clean-up) and comes back as a new inode.
        base_path = cache.path_for(ami.id)
        old_id = grow.base_id(base_path)
        os.unlink(base_path)
        p = self.prepare(self.request(ami.id))
        new_id = grow.base_id(base_path)
        self.assertNotEqual(old_id, new_id)
        # The old template was swept when the new one was made.
        self.assertEqual(1, len(self.templates()))
        self.assertNotEqual(old, self.templates())
        self.assertIn(new_id, self.templates()[0])
        self.assertEqual(2 * GiB, self.fs_bytes(p)[0])

    def test_sweep_removes_orphans_and_dead_builds(self):
        ami, _a, _r = self.add_triplet()
        cache = self.make_cache()
        self.prepare(self.request(ami.id, key=None))
        tdir = os.path.join(self.instances, '_base', grow.TEMPLATE_DIR)
        name = self.templates()[0]
        # What a build killed midway leaves (a dead pid) is removed; a live
        # build's part file is not.
        dead = os.path.join(tdir, name + '.part-999999999')
        live = os.path.join(tdir, name + '.part-%d' % os.getpid())
        for p in (dead, live):
            open(p, 'w').close()
        self.assertEqual([name + '.part-999999999'],
                         grow.sweep_templates(cache.base_dir))
        os.unlink(live)
        # A template whose base is gone goes with it.
        os.unlink(cache.path_for(ami.id))
        self.assertEqual([name], grow.sweep_templates(cache.base_dir))
        self.assertEqual([], self.templates())

    def test_cache_clean_takes_templates_with_bases(self):
        ami, _a, _r = self.add_triplet()
        p = self.prepare(self.request(ami.id, key=None))
        cache = self.make_cache()
        # In use: the base and its template stay.
        self.assertEqual([], cache.clean(min_age=0))
        self.assertEqual(1, len(self.templates()))
        os.unlink(p.disk)
        removed = cache.clean(min_age=0)
        self.assertIn(cache.path_for(ami.id), removed)
        self.assertEqual([], self.templates())

    def test_no_xattrs_no_template(self):
        ami, _a, _r = self.add_triplet()
        cache = self.make_cache()
        cache.fetch(ami.id)
        base_path = cache.path_for(ami.id)
        os.setxattr(base_path, 'user.amiboot.id', b'')
        # An identity that cannot be a template's: the disk is made and
        # grown as without templates.
        self.assertIsNone(grow.grown_disk(
            base_path, self.scratch('d'), 2 * GiB,
            grow.base_facts(base_path, self.conf), self.conf, None))
