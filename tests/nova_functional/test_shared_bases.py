"""Which backing files the driver states as unlabelled shared bases.

Real qcow2 disks (qemu-img) and the real XML function of the driver; only
a raw file directly in the image cache directory qualifies.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

from lxml import etree

from nova_amiboot.virt import driver

XML = '''<domain type="qemu"><name>x</name><devices>
<disk type="file" device="disk"><driver name="qemu" type="qcow2"/>
<source file="%s"/><target dev="vda" bus="virtio"/></disk>
</devices></domain>'''


class TestSharedBases(unittest.TestCase):

    def setUp(self):
        self.top = tempfile.mkdtemp(prefix='amiboot-shared-')
        self.addCleanup(shutil.rmtree, self.top)
        self.base_dir = os.path.join(self.top, '_base')
        os.makedirs(self.base_dir)
        os.makedirs(os.path.join(self.top, 'inst'))

    def _file(self, path, fmt='raw'):
        subprocess.run(['qemu-img', 'create', '-q', '-f', fmt, path, '1M'],
                       check=True)
        return path

    def _disk(self, backing, fmt='raw'):
        disk = os.path.join(self.top, 'inst', 'disk')
        if os.path.exists(disk):
            os.unlink(disk)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F',
                        fmt, '-b', backing, '-u', disk, '1M'], check=True)
        return disk

    def _stated(self, disk):
        xml = driver.shared_bases_unlabelled(XML % disk, self.base_dir)
        store = etree.fromstring(xml.encode()).find(
            'devices/disk/backingStore')
        if store is None:
            return None
        self.assertEqual('no', store.find('source/seclabel').get('relabel'))
        return store.find('source').get('file')

    def test_raw_base_in_the_cache_dir(self):
        base = self._file(os.path.join(self.base_dir, 'a' * 40))
        self.assertEqual(base, self._stated(self._disk(base)))

    def test_base_aged_out_is_still_stated(self):
        # A hard reboot writes the XML before the base is fetched again.
        base = os.path.join(self.base_dir, 'b' * 40)
        self.assertEqual(base, self._stated(self._disk(base)))

    def test_not_a_shared_base(self):
        elsewhere = self._file(os.path.join(self.top, 'raw'))
        link = os.path.join(self.base_dir, 'c' * 40)
        os.symlink(elsewhere, link)
        qcow = self._file(os.path.join(self.base_dir, 'd' * 40), 'qcow2')
        deeper = os.path.join(self.base_dir, 'sub')
        os.makedirs(deeper)
        nested = self._file(os.path.join(deeper, 'e' * 40))
        for backing, fmt in ((elsewhere, 'raw'), (link, 'raw'),
                             (qcow, 'qcow2'), (nested, 'raw'),
                             (self.base_dir + '/../raw', 'raw'),
                             (deeper, 'raw')):
            self.assertIsNone(self._stated(self._disk(backing, fmt)),
                              backing)

    def test_disk_without_backing_file(self):
        disk = self._file(os.path.join(self.top, 'inst', 'disk'), 'qcow2')
        self.assertIsNone(self._stated(disk))

    def test_live_snapshot_copy_destination(self):
        # nova's live snapshot mirrors the disk into <snapshot>.delta over
        # the same base; the copy's destination states that chain.
        base = self._file(os.path.join(self.base_dir, 'f' * 40))
        delta = os.path.join(self.top, 'snap.delta')
        disk = etree.fromstring(driver.copy_destination_xml(delta, base))
        self.assertEqual(('file', 'qcow2', delta),
                         (disk.get('type'), disk.find('driver').get('type'),
                          disk.find('source').get('file')))
        store = disk.find('backingStore')
        self.assertEqual('raw', store.find('format').get('type'))
        self.assertEqual(base, store.find('source').get('file'))
        self.assertEqual(('dac', 'no'),
                         (store.find('source/seclabel').get('model'),
                          store.find('source/seclabel').get('relabel')))
        self.assertEqual(0, len(store.find('backingStore')))
