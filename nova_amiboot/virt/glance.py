"""Glance, through nova's image API, as an ImageSource for the core cache."""

from nova import exception as nova_exception
from nova.image import glance

from nova_amiboot import exception
from nova_amiboot import images


class GlanceImageSource(images.ImageSource):

    name = 'Glance'

    def __init__(self, context, trusted_certs=None):
        self.context = context
        # The instance's trusted image certificates: nova's client checks
        # the image signature against them while downloading.
        self.trusted_certs = trusted_certs
        self.api = glance.API()

    def get_meta(self, image_id):
        try:
            meta = self.api.get(self.context, image_id)
        except nova_exception.ImageNotFound:
            raise exception.ImageNotFound(image=image_id, source=self.name)
        props = dict(meta.get('properties') or {})
        return images.ImageMeta(
            id=meta['id'], name=meta.get('name') or meta['id'],
            disk_format=meta.get('disk_format'),
            container_format=meta.get('container_format'),
            size=meta.get('size'), checksum=meta.get('checksum'),
            os_hash_algo=meta.get('os_hash_algo'),
            os_hash_value=meta.get('os_hash_value'), properties=props)

    def download(self, image_id, fileobj):
        # data=: the one form nova's API and its test fixture share.
        self.api.download(self.context, image_id, data=fileobj,
                          trusted_certs=self.trusted_certs)
