"""amiboot image upload/download against the real Glance of the one-host
cloud (tools/cloud), in the cloud tier. Never faked: run on its own without
a reachable cloud, the test is skipped and says why.

The cloud's clouds.yaml is found through OS_CLIENT_CONFIG_FILE, else the
cloud's state directory (AMIBOOT_CLOUD_DIR, default
/var/lib/nova-amiboot-cloud); the cloud name is AMIBOOT_GLANCE_CLOUD
(default amicloud).
"""

import os
import uuid

from tests.functional import test_cli

CLOUD_DIR = os.environ.get('AMIBOOT_CLOUD_DIR', '/var/lib/nova-amiboot-cloud')
CLOUD = os.environ.get('AMIBOOT_GLANCE_CLOUD', 'amicloud')


def clouds_yaml():
    return os.environ.get('OS_CLIENT_CONFIG_FILE') or os.path.join(
        CLOUD_DIR, 'etc', 'clouds.yaml')


def reachable():
    """None if the cloud answers, else the reason it does not."""
    if not os.path.exists(clouds_yaml()):
        return "no cloud: %s does not exist (tools/cloud up)" % clouds_yaml()
    os.environ['OS_CLIENT_CONFIG_FILE'] = clouds_yaml()
    import openstack

    try:
        conn = openstack.connect(cloud=CLOUD, api_timeout=20)
        list(conn.image.images(limit=1))
        conn.close()
    except Exception as e:
        return "cloud %s not reachable: %s" % (CLOUD, e)
    return None


class TestGlance(test_cli.CliTestCase):

    def setUp(self):
        super().setUp()
        why = reachable()
        if why:
            self.skipTest(why)
        import openstack

        self.conn = openstack.connect(cloud=CLOUD)
        self.addCleanup(self.conn.close)
        self.created = []
        self.addCleanup(self._delete_created)

    def _delete_created(self):
        for image_id in self.created:
            self.conn.image.delete_image(image_id, ignore_missing=True)

    def upload(self, name):
        res = self.json('image', 'upload', name, '--os-cloud', CLOUD)
        # Only what this test uploaded is this test's to delete.
        for key, suffix in (('ami', ''), ('aki', '-kernel'),
                            ('ari', '-ramdisk')):
            if name + suffix in res['uploaded']:
                self.created.append(res[key])
        return res

    def test_upload_reuse_and_download(self):
        tag = uuid.uuid4().hex[:8]
        name = 'it-%s' % tag
        self.import_testbed(name, '--property',
                            'os_command_line=root=/dev/vda ro quiet',
                            '--property', 'hw_rng_model=virtio')
        # The kernel and ramdisk of the test bed may be in Glance already
        # (same bytes, another test): then they are reused, which is what
        # this command promises.
        res = self.upload(name)
        self.assertIn(name, res['uploaded'])
        ami = self.conn.image.get('/images/%s' % res['ami']).json()
        self.assertEqual(('ami', 'ami'), (ami['disk_format'],
                                          ami['container_format']))
        self.assertEqual(res['aki'], ami['kernel_id'])
        self.assertEqual(res['ari'], ami['ramdisk_id'])
        self.assertEqual('root=/dev/vda ro quiet', ami['os_command_line'])
        self.assertEqual('virtio', ami['hw_rng_model'])
        local = self.json('image', 'show', name)
        self.assertEqual(local['os_hash_value'], ami['os_hash_value'])
        for key, fmt in (('aki', 'aki'), ('ari', 'ari')):
            part = self.conn.image.get_image(res[key])
            self.assertEqual((fmt, fmt), (part.disk_format,
                                          part.container_format))
        # Again: everything is there already; nothing is uploaded twice.
        again = self.upload(name)
        self.assertEqual([], again['uploaded'])
        self.assertEqual(res['ami'], again['ami'])

        back = self.json('image', 'download', res['ami'], '--name',
                         name + '-back', '--os-cloud', CLOUD)
        self.assertEqual(local['os_hash_value'], back['os_hash_value'])
        self.assertEqual('root=/dev/vda ro quiet', back['os_command_line'])
        self.assertEqual('virtio', back['hw_rng_model'])
        kernel = self.json('image', 'show', back['kernel_id'])
        self.assertEqual(self.json('image', 'show', local['kernel_id'])
                         ['os_hash_value'], kernel['os_hash_value'])
        msg = self.error('image', 'download', 'no-such-' + tag,
                         '--os-cloud', CLOUD)
        self.assertIn('no-such-' + tag, msg)
