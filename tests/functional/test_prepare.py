"""Disk, grow and injection through the spawn pipeline on real tools."""

import os
import shutil
import subprocess
import tempfile
import uuid

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import grow
from nova_amiboot import inject
from nova_amiboot import spawn
from tests.functional import base

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAmiboot test@amiboot'
GiB = 1024 ** 3


class TestPrepare(base.RealToolsTestCase):

    def request(self, image_id, root_gb=2, **kw):
        kw.setdefault('key', KEY)
        return spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='vm-%s' % uuid.uuid4().hex[:6],
            image_id=image_id,
            flavor=spawn.Flavor('t', root_gb, 256, 1), **kw)

    def prepare(self, req, **kw):
        return spawn.prepare(self.conf, self.make_cache(), req,
                             virt_type='qemu', **kw)

    def guest(self, prepared):
        """Attach the prepared disk again and look at it as e2fsprogs do."""
        return attach.attached(prepared.disk, prepared.disk_format,
                               self.conf)

    def custom_ami(self, populate):
        tree = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tree)
        for d in ('etc', 'root', 'sbin'):
            os.makedirs(os.path.join(tree, d))
        with open(os.path.join(tree, 'etc/shadow'), 'w') as f:
            f.write('root:*:19000:0:99999:7:::\ndaemon:*:19000::::::\n')
        os.chmod(os.path.join(tree, 'etc/shadow'), 0o640)
        populate(tree)
        return self.mkfs(tree, self.scratch('custom-%s.img'
                                            % uuid.uuid4().hex[:6]))

    def test_overlay_grown_and_key_injected(self):
        ami, _aki, _ari = self.add_triplet()
        p = self.prepare(self.request(ami.id, root_gb=3,
                                      hostname='web-1.example.org'))
        info = self.run_cmd('qemu-img', 'info', '-U', p.disk)
        self.assertIn('file format: qcow2', info)
        self.assertIn('backing file format: raw', info)
        self.assertIn(os.path.join(self.instances, '_base'), info)
        self.assertIn('virtual size: 3 GiB', info)
        # The overlay holds only metadata and the injected files.
        self.assertLess(os.stat(p.disk).st_blocks * 512, 8 * 1024 ** 2)
        with self.guest(p) as tg:
            out = tg.run('dumpe2fs', ['-h'])[0]
            fields = dict(line.split(':', 1) for line in out.splitlines()
                          if ':' in line)
            fs_bytes = int(fields['Block count']) * int(fields['Block size'])
            self.assertEqual(3 * GiB, fs_bytes)
            fs = inject.GuestFS(tg)
            self.assertEqual((0o600, 0, 0),
                             fs.stat('/root/.ssh/authorized_keys'))
            self.assertEqual((0o700, 0, 0), fs.stat('/root/.ssh'))
            keys = fs.read('/root/.ssh/authorized_keys').decode()
            self.assertEqual(inject.KEY_MARKER + '\n' + KEY + '\n', keys)
            self.assertEqual(b'web-1\n', fs.read('/etc/hostname'))
            self.assertFalse(inject.inject_key(fs, KEY))
            self.assertEqual(keys.encode(),
                             fs.read('/root/.ssh/authorized_keys'))
        # Kernel and ramdisk are the instance's own copies of the cached
        # bases (libvirt chowns them to the QEMU user while it runs).
        c = self.make_cache()
        for part, image_id in (('kernel', ami.kernel_id),
                               ('ramdisk', ami.ramdisk_id)):
            base_st = os.stat(c.path_for(image_id))
            self.assertNotEqual(base_st.st_ino,
                                os.stat(getattr(p, part)).st_ino)
            with open(c.path_for(image_id), 'rb') as a, \
                    open(getattr(p, part), 'rb') as b:
                self.assertEqual(a.read(), b.read())
        self.assertIn('<kernel>%s</kernel>' % p.kernel, p.xml)

    def last_checked(self, target):
        out = target.run('dumpe2fs', ['-h'])[0]
        return [line for line in out.splitlines()
                if line.startswith('Last checked:')][0]

    def test_clean_base_is_checked_once(self):
        img = self.scratch('old-check.img')
        shutil.copyfile(self.testbed['root'], img)
        self.run_cmd('debugfs', '-w', '-R', 'ssv lastcheck 20000101', img)
        ami, _a, _r = self.add_triplet(root=img)
        p = self.prepare(self.request(ami.id))
        with self.guest(p) as tg:
            # No e2fsck ran on the instance disk: the base's stamp stands.
            self.assertIn('2000', self.last_checked(tg))
        base_path = self.make_cache().path_for(ami.id)
        self.assertEqual({'fstype': 'ext4', 'clean': True},
                         grow.base_facts(base_path, self.conf))
        self.assertIn(b'"clean": true',
                      os.getxattr(base_path, 'user.amiboot.fs'))

    def test_base_needing_repair_is_fixed_per_instance(self):
        img = self.scratch('dirty.img')
        shutil.copyfile(self.testbed['root'], img)
        # A wrong free blocks count: e2fsck -n lets it pass, -p repairs it.
        self.run_cmd('debugfs', '-w', '-R', 'ssv free_blocks_count 123', img)
        self.run_cmd('debugfs', '-w', '-R', 'ssv lastcheck 20000101', img)
        ami, _a, _r = self.add_triplet(root=img)
        p = self.prepare(self.request(ami.id))
        base_path = self.make_cache().path_for(ami.id)
        self.assertEqual({'fstype': 'ext4', 'clean': False},
                         grow.base_facts(base_path, self.conf))
        self.assertTrue(p.grown)
        with self.guest(p) as tg:
            # e2fsck ran on the instance disk itself ...
            self.assertNotIn('2000', self.last_checked(tg))
            # ... and left nothing to repair.
            tg.run('e2fsck', ['-fp'])
        # The repair went into the overlay; the shared base is untouched.
        self.run_cmd('cmp', img, base_path)

    def test_existing_keys_kept_and_appended(self):
        def populate(tree):
            os.makedirs(os.path.join(tree, 'root/.ssh'))
            with open(os.path.join(tree, 'root/.ssh/authorized_keys'),
                      'w') as f:
                f.write('ssh-rsa AAAAold old@key')
        ami, _a, _r = self.add_triplet(root=self.custom_ami(populate))
        p = self.prepare(self.request(ami.id))
        with self.guest(p) as tg:
            keys = inject.GuestFS(tg).read('/root/.ssh/authorized_keys')
        self.assertEqual('ssh-rsa AAAAold old@key\n%s\n%s\n'
                         % (inject.KEY_MARKER, KEY), keys.decode())

    def test_password_and_selinux(self):
        def populate(tree):
            os.makedirs(os.path.join(tree, 'etc/selinux'))
        self.conf.set_override('inject_password', True, 'amiboot')
        ami, _a, _r = self.add_triplet(root=self.custom_ami(populate))
        p = self.prepare(self.request(ami.id, password='pa55word'))
        with self.guest(p) as tg:
            fs = inject.GuestFS(tg)
            shadow = fs.read('/etc/shadow').decode().splitlines()
            self.assertEqual((0o640, 0, 0), fs.stat('/etc/shadow'))
            self.assertEqual((0o644, 0, 0), fs.stat('/.autorelabel'))
        hashed = shadow[0].split(':')[1]
        self.assertTrue(hashed.startswith('$6$'))
        salt = hashed.split('$')[2]
        again = self.run_cmd('openssl', 'passwd', '-6', '-salt', salt,
                             'pa55word').strip()
        self.assertEqual(again, hashed)
        self.assertEqual('daemon:*:19000::::::', shadow[1])

    def test_symlinked_ssh_dir_is_refused(self):
        def populate(tree):
            os.symlink('/etc', os.path.join(tree, 'root/.ssh'))
        ami, _a, _r = self.add_triplet(root=self.custom_ami(populate))
        req = self.request(ami.id)
        with self.assertRaises(exception.UnsafeInjectionPath) as cm:
            self.prepare(req)
        self.assertIn('/root/.ssh is a symbolic link', str(cm.exception))
        self.assertIn(req.name, str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(self.instances,
                                                     req.uuid)))

    def test_symlinked_parent_is_refused(self):
        def populate(tree):
            shutil.rmtree(os.path.join(tree, 'root'))
            os.symlink('/etc', os.path.join(tree, 'root'))
        ami, _a, _r = self.add_triplet(root=self.custom_ami(populate))
        self.assertRaises(exception.UnsafeInjectionPath, self.prepare,
                          self.request(ami.id))

    def test_traversal_paths_refused(self):
        ami, _a, _r = self.add_triplet()
        cache = self.make_cache()
        root = cache.fetch(ami.id)
        disk = self.scratch('d.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F',
                        'raw', '-b', root.path, disk], check=True)
        with attach.attached(disk, 'qcow2', self.conf,
                             backing=attach.HEADER) as tg:
            fs = inject.GuestFS(tg, 'vm-x')
            for bad in ('/root/../etc/passwd', 'etc/passwd', '/etc/',
                        '/etc/a b', '/etc/"x', '/'):
                self.assertRaises(exception.UnsafeInjectionPath,
                                  fs.write, bad, b'x')
            self.assertRaises(exception.UnsafeInjectionPath,
                              fs.write, '/etc', b'x')

    def test_flavor_too_small(self):
        big = self.scratch('big.img')
        self.mkfs(self.custom_tree(), big, size='1100M')
        ami, _a, _r = self.add_triplet(root=big)
        req = self.request(ami.id, root_gb=1)
        with self.assertRaises(exception.FlavorDiskTooSmall) as cm:
            self.prepare(req)
        self.assertIn(req.name, str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(self.instances,
                                                     req.uuid)))

    def custom_tree(self):
        tree = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tree)
        return tree

    def test_corrupt_filesystem(self):
        img = self.scratch('corrupt.img')
        shutil.copyfile(self.testbed['root'], img)
        # Clear the root directory's inode: preen mode cannot fix that.
        self.run_cmd('debugfs', '-w', '-R', 'clri <2>', img)
        ami, _a, _r = self.add_triplet(root=img)
        req = self.request(ami.id)
        with self.assertRaises(exception.FilesystemCorrupt) as cm:
            self.prepare(req)
        self.assertIn(ami.id, str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(self.instances,
                                                     req.uuid)))

    def test_xfs_cannot_take_a_key(self):
        # XFS is served (booted) but not written from user space.
        img = self.scratch('xfs.img')
        subprocess.run(['truncate', '-s', '320M', img], check=True)
        subprocess.run(['mkfs.xfs', '-q', img], check=True)
        ami, _a, _r = self.add_triplet(root=img)
        with self.assertRaises(exception.InjectionFailed) as cm:
            self.prepare(self.request(ami.id))
        self.assertIn('ext2/3/4 only', str(cm.exception))
        # Without anything to inject it is only left ungrown.
        p = self.prepare(self.request(ami.id, key=None))
        self.assertFalse(p.grown)

    def test_no_filesystem_is_refused_at_fetch(self):
        blank = self.scratch('blank.img')
        subprocess.run(['truncate', '-s', '16M', blank], check=True)
        ami, _a, _r = self.add_triplet(root=blank)
        with self.assertRaises(exception.InvalidImage) as cm:
            self.prepare(self.request(ami.id, key=None))
        self.assertIn('holds no filesystem', str(cm.exception))
        self.assertEqual([], self.base_dir_entries())

    def test_denied_boot_param_before_disk_work(self):
        ami, _a, _r = self.add_triplet()
        req = self.request(ami.id, boot_params=('quiet init=/bin/sh',))
        with self.assertRaises(exception.BootParameterDenied) as cm:
            self.prepare(req)
        self.assertIn('init=/bin/sh', str(cm.exception))
        self.assertEqual([], self.base_dir_entries())

    def test_not_an_ami(self):
        _ami, aki, _ari = self.add_triplet()
        raw = self.store.add('plain', self.testbed['root'], 'raw')
        for image in (raw, aki):
            self.assertRaises(exception.InvalidImage, self.prepare,
                              self.request(image.id))

    def test_copy_mode_for_parity(self):
        ami, _a, _r = self.add_triplet()
        p = self.prepare(self.request(ami.id, root_gb=1),
                         settings=spawn.BootSettings(disk_mode='copy'))
        self.assertEqual('raw', p.disk_format)
        self.assertEqual(GiB, os.path.getsize(p.disk))
        with self.guest(p) as tg:
            self.assertEqual('ext4', grow.fs_type(tg))
            self.assertEqual((0o600, 0, 0), inject.GuestFS(tg).stat(
                '/root/.ssh/authorized_keys'))

    def test_failure_inside_attach_releases_everything(self):
        ami, _a, _r = self.add_triplet()
        root = self.make_cache().fetch(ami.id)
        disk = self.scratch('d2.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F',
                        'raw', '-b', root.path, disk], check=True)
        with self.assertRaises(RuntimeError):
            with attach.attached(disk, 'qcow2', self.conf, 'fuse',
                                 backing=attach.HEADER) as tg:
                # Served in the sandbox: its FUSE mount is in the
                # sandbox's mount namespace, never on the host.
                self.assertEqual([], base.fuse_exports())
                self.assertFalse(attach.fuse_mounted(tg.path))
                self.assertTrue(base.live_processes('qemu-storage-daemon'))
                tg.run('dumpe2fs', ['-h'])
                raise RuntimeError('boom')
        # assertNothingLeaked runs at clean-up.

    def test_attach_failure_is_reported(self):
        with self.assertRaises(exception.AttachFailed) as cm:
            with attach.attached(self.scratch('missing.qcow2'), 'qcow2',
                                 self.conf, 'fuse'):
                pass
        self.assertIn('missing.qcow2', str(cm.exception))
