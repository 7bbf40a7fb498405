"""safety.inspect: the header checks on images, with real small images."""

import os
import subprocess
import tempfile
import unittest

from oslo_config import cfg

from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import exception
from nova_amiboot import safety


def qemu_img(*args):
    subprocess.run(('qemu-img',) + args, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class InspectTest(unittest.TestCase):

    def setUp(self):
        self.conf = cfg.ConfigOpts()
        amiboot_conf.register_opts(self.conf)
        self.conf([])
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.d = self.tmp.name

    def path(self, name):
        return os.path.join(self.d, name)

    def test_raw_ok(self):
        p = self.path('raw')
        with open(p, 'wb') as f:
            f.truncate(1024 * 1024)
        info = safety.inspect(p, 'raw', 'img-raw', self.conf)
        self.assertEqual('raw', info.format)
        self.assertEqual(1024 * 1024, info.virtual_size)

    def test_qcow2_ok(self):
        p = self.path('q')
        qemu_img('create', '-f', 'qcow2', p, '2M')
        info = safety.inspect(p, 'qcow2', 'img-q', self.conf)
        self.assertEqual('qcow2', info.format)
        self.assertEqual(2 * 1024 * 1024, info.virtual_size)

    def test_backing_file_refused(self):
        base = self.path('base')
        top = self.path('top')
        qemu_img('create', '-f', 'raw', base, '1M')
        qemu_img('create', '-f', 'qcow2', '-F', 'raw', '-b', base, top)
        with self.assertRaises(exception.UnsafeImage) as cm:
            safety.inspect(top, 'qcow2', 'img-backed', self.conf)
        self.assertIn('img-backed', str(cm.exception))

    def test_data_file_refused(self):
        top = self.path('top')
        qemu_img('create', '-f', 'qcow2', '-o',
                 'data_file=%s' % self.path('data'), top, '1M')
        with self.assertRaises(exception.UnsafeImage) as cm:
            safety.inspect(top, 'qcow2', 'img-df', self.conf)
        self.assertIn('img-df', str(cm.exception))

    def test_qcow2_claimed_raw_refused(self):
        p = self.path('q')
        qemu_img('create', '-f', 'qcow2', p, '1M')
        for claimed in ('raw', 'ami'):
            with self.subTest(claimed=claimed):
                with self.assertRaises(exception.ImageFormatMismatch) as cm:
                    safety.inspect(p, claimed, 'img-mm', self.conf)
                self.assertIn('img-mm', str(cm.exception))

    def test_unknown_disk_format_refused(self):
        p = self.path('raw')
        with open(p, 'wb') as f:
            f.truncate(4096)
        for claimed in ('vmdk', 'iso', 'vhd', ''):
            with self.subTest(claimed=claimed):
                with self.assertRaises(exception.InvalidImage) as cm:
                    safety.inspect(p, claimed, 'img-fmt', self.conf)
                self.assertIn('img-fmt', str(cm.exception))

    def test_too_large_refused(self):
        self.conf.set_override('max_image_virtual_size_gb', 1, 'amiboot')
        p = self.path('q')
        qemu_img('create', '-f', 'qcow2', p, '2G')
        with self.assertRaises(exception.ImageTooLarge) as cm:
            safety.inspect(p, 'qcow2', 'img-big', self.conf)
        self.assertIn('img-big', str(cm.exception))

    def test_recheck_catches_changed_base(self):
        p = self.path('b')
        with open(p, 'wb') as f:
            f.truncate(4096)
        safety.recheck(p, 'ami', 'img-b')
        qemu_img('create', '-f', 'qcow2', p, '1M')
        with self.assertRaises(exception.ImageFormatMismatch) as cm:
            safety.recheck(p, 'ami', 'img-b')
        self.assertIn('img-b', str(cm.exception))
