"""Where images come from: one interface for the core.

The cache asks an ImageSource for an image's metadata (what Glance records)
and its bytes. The ``amiboot`` command serves it from its local store
(``nova_amiboot.local.store``); the nova adapter wraps nova's Glance client
in the same interface (``nova_amiboot.virt.glance``).
"""

import abc
import dataclasses

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclasses.dataclass
class ImageMeta:
    id: str
    name: str
    disk_format: str
    container_format: str
    size: int
    checksum: str = None            # md5, as Glance's legacy field
    os_hash_algo: str = None        # Glance multihash
    os_hash_value: str = None
    properties: dict = dataclasses.field(default_factory=dict)

    @property
    def kernel_id(self):
        return self.properties.get('kernel_id')

    @property
    def ramdisk_id(self):
        return self.properties.get('ramdisk_id')


class ImageSource(abc.ABC):
    """What the cache needs from an image service."""

    name = 'image source'

    @abc.abstractmethod
    def get_meta(self, image_id):
        """Return ImageMeta or raise ImageNotFound."""

    @abc.abstractmethod
    def download(self, image_id, fileobj):
        """Write the image's bytes to ``fileobj`` (it has ``write``)."""
