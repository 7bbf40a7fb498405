"""Image pre-caching (``openstack aggregate cache image``, API 2.81).

Same harness as test_servers: nova's API, conductor and compute
in-process, nova's fake libvirt (QEMU does not run here), Glance as nova's
GlanceFixture; the cache, its downloads and inspection are real. Downloads
are counted by wrapping the real ones (each still runs).
"""

import os

import fixtures
from nova import context as nova_context
from nova import exception as nova_exception
from nova.virt import images as nova_images

from nova_amiboot import meta as meta_mod
from nova_amiboot.virt import glance as glance_mod
from tests.nova_functional import test_servers

AMI_PARTS = ('ami', 'aki', 'ari')


class TestCacheImage(test_servers.AmiServersBase):

    def setUp(self):
        super().setUp()
        self.downloads = []
        real_download = glance_mod.GlanceImageSource.download

        def counted(source, image_id, fileobj):
            self.downloads.append(image_id)
            return real_download(source, image_id, fileobj)
        self.useFixture(fixtures.MonkeyPatch(
            'nova_amiboot.virt.glance.GlanceImageSource.download', counted))
        self.nova_fetches = []
        real_fetch = nova_images.fetch_to_raw

        def counted_fetch(context, image_href, path, *args, **kwargs):
            self.nova_fetches.append(image_href)
            return real_fetch(context, image_href, path, *args, **kwargs)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.images.fetch_to_raw', counted_fetch))
        self.admin_api.microversion = 'latest'
        self.agg = self.admin_api.post_aggregate(
            {'aggregate': {'name': 'cache-agg'}})
        self.admin_api.add_host_to_aggregate(self.agg['id'], 'compute1')
        self.requests = 0

    def _cache(self, name):
        """Ask the API to pre-cache image ``name``; wait for its end.

        Returns the progress notification's payload for compute1.
        """
        self.requests += 1
        self.admin_api.api_post(
            '/os-aggregates/%s/images' % self.agg['id'],
            {'cache': [{'id': self.images[name]}]},
            check_response_status=[202])
        self.notifier.wait_for_versioned_notifications(
            'aggregate.cache_images.end', n_events=self.requests)
        (progress,) = [n for n in self.notifier.versioned_notifications
                       if n['event_type'] == 'aggregate.cache_images.progress'
                       ][self.requests - 1:]
        return progress['payload']['nova_object.data']

    def _inodes(self, names):
        return {n: os.stat(self._base(n)).st_ino for n in names}

    def test_ami_triplet_enters_our_cache(self):
        ids = [self.images[n] for n in AMI_PARTS]
        payload = self._cache('ami')
        self.assertEqual([self.images['ami']], payload['images_cached'])
        self.assertEqual([], payload['images_failed'])
        self.assertIn('1 cached, 0 existing, 0 errors',
                      self.stdlog.logger.output)
        # All three, each downloaded once through our cache (which records
        # on each base the format it was fetched and inspected as), none
        # by nova's own fetch.
        self.assertEqual(sorted(ids), sorted(self.downloads))
        self.assertEqual([], self.nova_fetches)
        for name in AMI_PARTS:
            self.assertEqual(name, meta_mod.get_text(
                self._base(name), meta_mod.DISK_FORMAT), name)
            st = os.stat(self._base(name))
            self.assertEqual((0, 0, 0o644), (st.st_uid, st.st_gid,
                                             st.st_mode & 0o7777), name)
        inodes = self._inodes(AMI_PARTS)

        # Again: all there; nothing fetched ("existing"), the bases the
        # same files, their timestamps renewed (nova's contract).
        for name in AMI_PARTS:
            os.utime(self._base(name), (1000000000, 1000000000))
        payload = self._cache('ami')
        self.assertEqual([self.images['ami']], payload['images_cached'])
        self.assertIn('0 cached, 1 existing, 0 errors',
                      self.stdlog.logger.output)
        self.assertEqual(sorted(ids), sorted(self.downloads))
        self.assertEqual(inodes, self._inodes(AMI_PARTS))
        for name in AMI_PARTS:
            self.assertGreater(os.stat(self._base(name)).st_mtime,
                               1000000000, name)
        drv = self.computes['compute1'].driver
        self.assertFalse(drv.cache_image(nova_context.get_admin_context(),
                                         self.images['ami']))

        # A boot after it downloads nothing and uses those very bases.
        server = self._boot('ami', key_name='k1')
        self.assertEqual(sorted(ids), sorted(self.downloads))
        self.assertEqual([], self.nova_fetches)
        self.assertEqual(inodes, self._inodes(AMI_PARTS))
        self._delete_server(server)

        # One part gone from _base: only that one is fetched again, and
        # the call says something was fetched.
        os.unlink(self._base('ari'))
        self.assertTrue(drv.cache_image(nova_context.get_admin_context(),
                                        self.images['ami']))
        self.assertEqual(sorted(ids + [self.images['ari']]),
                         sorted(self.downloads))

    def test_kernel_alone_enters_our_cache(self):
        drv = self.computes['compute1'].driver
        ctx = nova_context.get_admin_context()
        self.assertTrue(drv.cache_image(ctx, self.images['aki']))
        self.assertEqual([self.images['aki']], self.downloads)
        self.assertEqual('aki', meta_mod.get_text(self._base('aki'),
                                                  meta_mod.DISK_FORMAT))
        self.assertFalse(drv.cache_image(ctx, self.images['aki']))
        self.assertEqual([self.images['aki']], self.downloads)

    def test_other_images_are_cached_by_nova(self):
        payload = self._cache('plain')
        self.assertEqual([self.images['plain']], payload['images_cached'])
        # nova's fetch_to_raw, not our cache (no format recorded).
        self.assertEqual([self.images['plain']], self.nova_fetches)
        self.assertEqual([], self.downloads)
        self.assertTrue(os.path.exists(self._base('plain')))
        self.assertIsNone(meta_mod.get_text(self._base('plain'),
                                            meta_mod.DISK_FORMAT))
        drv = self.computes['compute1'].driver
        self.assertFalse(drv.cache_image(nova_context.get_admin_context(),
                                         self.images['plain']))

    def test_missing_image_is_an_error(self):
        # The API checks the image exists; gone by the time the compute
        # asks (deleted between): an error for that image, and the AMI
        # (fetched last) not downloaded for nothing.
        self.glance.delete(None, self.images['aki'])
        drv = self.computes['compute1'].driver
        self.assertRaises(nova_exception.ImageNotFound, drv.cache_image,
                          nova_context.get_admin_context(),
                          self.images['ami'])
        self.assertEqual([], self.downloads)
        for name in AMI_PARTS:
            self.assertFalse(os.path.exists(self._base(name)), name)
