"""Boot the test bed's triplet through libvirt and check it from inside."""

import os
import unittest
import uuid

from nova_amiboot import guest
from tests.testbed import boot
from tests.testbed import build


class TestTestbedBoot(unittest.TestCase):

    def test_boot_reports_from_inside(self):
        info = build.build()
        host = guest.Host()
        self.addCleanup(host.close)
        name = 'amiboot-test-%s' % uuid.uuid4().hex[:8]
        nonce = uuid.uuid4().hex[:12]
        with boot.instance_dir() as d:
            disk = boot.overlay(info['root'], os.path.join(d, 'disk'))
            rep, text = boot.boot(
                host, name, info['kernel'], info['ramdisk'], disk, d,
                'root=/dev/vda console=tty0 console=ttyS0 amiboot.nonce=%s'
                % nonce)
        # The domain is gone, whatever happened.
        self.assertIsNone(host.lookup(name))
        # The kernel saw the command line we gave it.
        self.assertIn('amiboot.nonce=%s' % nonce, rep['cmdline'].split())
        # It is the packaged cloud kernel ...
        pkg = os.path.basename(info['kernel_package'])
        self.assertTrue(pkg.startswith('linux-image-%s_' % rep['kernel']),
                        (pkg, rep['kernel']))
        # ... whose virtio drivers the ARI loaded: without them there is
        # no /dev/vda to mount and no eth0.
        loaded = rep['modules'].split()
        for mod in ('virtio_blk', 'virtio_net', 'virtio_pci'):
            self.assertIn(mod, loaded)
        self.assertEqual('/dev/vda ext4', ' '.join(
            rep['root_dev'].split()[:2]))
        self.assertIn('eth0', rep['net'].split())
        self.assertEqual('amiboot-testbed', rep['hostname'])
        # Nothing injected in the pristine test bed image.
        self.assertEqual('', rep['ssh_dir'])
        self.assertIn('reboot: Power down', text)
