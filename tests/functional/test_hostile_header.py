"""Instance disks are opened over their recorded base, whatever the header.

A guest's QEMU owns its disk while it runs and may rewrite the qcow2
header. No compromised QEMU can be had here: the test rewrites the header
with qemu-img, as that QEMU could, on a real overlay made by the core.
"""

import hashlib
import os
import shutil
import subprocess

from nova_amiboot import attach
from nova_amiboot import disk as disk_mod
from nova_amiboot import exception
from nova_amiboot import inject
from tests.functional import base


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


class TestRewrittenHeader(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf()
        self.base = self.scratch('base.raw')
        shutil.copy(self.testbed['root'], self.base)
        # The host secret: the same filesystem, /etc/hostname changed.
        self.secret = self.scratch('secret.raw')
        shutil.copy(self.testbed['root'], self.secret)
        note = self.scratch('note')
        with open(note, 'w') as f:
            f.write('host-secret\n')
        run('debugfs', '-w', '-R', 'rm /etc/hostname', self.secret)
        run('debugfs', '-w', '-R', 'write %s /etc/hostname' % note,
            self.secret)
        os.chmod(self.secret, 0o600)
        with open(self.secret, 'rb') as f:
            self.secret_sum = hashlib.sha256(f.read()).hexdigest()
        self.disk = self.scratch('disk')
        disk_mod.create(self.base, self.disk, 2 * 1024 ** 3)

    def hostname(self, **kw):
        with attach.attached(self.disk, 'qcow2', self.conf, **kw) as tg:
            return inject.GuestFS(tg).read('/etc/hostname')

    def secret_untouched(self):
        with open(self.secret, 'rb') as f:
            self.assertEqual(self.secret_sum,
                             hashlib.sha256(f.read()).hexdigest())

    def test_backing_named_by_the_header_is_not_opened(self):
        ours = self.hostname()
        run('qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'raw', '-b',
            self.secret, self.disk)
        self.assertEqual(self.secret, disk_mod.header_backing(self.disk))
        # The recorded base, and a base given explicitly, both win.
        self.assertEqual(ours, self.hostname())
        self.assertEqual(ours, self.hostname(backing=self.base))
        self.assertNotEqual(b'host-secret\n', ours)
        self.secret_untouched()

    def test_data_file_in_the_header_is_refused(self):
        os.unlink(self.disk)
        run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
            'data_file=%s,data_file_raw=on' % self.secret, self.disk, '64M')
        with self.assertRaises(exception.UnsafeInstanceDisk) as cm:
            self.hostname(backing=self.base)
        self.assertIn(self.disk, str(cm.exception))
        self.assertIn('data_file', str(cm.exception))

    def test_unrecorded_base_is_not_guessed(self):
        os.unlink(self.disk)
        run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
            self.secret, self.disk)
        with self.assertRaises(exception.AttachFailed) as cm:
            self.hostname()
        self.assertIn('not recorded', str(cm.exception))
        self.secret_untouched()
