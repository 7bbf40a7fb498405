"""An AMI the pipeline cannot serve is refused when fetched; nothing stays.

Real qemu-img, qemu-io, blkid, mkfs.xfs and e2fsprogs, through the real
cache. A qcow2 "AMI" holding no filesystem, with a virtual size larger
than the instances filesystem's free space, is refused for what it holds
(not for the space its conversion would need): the check runs before
anything is converted. A raw AMI with no filesystem, or a filesystem the
pipeline does not serve, is refused before it enters _base; an XFS AMI is
served (booted; grown in the guest).
"""

import os
import subprocess

from nova_amiboot import exception
from nova_amiboot import grow
from tests.functional import base


class TestRefusedAMI(base.RealToolsTestCase):

    def fetch(self, path, fmt):
        _ami, aki, ari = self.add_triplet()
        ami = self.store.add('ami-' + os.path.basename(path), path, fmt,
                             {'kernel_id': aki.id, 'ramdisk_id': ari.id})
        return ami, self.make_cache().fetch(ami.id, 'ami')

    def assertRefused(self, path, fmt, what):
        _ami, aki, ari = self.add_triplet()
        ami = self.store.add('ami-' + os.path.basename(path), path, fmt,
                             {'kernel_id': aki.id, 'ramdisk_id': ari.id})
        with self.assertRaises(exception.InvalidImage) as cm:
            self.make_cache().fetch(ami.id, 'ami')
        msg = str(cm.exception)
        self.assertNotIn('\n', msg)
        self.assertIn(ami.id, msg)
        self.assertIn(what, msg)
        # Nothing of it in _base: no base, no partial, no head probe.
        self.assertEqual([], self.base_dir_entries())
        return msg

    def test_qcow2_without_filesystem_refused_before_converting(self):
        st = os.statvfs(self.instances)
        free = st.f_bavail * st.f_frsize
        # Larger than the free space: a conversion (or the space check
        # before it) would be the error if the probe came later.
        vsize = (free // 2 ** 30 + 8) * 2 ** 30
        self.conf.set_override('max_image_virtual_size_gb',
                               vsize // 2 ** 30 + 1, 'amiboot')
        img = self.scratch('nofs.qcow2')
        self.run_cmd('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                     'cluster_size=2M', img, str(vsize))
        # Data, but no filesystem: 'A's over the first 4 MiB.
        self.run_cmd('qemu-io', '-f', 'qcow2', '-c',
                     'write -P 0x41 0 4M', img)
        msg = self.assertRefused(img, 'qcow2', 'no filesystem')
        self.assertIn('ext2, ext3, ext4, xfs, btrfs', msg)

    def test_raw_without_filesystem_refused(self):
        img = self.scratch('zeros.img')
        with open(img, 'wb') as f:
            f.write(b'\x5a' * 1024 * 1024)
            f.truncate(64 * 1024 * 1024)
        self.assertRefused(img, 'ami', 'no filesystem')

    def test_unserved_filesystem_refused(self):
        img = self.scratch('vfat.img')
        with open(img, 'wb') as f:
            f.truncate(64 * 1024 * 1024)
        subprocess.run(['mkfs.vfat', img], check=True, capture_output=True)
        self.assertRefused(img, 'ami', 'filesystem vfat')

    def test_xfs_ami_is_served(self):
        img = self.scratch('xfs.img')
        with open(img, 'wb') as f:
            f.truncate(320 * 1024 * 1024)
        subprocess.run(['mkfs.xfs', '-q', img], check=True,
                       capture_output=True)
        ami, cached = self.fetch(img, 'ami')
        self.assertTrue(os.path.exists(cached.path))
        self.assertEqual('xfs', grow.known_facts(cached.path)['fstype'])

    def test_ext4_base_checked_before_it_enters_the_cache(self):
        ami, cached = self.fetch(self.testbed['root'], 'ami')
        facts = grow.known_facts(cached.path)
        self.assertEqual('ext4', facts['fstype'])
        self.assertTrue(facts['clean'])
