"""``image build-ami --fs xfs|btrfs``: AMIs built without mounting, booted.

The test bed's reporting tree becomes an XFS and a btrfs AMI through
``imagetools.ami.build_ami`` (a protofile for mkfs.xfs, ``mkfs.btrfs
--rootdir --shrink``); each is booted in guest mode on 1 GiB with the test
bed's ARI and a layer (key, hostname, grow) and checked from inside the
guest: its root is that filesystem, grown to the disk, keyed. Trees the
protofile cannot express are refused with the reason, leaving nothing.
"""

import os
import shutil
import socket
import tempfile

from nova_amiboot import exception
from nova_amiboot.imagetools import ami as ami_mod
from nova_amiboot import inject
from nova_amiboot import layer
from tests.functional import test_provision_guest as tpg
from tests.testbed import boot
from tests.testbed import build

GiB = 1 << 30
MiB = 1 << 20


class BuildAmiFsTest(tpg.GuestBootCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='amiboot-test-build-',
                                    dir='/var/tmp')
        # QEMU (another user) reads the AMI as the overlay's backing file.
        os.chmod(self.tmp, 0o755)
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def tree(self):
        tree = os.path.join(self.tmp, 'tree')
        os.makedirs(tree)
        build._populate_rootfs(tree)
        return tree

    def _built_and_booted(self, fs):
        tree = self.tree()
        os.chown(os.path.join(tree, 'etc/shadow'), 0, 42)
        out = os.path.join(self.tmp, 'ami-%s.img' % fs)
        label = 'amiroot' if fs == 'xfs' else None
        size = ami_mod.build_ami(tree, out, label=label, fstype=fs)
        self.assertEqual(os.path.getsize(out), size)
        self.assertEqual([os.path.basename(out), 'tree'],
                         sorted(os.listdir(self.tmp)))
        # Sparse: only what mkfs wrote takes room.
        allocated = os.stat(out).st_blocks * 512
        self.assertLess(allocated, size)
        spec = layer.Spec(instance='inst-build-' + fs,
                          ssh_keys=[tpg._key()], hostname='built-' + fs,
                          grow=True)
        with boot.instance_dir() as d:
            ramdisk = layer.write_instance_ramdisk(
                self.testbed['ramdisk'], os.path.join(d, 'ramdisk'), spec)
            disk = boot.overlay(out, os.path.join(d, 'disk'), 1)
            rep, text = boot.boot(
                self.host, 'amiboot-test-%s-%s' % (fs, os.getpid()),
                self.testbed['kernel'], ramdisk, disk, d,
                'root=/dev/vda console=ttyS0 ro amiboot.report=/tmp,'
                '/etc/shadow')
        self.assertEqual(fs, rep['root_dev'].split()[1], text)
        total_kb = int(rep['root_df_kb'].split()[0])
        self.assertGreater(total_kb * 1024, GiB - tpg.OVERHEAD[fs](GiB),
                           text)
        self.assertEqual('%s\n%s\n' % (inject.KEY_MARKER, tpg._key()),
                         rep['authorized_keys'])
        self.assertEqual('600 0 0 regular file', rep['authorized_keys_stat'])
        self.assertEqual('built-' + fs, rep['hostname'])
        # Modes and owners as in the tree, /tmp's sticky bit too.
        self.assertEqual('1777 0 0 directory', rep['stat:/tmp'])
        self.assertEqual('640 0 42 regular file', rep['stat:/etc/shadow'])
        return size, allocated

    def test_xfs(self):
        size, allocated = self._built_and_booted('xfs')
        # XFS cannot shrink: the image keeps mkfs.xfs's minimum.
        self.assertGreaterEqual(size, ami_mod.XFS_MIN_BYTES)
        # (mkfs writes the log, the metadata and the files.)
        self.assertLess(allocated, size // 3)

    def test_btrfs(self):
        size, _allocated = self._built_and_booted('btrfs')
        # --shrink: the image is its contents, below the starting size.
        self.assertLess(size, ami_mod.BTRFS_MIN_BYTES)

    def _refused(self, tree, fs, **kw):
        out = os.path.join(self.tmp, 'refused.img')
        with self.assertRaises(exception.InvalidImage) as cm:
            ami_mod.build_ami(tree, out, fstype=fs, **kw)
        self.assertIn(out, str(cm.exception))
        self.assertNotIn('\n', str(cm.exception))
        # Nothing half-written: no image, no .part, no protofile.
        self.assertEqual(['tree'], sorted(os.listdir(self.tmp)))
        return str(cm.exception)

    def test_refusals(self):
        tree = self.tree()
        with open(os.path.join(tree, 'etc/a name'), 'w') as f:
            f.write('x')
        self.assertIn("'a name' cannot go into an XFS protofile",
                      self._refused(tree, 'xfs', label='amiroot'))
        os.unlink(os.path.join(tree, 'etc/a name'))
        # "$" would end /etc early in the protofile: later entries would
        # land in the parent directory.
        for name in ('$', 'bell\x07', 'bad\udcff'):
            path = os.path.join(tree, 'etc', name)
            with open(path, 'w') as f:
                f.write('x')
            self.assertIn('cannot go into an XFS protofile',
                          self._refused(tree, 'xfs', label='amiroot'))
            os.unlink(path)
        os.symlink('/a target', os.path.join(tree, 'etc/link'))
        self.assertIn('link target', self._refused(tree, 'xfs',
                                                   label='amiroot'))
        os.unlink(os.path.join(tree, 'etc/link'))
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.bind(os.path.join(tree, 'run/sock'))
        self.assertIn('socket', self._refused(tree, 'xfs', label='amiroot'))
        os.unlink(os.path.join(tree, 'run/sock'))
        self.assertIn('at most 12 bytes', self._refused(tree, 'xfs'))
        self.assertIn('zfs', self._refused(tree, 'zfs'))

    def test_protofile_keeps_owners_modes_and_nodes(self):
        tree = self.tree()
        path = os.path.join(tree, 'etc/shadow')
        os.chown(path, 0, 42)
        os.chmod(os.path.join(tree, 'bin/busybox'), 0o4755)
        os.mknod(os.path.join(tree, 'dev/null'), 0o20666,
                 os.makedev(1, 3))
        os.chmod(os.path.join(tree, 'dev/null'), 0o666)
        os.mkfifo(os.path.join(tree, 'run/fifo'), 0o600)
        proto = ami_mod.xfs_protofile(tree).splitlines()
        self.assertEqual(['/dev/null', '0 0', 'd--755 0 0'], proto[:3])
        self.assertIn('shadow ---640 0 42 %s' % path, proto)
        self.assertIn('busybox -u-755 0 0 %s'
                      % os.path.join(tree, 'bin/busybox'), proto)
        self.assertIn('null c--666 0 0 1 3', proto)
        self.assertIn('fifo p--600 0 0', proto)
        self.assertIn('sh l--777 0 0 busybox', proto)
