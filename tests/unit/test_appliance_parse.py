"""The appliance's answers (its console) are the image's words: parsed
with grammars, anything off refused; the local store's copy stays sparse."""

import base64
import os
import tempfile
import unittest

from nova_amiboot import exception
from nova_amiboot.imagetools import appliance
from nova_amiboot.local import store


def line(key, value):
    return 'AMIBOOT-APPLIANCE %s %s' % (
        key, base64.b64encode(value.encode()).decode())


def console(*lines):
    return '\r\n'.join(['[ 0.1] kernel noise', appliance.BEGIN] +
                       list(lines) + [appliance.END, ''])


GOOD = [line('dev1', '/dev/vda4'), line('type1', 'xfs'),
        line('uuid1', '9e1c2d4a-5b6f-4a8e-b1c2-3d4e5f607182'),
        line('size1', '629145600'), line('mount1', 'ok'),
        line('root1', '/'), line('os1', 'PRETTY_NAME="Rocky Linux 9.4"'),
        line('boot', 'merged'),
        line('dropped', 'UUID=1234 /boot xfs defaults 0 0'),
        line('fstype', 'xfs'),
        line('uuid', '9e1c2d4a-5b6f-4a8e-b1c2-3d4e5f607182'),
        line('subvol', ''), line('size', '629145600'),
        line('result', 'ok')]


class ParseTest(unittest.TestCase):

    def test_extract_answer(self):
        res = appliance.Extracted()
        (dev,) = appliance.parse(console(*GOOD), 'img', res)
        self.assertEqual(('/dev/vda4', 'xfs', 4, 629145600, 'Rocky Linux 9.4'),
                         (dev.path, dev.fstype, dev.partition, dev.size,
                          dev.os_name))
        self.assertTrue(dev.root)
        self.assertEqual(('ok', 'xfs', 629145600, 'merged', ''),
                         (res.result, res.fstype, res.size, res.boot,
                          res.subvol))
        self.assertEqual(['UUID=1234 /boot xfs defaults 0 0'], res.dropped)

    def test_forged_lines_are_refused(self):
        forged = [
            ('fstype', 'ntfs'), ('uuid', 'x y'), ('size', '-1'),
            ('size', '1' * 21), ('subvol', '../../etc'), ('subvol', '/a/../b'),
            ('result', 'ok; rm -rf /'), ('boot', 'maybe'),
            ('dropped', 'line\nwith newline'), ('dropped', 'x' * 600),
            ('removed', '/etc/shadow'), ('what', 'ever'),
        ]
        for key, value in forged:
            with self.subTest(key=key, value=value[:20]):
                text = console(*(GOOD[:-1] + [line(key, value)]))
                with self.assertRaises(exception.InvalidImage) as cm:
                    appliance.parse(text, 'img-1', appliance.Extracted())
                self.assertIn('img-1', str(cm.exception))

    def test_top_level_lines_only_in_a_task(self):
        # The probe has no top-level lines: one is out of grammar there.
        with self.assertRaises(exception.InvalidImage):
            appliance.parse(console(*GOOD), 'img')

    def test_a_line_that_is_not_base64_or_not_text(self):
        for bad in ('AMIBOOT-APPLIANCE dev1 !!!',
                    'AMIBOOT-APPLIANCE dev1 %s' % base64.b64encode(
                        b'\xff\xfe').decode()):
            with self.assertRaises(exception.InvalidImage):
                appliance.parse(console(bad), 'img')

    def test_removed_names_only_what_clean_takes_out(self):
        res = appliance.Extracted()
        appliance.parse(console(*(GOOD[:-1] + [
            line('removed', '/etc/hostname'),
            line('removed', '/etc/hostname'),
            line('removed', '/var/lib/amiboot/provisioned'),
            GOOD[-1]])), 'img', res)
        self.assertEqual(['/etc/hostname', '/var/lib/amiboot/provisioned'],
                         res.removed)

    def test_find_root_names_unreadable_and_several(self):
        luks = appliance.Device('/dev/vda3', fstype='crypto_LUKS')
        with self.assertRaises(exception.InvalidImage) as cm:
            appliance.find_root([luks], 'enc.qcow2')
        self.assertIn('enc.qcow2', str(cm.exception))
        self.assertIn('/dev/vda3 (LUKS-encrypted)', str(cm.exception))
        two = [appliance.Device('/dev/vda3', fstype='btrfs',
                                subvolumes=['root', 'snap/1']),
               appliance.Device('/dev/vda4', fstype='xfs', root=True)]
        with self.assertRaises(exception.InvalidImage) as cm:
            appliance.find_root(two, 'img')
        self.assertIn('several root filesystems', str(cm.exception))
        # A btrfs whose other device is on another disk does not mount.
        half = [appliance.Device('/dev/vda2', fstype='vfat'),
                appliance.Device('/dev/vda3', fstype='btrfs')]
        with self.assertRaises(exception.InvalidImage) as cm:
            appliance.find_root(half, 'img')
        self.assertIn('/dev/vda2 (vfat), /dev/vda3 (btrfs: did not mount, '
                      'damaged or spread over several disks)',
                      str(cm.exception))
        one = [appliance.Device('/dev/vda3', fstype='btrfs',
                                subvolumes=['root'])]
        self.assertIs(one[0], appliance.find_root(one, 'img'))


class SparseCopyTest(unittest.TestCase):

    def test_holes_and_zero_chunks_stay_holes(self):
        with tempfile.TemporaryDirectory(dir='/var/tmp') as d:
            src, dst = os.path.join(d, 'src'), os.path.join(d, 'dst')
            size = 64 * store.CHUNK + 123
            with open(src, 'wb') as f:
                f.truncate(size)
                f.seek(3 * store.CHUNK + 7)
                f.write(b'data')
                f.seek(10 * store.CHUNK)
                f.write(bytes(4 * store.CHUNK))    # zeros, allocated
                f.seek(size - 3)
                f.write(b'end')
            seen = []
            store._copy(src, dst, lambda *a: seen.append(a[1]), 'x')
            with open(src, 'rb') as a, open(dst, 'rb') as b:
                self.assertEqual(a.read(), b.read())
            self.assertEqual(size, os.path.getsize(dst))
            self.assertLessEqual(os.stat(dst).st_blocks * 512,
                                 2 * store.CHUNK + 8192)
            self.assertEqual(size, seen[-1])
