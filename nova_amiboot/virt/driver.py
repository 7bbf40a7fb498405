"""LibvirtDriver for the AMI boot method.

What changes for instances whose image has a kernel_id (AMIs); every other
instance is stock nova:

- kernel and ramdisk enter ``_base`` through the core's cache, with the
  same format inspection as the root disk (nova fetches them uninspected);
- the root disk comes from AmibootQcow2: a qcow2 overlay over the raw base,
  the filesystem grown to the flavor, the key injected from user space;
- the kernel command line gets the per-instance boot parameters (metadata
  key ``amiboot_boot_params`` and ``bootparams=`` lines of the user data),
  through ``[amiboot] allowed_boot_params``, checked before any disk work.
"""

import base64
import binascii

from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging

from nova_amiboot.conf import CONF
from nova_amiboot import domain
from nova_amiboot import embedded
from nova_amiboot.virt import errors
from nova_amiboot.virt import imagebackend

LOG = logging.getLogger(__name__)

METADATA_KEY = 'amiboot_boot_params'


def boot_params(instance):
    params = []
    if instance.metadata and instance.metadata.get(METADATA_KEY):
        params.append(instance.metadata[METADATA_KEY])
    if instance.user_data:
        try:
            user_data = base64.b64decode(instance.user_data)
        except (binascii.Error, ValueError):
            user_data = b''
        params.extend(embedded.boot_params_from_user_data(user_data))
    return params


class AmibootLibvirtDriver(libvirt_driver.LibvirtDriver):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        # images_type stays qcow2; only its class changes.
        for name in ('qcow2', 'default'):
            if self.image_backend.BACKEND.get(name) is \
                    libvirt_driver.imagebackend.Qcow2:
                self.image_backend.BACKEND[name] = \
                    imagebackend.AmibootQcow2

    def _cmdline(self, instance, base):
        return domain.build_cmdline(base, None, boot_params(instance),
                                    CONF.amiboot.allowed_boot_params,
                                    instance=instance.uuid)

    def _create_image(self, context, instance, *args, **kwargs):
        if instance.kernel_id:
            with errors.as_nova_errors(instance.image_ref):
                # Refuse a denied parameter before any download or disk
                # work.
                self._cmdline(instance, '')
                cache = imagebackend.image_cache(context)
                cache.fetch(instance.kernel_id, 'aki')
                if instance.ramdisk_id:
                    cache.fetch(instance.ramdisk_id, 'ari')
        return super()._create_image(context, instance, *args, **kwargs)

    def _set_guest_for_inst_kernel(self, instance, guest, inst_path,
                                   root_device_name, image_meta):
        super()._set_guest_for_inst_kernel(instance, guest, inst_path,
                                           root_device_name, image_meta)
        guest.os_cmdline = self._cmdline(instance, guest.os_cmdline)
