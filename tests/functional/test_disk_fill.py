"""Disk fill from a small qcow2 (issue: hole 5), on real qemu-img.

The hostile input is crafted.qcow2_one_cluster(): ~600 KiB of qcow2 that
converts to 2.1 GiB of non-zero raw data. Every refusal leaves nothing in
``_base``: no base, no temporary file.
"""

import os
import subprocess
import uuid

from nova_amiboot import cache as cache_mod
from nova_amiboot import exception
from nova_amiboot import spawn
from tests.functional import base
from tests.functional import crafted

MiB = 1024 ** 2
GiB = 1024 ** 3
BIG = 2 * GiB + 100 * MiB


class TestDiskFill(base.RealToolsTestCase):

    def crafted(self, virtual_size, fill=b'\xa5'):
        path = self.scratch('crafted-%s.qcow2' % uuid.uuid4().hex[:6])
        crafted.qcow2_one_cluster(path, virtual_size, fill)
        return path

    def tmpfs(self, size):
        path = self.scratch('small-%s' % uuid.uuid4().hex[:6])
        os.makedirs(path)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s' % size,
                        'tmpfs', path], check=True)
        self.addCleanup(subprocess.run, ['umount', '-l', path])
        return path

    def assertBaseEmpty(self, instances=None):
        d = os.path.join(instances or self.instances, '_base')
        self.assertEqual([], os.listdir(d) if os.path.isdir(d) else [])

    def test_crafted_image_is_small_and_read_by_qemu_img(self):
        path = self.crafted(BIG)
        self.assertLess(os.path.getsize(path), 1 * MiB)
        out = self.run_cmd('qemu-img', 'info', '-f', 'qcow2',
                           '--output=json', path)
        self.assertIn('"virtual-size": %d' % BIG, out)
        # Reads fine: the same bytes at both ends of the disk.
        for off in ('0', str(BIG - 512)):
            out = self.run_cmd('qemu-io', '-r', '-f', 'qcow2', '-c',
                               'read -P 0xa5 %s 512' % off, path)
            self.assertNotIn('Pattern verification failed', out)

    def test_flavor_smaller_than_image_leaves_nothing(self):
        # The case: the boot is refused (m1.tiny: 1 GiB) and no
        # 2.1 GiB base stays behind; the refusal comes before converting.
        ami, _aki, _ari = self.add_triplet(root=self.crafted(BIG),
                                           root_format='qcow2')
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='fill-1', image_id=ami.id,
            flavor=spawn.Flavor('m1.tiny', 1, 256, 1))
        with self.assertRaises(exception.FlavorDiskTooSmall) as cm:
            spawn.prepare(self.conf, self.make_cache(), req,
                          virt_type='qemu')
        self.assertIn('fill-1', str(cm.exception))
        self.assertIn(ami.id, str(cm.exception))
        self.assertIn(str(BIG), str(cm.exception))
        self.assertBaseEmpty()
        self.assertFalse(os.path.exists(os.path.join(self.instances,
                                                     req.uuid)))

    def test_free_space_is_checked_before_converting(self):
        small = self.tmpfs('64m')
        meta = self.store.add('fill', self.crafted(512 * MiB), 'qcow2')
        c = cache_mod.ImageCache(small, self.store, self.conf)
        with self.assertRaises(exception.InsufficientSpace) as cm:
            c.fetch(meta.id)
        msg = str(cm.exception)
        self.assertIn(meta.id, msg)
        self.assertIn('needs %d bytes' % (512 * MiB), msg)
        self.assertBaseEmpty(small)
        # What fits is still fetched on the same filesystem.
        fits = self.store.add('fits', self.crafted(16 * MiB), 'qcow2')
        got = c.fetch(fits.id)
        self.assertEqual(16 * MiB, os.path.getsize(got.path))

    def test_raw_larger_than_free_space_is_not_downloaded(self):
        small = self.tmpfs('4m')
        ami, _aki, _ari = self.add_triplet()
        c = cache_mod.ImageCache(small, self.store, self.conf)
        with self.assertRaises(exception.InsufficientSpace) as cm:
            c.fetch(ami.id)
        self.assertIn(ami.id, str(cm.exception))
        self.assertBaseEmpty(small)

    def test_virtual_size_cap(self):
        self.conf.set_override('max_image_virtual_size_gb', 2, 'amiboot')
        meta = self.store.add('fill', self.crafted(BIG), 'qcow2')
        with self.assertRaises(exception.ImageTooLarge) as cm:
            self.make_cache().fetch(meta.id)
        self.assertIn(meta.id, str(cm.exception))
        self.assertBaseEmpty()

    def test_zeros_become_holes(self):
        # The same trick with a cluster of zeros: the raw base is sparse.
        meta = self.store.add('zeros', self.crafted(1 * GiB, b'\0'),
                              'qcow2')
        got = self.make_cache().fetch(meta.id)
        st = os.stat(got.path)
        self.assertEqual(1 * GiB, st.st_size)
        self.assertLess(st.st_blocks * 512, 1 * MiB)
        self.assertEqual([os.path.basename(got.path)],
                         self.base_dir_entries())
