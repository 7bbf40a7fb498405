"""amiboot image snapshot of a disk whose qcow2 header was rewritten.

While a guest runs, its QEMU owns the instance disk and can rewrite the
qcow2 header: name a root-only host file as the backing file, or as an
external data file. A compromised QEMU cannot be had here, so the test
rewrites the header itself (with qemu-img, as that QEMU could), after a
real guest booted from the disk. The snapshot must read the disk over the
source AMI's own base, never the file the header names.
"""

import hashlib
import os
import re
import subprocess
import uuid

from lxml import etree

from tests.functional import test_cli


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


class TestHostileSnapshot(test_cli.CliTestCase):

    def setUp(self):
        super().setUp()
        self.import_testbed()
        inst = self.boot('vm1', '--image', 'tb', '--flavor', 'lab.small',
                         '--key-file', self.key + '.pub', '--wait')
        self.assertIn(inst['wait'], ('ready', 'stopped'))
        self.json('stop', 'vm1')
        dom = self.host.lookup('amiboot-vm1')
        tree = etree.fromstring(dom.XMLDesc(0).encode())
        self.disk = tree.find('./devices/disk/source').get('file')
        # A host secret only root may read: the AMI's own filesystem with
        # secret bytes in a data block of a file no boot writes (the middle
        # of busybox), so that a snapshot that read it would pass every
        # check and carry the secret.
        self.nonce = uuid.uuid4().hex
        self.secret = self.scratch('host-secret.img')
        run('cp', '--sparse=always', self.testbed['root'], self.secret)
        bsize = int(re.search(r'Block size:\s+(\d+)', run(
            'dumpe2fs', '-h', self.secret).stdout).group(1))
        block = int(run('debugfs', '-R', 'bmap /bin/busybox 100',
                        self.secret).stdout.split()[-1])
        with open(self.secret, 'r+b') as f:
            f.seek(block * bsize)
            f.write(('host secret %s\n' % self.nonce).encode() * 8)
        os.chmod(self.secret, 0o600)
        with open(self.secret, 'rb') as f:
            self.secret_bytes = f.read()
        self.secret_sum = hashlib.sha256(self.secret_bytes).hexdigest()

    def assert_secret_absent(self, path):
        with open(path, 'rb') as f:
            found = self.nonce.encode() in f.read()
        self.assertFalse(found, "the host secret is in %s" % path)

    def assert_secret_untouched(self):
        with open(self.secret, 'rb') as f:
            self.assertEqual(self.secret_sum,
                             hashlib.sha256(f.read()).hexdigest())

    def test_backing_file_in_the_header_is_not_opened(self):
        run('qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'raw', '-b',
            self.secret, self.disk)
        self.assertIn(self.secret, run('qemu-img', 'info', '-U',
                                       self.disk).stdout)
        snap = self.json('image', 'snapshot', 'vm1', 'snap')
        path = os.path.join(self.state, 'images', snap['id'])
        self.assert_secret_absent(path)
        listing = run('debugfs', '-R', 'ls -l /', path).stdout
        self.assertIn('sbin', listing)
        run('e2fsck', '-fn', path)
        self.assert_secret_untouched()

    def test_external_data_file_is_refused(self):
        size = run('qemu-img', 'info', '-U', '--output=json', self.disk)
        os.unlink(self.disk)
        run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
            'data_file=%s,data_file_raw=on' % self.secret, self.disk,
            str(os.path.getsize(self.secret)))
        # qemu-img create zeroes nothing it does not own: put the secret
        # back as it was, should it have.
        with open(self.secret, 'wb') as f:
            f.write(self.secret_bytes)
        self.assertTrue(size.stdout)
        before = self.json('image', 'list')
        msg = self.error('image', 'snapshot', 'vm1', 'snap')
        self.assertIn('vm1', msg)
        self.assertIn(self.disk, msg)
        self.assertIn('data_file', msg)
        self.assertEqual(before, self.json('image', 'list'))
        self.assertEqual([], os.listdir(os.path.join(self.state, 'tmp')))
        self.assert_secret_untouched()
