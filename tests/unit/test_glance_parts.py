"""Glance upload and download carry an ARI's amiboot_provision."""

import os
import tempfile
import unittest
from unittest import mock

from nova_amiboot import images
from nova_amiboot.imagetools import glance


def _meta(image_id, fmt, **props):
    return images.ImageMeta(id=image_id, name='n-' + image_id,
                            disk_format=fmt, container_format=fmt, size=1,
                            os_hash_algo='sha512', os_hash_value='h-' +
                            image_id, properties=props)


class UploadTest(unittest.TestCase):

    def test_part_properties_go_along(self):
        with tempfile.TemporaryDirectory() as d:
            store = mock.Mock(path=d)
            parts = {'k1': _meta('k1', 'aki'),
                     'r1': _meta('r1', 'ari', amiboot_provision='guest')}
            store.get_meta.side_effect = parts.get
            ami = _meta('a1', 'ami', kernel_id='k1', ramdisk_id='r1',
                        os_command_line='root=/dev/vda')
            for i in ('k1', 'r1', 'a1'):
                with open(os.path.join(d, i), 'wb') as f:
                    f.write(b'x')
            conn = mock.Mock()
            conn.image.images.return_value = []
            made = {}

            def create_image(name, **kw):
                made[kw['disk_format']] = kw
                return mock.Mock(id='g-' + kw['disk_format'])
            conn.image.create_image.side_effect = create_image
            hashes = {'g-aki': 'h-k1', 'g-ari': 'h-r1', 'g-ami': 'h-a1'}
            conn.image.get.side_effect = lambda url: mock.Mock(
                json=lambda: {'os_hash_value': hashes[url.split('/')[-1]]})
            res = glance.upload(conn, store, ami)
        self.assertEqual('g-ari', res['ari'])
        self.assertEqual('guest', made['ari']['amiboot_provision'])
        self.assertNotIn('amiboot_provision', made['aki'])
        self.assertEqual('g-ari', made['ami']['ramdisk_id'])
        self.assertEqual('root=/dev/vda', made['ami']['os_command_line'])


class DownloadTest(unittest.TestCase):

    def test_ari_declaration_comes_back(self):
        conn = mock.Mock()
        conn.image.find_image.return_value = mock.Mock(id='g-ami')
        raw = {'g-ami': {'name': 'deb', 'kernel_id': 'g-aki',
                         'ramdisk_id': 'g-ari', 'os_command_line': 'x'},
               'g-ari': {'amiboot_provision': 'guest', 'name': 'r'}}
        conn.image.get.side_effect = lambda url: mock.Mock(
            json=lambda: raw.get(url.split('/')[-1], {}))
        conn.image.get_image.side_effect = lambda gid: mock.Mock(
            name=gid, size=1)
        cloud = mock.Mock()
        with tempfile.TemporaryDirectory() as d:
            cloud.state_dir = d
            glance.download(conn, cloud, 'deb')
        _args, kw = cloud.import_triplet.call_args
        self.assertEqual({'amiboot_provision': 'guest'},
                         kw['ramdisk_properties'])
