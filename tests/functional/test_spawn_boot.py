"""End to end: prepare through the pipeline, boot, check from inside."""

import uuid

from nova_amiboot import guest
from nova_amiboot import spawn
from tests.functional import base
from tests.testbed import boot

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e end@to-end'


class TestSpawnBoot(base.RealToolsTestCase):

    def test_guest_sees_key_size_and_parameter(self):
        ami, _aki, _ari = self.add_triplet()
        nonce = uuid.uuid4().hex[:10]
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='amiboot-e2e-%s' % nonce[:6],
            image_id=ami.id, flavor=spawn.Flavor('t2', 2, 256, 1),
            key=KEY, hostname='e2e-host',
            boot_params=('quiet amiboot.nonce=%s' % nonce,),
            user_data=b'#cloud-config\nbootparams=quiet\n')
        prepared = spawn.prepare(self.conf, self.make_cache(), req,
                                 virt_type='qemu')
        host = guest.Host()
        self.addCleanup(host.close)
        rep, _log = boot.boot_prepared(host, prepared, req.name)
        self.assertIsNone(host.lookup(req.name))

        cmdline = rep['cmdline'].split()
        self.assertEqual(['root=/dev/vda', 'console=tty0', 'console=ttyS0',
                          'quiet', 'amiboot.nonce=%s' % nonce], cmdline)
        self.assertIn(KEY, rep['authorized_keys'].splitlines())
        self.assertEqual('600 0 0 regular file',
                         rep['authorized_keys_stat'])
        self.assertEqual('700 0 0 directory', rep['ssh_dir'])
        self.assertEqual('e2e-host', rep['hostname'])
        self.assertEqual(req.user_data.decode(), rep['user_data'])
        total_kb = int(rep['root_df_kb'].split()[0])
        # df counts the filesystem less its metadata: within 5% of 2 GiB,
        # where the AMI itself is 32 MiB.
        self.assertGreater(total_kb, 2 * 1024 * 1024 * 0.95)
        self.assertLessEqual(total_kb, 2 * 1024 * 1024)
