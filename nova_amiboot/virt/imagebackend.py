"""A Qcow2 image backend that prepares AMI instance disks with the core.

images_type stays qcow2 (the driver has isinstance checks for Qcow2); only
instances whose image has a kernel_id (AMIs) take the new path. Others get
nova's own Qcow2 behaviour unchanged.
"""

import os

from nova.virt.libvirt import imagebackend
from oslo_log import log as logging

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import CONF
from nova_amiboot import disk as disk_mod
from nova_amiboot import grow
from nova_amiboot import spawn
from nova_amiboot.virt import errors
from nova_amiboot.virt import glance

LOG = logging.getLogger(__name__)


def image_cache(context):
    return cache_mod.ImageCache(CONF.instances_path,
                                glance.GlanceImageSource(context), CONF)


class AmibootQcow2(imagebackend.Qcow2):

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None):
        super().__init__(instance=instance, disk_name=disk_name, path=path,
                         disk_info_mapping=disk_info_mapping)
        self.instance = instance

    def _is_ami_root(self, kwargs):
        return (self.instance is not None and self.instance.kernel_id
                and kwargs.get('image_id') == self.instance.image_ref
                and 'context' in kwargs)

    def create_image(self, prepare_template, base, size, safe=False,
                     *args, **kwargs):
        if not self._is_ami_root(kwargs):
            return super().create_image(prepare_template, base, size,
                                        safe=safe, *args, **kwargs)
        with errors.as_nova_errors(self.instance.image_ref):
            self._create_ami_disk(kwargs['context'], size)

    def _create_ami_disk(self, context, size):
        inst = self.instance
        # Same base path and lock as nova's Image.cache(): nova's image
        # cache manager sees this base as its own.
        cache = image_cache(context)
        # An image larger than the root disk is refused before it is
        # converted or cached.
        root = cache.fetch(inst.image_ref, 'ami',
                           max_virtual_size=size or None)
        size = size or root.virtual_size
        fmt = disk_mod.create(root.path, self.path, size, mode='overlay',
                              instance=inst.uuid, image=inst.image_ref)
        try:
            req = spawn.InstanceRequest(
                uuid=inst.uuid, name=inst.uuid, image_id=inst.image_ref,
                flavor=spawn.Flavor(inst.flavor.name, inst.flavor.root_gb,
                                    inst.flavor.memory_mb,
                                    inst.flavor.vcpus),
                key=inst.key_data, hostname=inst.hostname)
            facts = grow.base_facts(root.path, CONF)
            with attach.attached(self.path, fmt, CONF) as target:
                spawn.customise(target, req, CONF, facts)
        except BaseException:
            self.remove_disk()
            raise
        LOG.info("AMI disk of %(uuid)s prepared over %(base)s",
                 {'uuid': inst.uuid, 'base': root.path})

    def remove_disk(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
