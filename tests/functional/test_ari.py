"""The ARI builder against the real Debian cloud kernel package."""

import hashlib
import os
import shutil
import subprocess
import tempfile
import unittest

from nova_amiboot.imagetools import ari
from nova_amiboot import exception
from tests.testbed import build


def _sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


class TestARIBuilder(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.deb = build.kernel_package()
        cls._tmp = tempfile.TemporaryDirectory()
        cls.kdir = ari.unpack_kernel_package(cls.deb, cls._tmp.name + '/k')
        cls.mdir = ari.find_modules_dir(cls.kdir)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_load_order_follows_modinfo_depends(self):
        index = ari.ModuleIndex(self.mdir)
        order = index.load_order(ari.DEFAULT_MODULES)
        for name in order:
            for dep in index.depends(name):
                if dep not in index.builtin:
                    self.assertLess(order.index(dep), order.index(name),
                                    "%s before %s" % (dep, name))
        for name in ('virtio_ring', 'virtio', 'virtio_pci',
                     'virtio_pci_modern_dev', 'virtio_pci_legacy_dev',
                     'virtio_blk', 'failover', 'net_failover',
                     'virtio_net'):
            self.assertIn(name, order)
        # ext4 is built into this kernel: nothing to load for it.
        self.assertIn('ext4', index.builtin)
        self.assertNotIn('ext4', index.load_order(['ext4', 'virtio_pci']))

    def test_archive_is_reproducible_and_complete(self):
        a, b = self.tmp + '/a.img', self.tmp + '/b.img'
        order = ari.build_ari(a, kernel_package=self.deb)
        ari.build_ari(b, modules_dir=self.mdir)
        self.assertEqual(_sha(a), _sha(b))
        listing = subprocess.run(
            'zcat %s | cpio -t --quiet' % a, shell=True, check=True,
            capture_output=True, text=True).stdout.split()
        self.assertIn('init', listing)
        self.assertIn('bin/busybox', listing)
        for name in order:
            self.assertIn('lib/modules/%s.ko' % name, listing)
        modules = subprocess.run(
            'zcat %s | cpio -i --quiet --to-stdout etc/amiboot-ari/modules'
            % a, shell=True, check=True, capture_output=True,
            text=True).stdout.split()
        self.assertEqual(order, modules)

    def test_unknown_module_is_named(self):
        with self.assertRaises(exception.ModuleNotFound) as cm:
            ari.build_ari(self.tmp + '/x.img', modules_dir=self.mdir,
                          modules=['virtio_blk', 'no_such_driver'])
        self.assertIn('no_such_driver', str(cm.exception))
        self.assertFalse(os.path.exists(self.tmp + '/x.img'))

    def test_bad_sources(self):
        self.assertRaises(exception.ARIBuildFailed, ari.build_ari,
                          self.tmp + '/x.img')
        self.assertRaises(exception.ARIBuildFailed, ari.build_ari,
                          self.tmp + '/x.img',
                          kernel_package=self.tmp + '/missing.deb')
        self.assertEqual([], os.listdir(self.tmp))

    def test_command_line(self):
        out = self.tmp + '/cli.img'
        from nova_amiboot.cli import build_ari
        self.assertEqual(0, build_ari.main(['--modules-dir', self.mdir,
                                            '--module', 'virtio_blk', out]))
        listing = subprocess.run(
            'zcat %s | cpio -t --quiet' % out, shell=True, check=True,
            capture_output=True, text=True).stdout.split()
        self.assertIn('lib/modules/virtio_blk.ko', listing)
        self.assertNotIn('lib/modules/virtio_net.ko', listing)
        self.assertEqual(1, build_ari.main(['--modules-dir', self.tmp,
                                            '--module', 'virtio_blk', out]))
