"""cache.ImageCache.fetch with an in-memory image source.

The source stands in for Glance (no image service here); the checks,
sandboxed qemu-img and files are real.
"""

import hashlib
import os
import subprocess
import tempfile
import unittest

from oslo_config import cfg

from nova_amiboot import cache
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import exception
from nova_amiboot import images


class MemSource(images.ImageSource):
    # Stand-in for Glance: images held in memory.
    def __init__(self):
        self.images = {}

    def add(self, image_id, data, disk_format, checksum=None):
        self.images[image_id] = (images.ImageMeta(
            id=image_id, name=image_id, disk_format=disk_format,
            container_format=disk_format, size=len(data),
            checksum=checksum or hashlib.md5(data).hexdigest()), data)

    def get_meta(self, image_id):
        if image_id not in self.images:
            raise exception.ImageNotFound(image=image_id, source='memory')
        return self.images[image_id][0]

    def download(self, image_id, fileobj):
        fileobj.write(self.images[image_id][1])


class FetchTest(unittest.TestCase):

    def setUp(self):
        conf = cfg.ConfigOpts()
        amiboot_conf.register_opts(conf)
        conf([])
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.src = MemSource()
        self.cache = cache.ImageCache(tmp.name, self.src, conf)

    def test_fetch_raw(self):
        data = b'\x7fELF' + b'k' * 8188
        self.src.add('aki-1', data, 'aki')
        got = self.cache.fetch('aki-1', expected_format='aki')
        self.assertEqual(self.cache.path_for('aki-1'), got.path)
        with open(got.path, 'rb') as f:
            self.assertEqual(data, f.read())
        self.assertEqual(cache.base_name('aki-1'),
                         os.path.basename(got.path))

    def test_checksum_mismatch_leaves_nothing(self):
        self.src.add('aki-2', b'k' * 8192, 'aki', checksum='0' * 32)
        with self.assertRaises(exception.ImageChecksumMismatch) as cm:
            self.cache.fetch('aki-2', expected_format='aki')
        self.assertIn('aki-2', str(cm.exception))
        self.assertEqual([], os.listdir(self.cache.base_dir))

    def test_wrong_part_refused(self):
        self.src.add('ami-3', b'\0' * 8192, 'ami')
        with self.assertRaises(exception.AmibootException) as cm:
            self.cache.fetch('ami-3', expected_format='aki')
        self.assertIn('ami-3', str(cm.exception))
        self.assertEqual([], os.listdir(self.cache.base_dir))

    def test_not_found(self):
        with self.assertRaises(exception.ImageNotFound) as cm:
            self.cache.fetch('nope')
        self.assertIn('nope', str(cm.exception))

    def test_adopt_a_copy_of_an_image_gone_from_the_source(self):
        data = b'\x7fELF' + b'k' * 8188

        def write(path):
            with open(path, 'wb') as f:
                f.write(data)
        got = self.cache.adopt('aki-6', 'aki', write)
        self.assertEqual(self.cache.path_for('aki-6'), got.path)
        self.assertFalse(got.fetched)
        with open(got.path, 'rb') as f:
            self.assertEqual(data, f.read())
        self.assertEqual(0o644, os.stat(got.path).st_mode & 0o7777)
        self.assertEqual([os.path.basename(got.path)],
                         os.listdir(self.cache.base_dir))
        # There now: used as it is, the copy not asked for again.
        self.assertEqual(got.path, self.cache.adopt(
            'aki-6', 'aki', lambda path: self.fail('copied again')).path)

    def test_adopt_refuses_an_unsafe_copy_leaving_nothing(self):
        # (qemu-img create with data_file_raw=on truncates and writes the
        # data file: a scratch file here, never a host file.)
        data_file = os.path.join(self.cache.base_dir, '..', 'victim')
        with open(data_file, 'wb') as f:
            f.write(b'precious\n')

        def write(path):
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                            '-o', 'data_file=%s,data_file_raw=on'
                            % data_file, path, '1M'], check=True,
                           capture_output=True)
        self.assertRaises(exception.AmibootException, self.cache.adopt,
                          'ari-7', 'ari', write)
        self.assertEqual([], os.listdir(self.cache.base_dir))
