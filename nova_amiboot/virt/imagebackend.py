"""A Qcow2 image backend that prepares AMI instance disks with the core.

images_type stays qcow2 (the driver has isinstance checks for Qcow2); only
the root disk of instances whose image has a kernel_id (AMIs) takes the new
path. Others get nova's own Qcow2 behaviour unchanged.

nova's ``Image.cache()`` calls ``create_image`` whenever the disk *or* its
base is missing and ``resize_image`` whenever the flavor is bigger than the
base. For an AMI root that means:

- no disk: fetch the base through our cache and make the disk (overlay,
  filesystem grown, key and the rest injected) as the core does: a copy
  of the base's grown template for this size where there is one, made
  aside and renamed into place whole; but the destination of a block
  live migration gets a plain overlay that libvirt then fills;
- a disk but no base (resize/cold migration to a host without it, evacuate
  on shared storage, hard reboot after the base was aged out): fetch the
  base, leave the disk alone;
- ``resize_image``: grow the qcow2 and its filesystem when the disk really
  grows (resize, cold migration); nothing otherwise (every hard reboot).
"""

import contextlib
import contextvars
import os
import shutil

from nova.virt.libvirt import imagebackend
from oslo_log import log as logging
from oslo_utils import units

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import CONF
from nova_amiboot import disk as disk_mod
from nova_amiboot import grow
from nova_amiboot import meta
from nova_amiboot import qemuimg
from nova_amiboot import sandbox
from nova_amiboot import spawn
from nova_amiboot import utils
from nova_amiboot.virt import errors
from nova_amiboot.virt import glance

LOG = logging.getLogger(__name__)
GiB = units.Gi

# Per call of the driver, for the backend objects nova makes on the way
# (nova passes neither to Image.cache()): the instance whose disk is the
# destination of a block migration, and the injection_info of a spawn.
_MIGRATION_TARGET = contextvars.ContextVar('amiboot_migration_target',
                                           default=None)
_INJECTION = contextvars.ContextVar('amiboot_injection', default=None)
# Guest-mode provisioning ([amiboot] provision, spawn.provision_mode) of
# this call: (instance uuid, {ramdisk path: layer.Spec}).
_GUEST = contextvars.ContextVar('amiboot_guest', default=None)


@contextlib.contextmanager
def _set(var, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def migration_target(instance_uuid):
    """Disks made in this block are a migration's destination."""
    return _set(_MIGRATION_TARGET, instance_uuid)


def injection(instance_uuid, injection_info):
    """nova's injection_info (admin_pass, files) for this spawn."""
    return _set(_INJECTION, (instance_uuid, injection_info))


def provisioned_in_guest(instance_uuid, layers):
    """In this block the instance is provisioned by its ARI.

    ``layers``: {path of a ramdisk nova makes: the layer.Spec it carries}.
    The root disk is a plain overlay (no tool runs on its filesystem) and
    each of those ramdisks is its ARI followed by the layer.
    """
    return _set(_GUEST, (instance_uuid, dict(layers)))


def _guest_layers(instance_uuid):
    ctx = _GUEST.get()
    if ctx and ctx[0] == instance_uuid:
        return ctx[1]
    return None


def image_cache(context, trusted_certs=None):
    return cache_mod.ImageCache(
        CONF.instances_path,
        glance.GlanceImageSource(context, trusted_certs=trusted_certs),
        CONF, base_dir_name=CONF.image_cache.subdirectory_name)


def virtual_size(path):
    # A disk the guest's QEMU can write: read in the sandbox.
    return qemuimg.info(path, 'qcow2', force_share=True,
                        timeout=60).virtual_size


class AmibootQcow2(imagebackend.Qcow2):

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None):
        super().__init__(instance=instance, disk_name=disk_name, path=path,
                         disk_info_mapping=disk_info_mapping)
        self.instance = instance

    def _is_ami_instance(self):
        return self.instance is not None and bool(self.instance.kernel_id)

    def create_image(self, prepare_template, base, size, safe=False,
                     *args, **kwargs):
        image_id = kwargs.get('image_id')
        context = kwargs.get('context')
        if not (self._is_ami_instance() and image_id and context):
            # Ephemeral and swap disks, other instances, and nova's copy of
            # a base from the source host (no image_id).
            return super().create_image(prepare_template, base, size,
                                        safe=safe, *args, **kwargs)
        with errors.as_nova_errors(image_id):
            if self.exists():
                self._ensure_base(context, image_id, base)
            elif image_id != self.instance.image_ref:
                # A rescue image other than the instance's own.
                return super().create_image(prepare_template, base, size,
                                            safe=safe, *args, **kwargs)
            elif _MIGRATION_TARGET.get() == self.instance.uuid:
                self._create_plain_overlay(context, image_id, base, size)
            else:
                self._create_ami_disk(context, size)

    def _fetch_base(self, context, image_id, base):
        root = image_cache(context, self.instance.trusted_certs).fetch(
            image_id, 'ami')
        if root.path != base:
            # Both come from instances_path and [image_cache]
            # subdirectory_name: a mismatch is a bug, not a user error.
            raise RuntimeError("AMI base %s is not nova's %s"
                               % (root.path, base))
        return root

    def _ensure_base(self, context, image_id, base):
        """The disk exists: make sure its base does, leave the disk alone."""
        if not os.path.exists(base):
            self._fetch_base(context, image_id, base)
            LOG.info("Base %(base)s of the existing disk of %(uuid)s "
                     "fetched again", {'base': base,
                                       'uuid': self.instance.uuid})

    def _create_plain_overlay(self, context, image_id, base, size):
        # libvirt copies the source's disk into it (a shallow block
        # mirror): no filesystem growth, no injection.
        root = self._fetch_base(context, image_id, base)
        disk_mod.create(root.path, self.path, size or root.virtual_size,
                        mode='overlay', instance=self.instance.uuid,
                        image=image_id)

    def _create_ami_disk(self, context, size):
        inst = self.instance
        cache = image_cache(context, inst.trusted_certs)
        # Same base path and lock as nova's Image.cache(): nova's image
        # cache manager sees this base as its own. An image larger than the
        # root disk is refused before it is converted or cached.
        guest = _guest_layers(inst.uuid) is not None
        root = cache.fetch(inst.image_ref, 'ami',
                           max_virtual_size=size or None, facts=not guest)
        size = size or root.virtual_size
        password, files = None, None
        ctx = _INJECTION.get()
        if ctx and ctx[0] == inst.uuid and ctx[1] is not None:
            if CONF.amiboot.inject_password:
                password = ctx[1].admin_pass
            if CONF.amiboot.inject_files:
                files = ctx[1].files
        req = spawn.InstanceRequest(
            uuid=inst.uuid, name=inst.uuid, image_id=inst.image_ref,
            # The disk's size as nova asks for it: the flavor's root disk
            # (or the image's own size for a flavor without one).
            flavor=spawn.Flavor(inst.flavor.name, size // GiB,
                                inst.flavor.memory_mb, inst.flavor.vcpus),
            key=inst.key_data, hostname=inst.hostname, password=password)
        # Made whole in a scratch dir, then renamed into place: nova's
        # Image.cache() takes any disk that exists as done, so a spawn
        # killed midway must not leave half a disk at self.path. The
        # scratch disk is <instances>/amiboot-check-*/disk, a shape the
        # privileged nbd attach accepts; a killed spawn's dir is reaped.
        utils.reap_stale_tempdirs(grow.CHECK_PREFIX,
                                  dir=CONF.instances_path)
        scratch = utils.owned_tempdir(grow.CHECK_PREFIX,
                                      dir=CONF.instances_path)
        tmp = os.path.join(scratch, 'disk')
        try:
            # nova's Qcow2 backend needs a qcow2 overlay over the raw base
            # whatever [amiboot] disk_mode says (that is the amiboot
            # command's).
            if guest:
                # The ARI grows and keys it at boot.
                made = spawn.guest_disk(CONF, cache, req, root, tmp,
                                        size=size, mode='overlay')
            else:
                made = spawn.prepare_disk(CONF, cache, req, root, tmp,
                                          size=size, mode='overlay',
                                          files=files)
            os.rename(tmp, self.path)
            utils.fsync_dir(os.path.dirname(self.path))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        LOG.info("AMI disk of %(uuid)s prepared over %(base)s%(tpl)s",
                 {'uuid': inst.uuid, 'base': root.path,
                  'tpl': (' from its %s template'
                          % ('plain' if guest else 'grown'))
                  if made.from_template else ''})

    def resize_image(self, size):
        if not (self._is_ami_instance()
                and os.path.basename(self.path) == 'disk'):
            return super().resize_image(size)
        inst = self.instance
        with errors.as_nova_errors(inst.image_ref):
            # The guest's QEMU has owned this disk: a header naming a data
            # file is refused before any tool opens it, and every opener
            # states the backing (the recorded base, or the image's base
            # in this host's cache for a disk copied here by a migration).
            disk_mod.check_header(self.path, 'qcow2', inst.uuid)
            base = meta.recorded_backing(self.path) or os.path.join(
                CONF.instances_path, CONF.image_cache.subdirectory_name,
                cache_mod.base_name(inst.image_ref))
            current = virtual_size(self.path)
            if size <= current:
                # Every hard reboot comes here: no work.
                return
            lim = sandbox.Limits.from_conf(
                CONF, timeout=CONF.amiboot.image_convert_timeout,
                timeout_name='[amiboot] image_convert_timeout')
            with sandbox.Run(inst.image_ref, lim) as r:
                r.execute(['qemu-img', 'resize', '-q',
                           disk_mod.sandboxed_filename(
                               r, self.path, 'qcow2', base, write=True),
                           str(size)])
            if not CONF.amiboot.grow_filesystem:
                return
            if _guest_layers(inst.uuid) is not None:
                # The layer's grow: the ARI grows it at the next boot.
                LOG.info("AMI disk of %(uuid)s grown from %(old)d to "
                         "%(new)d bytes; its ARI grows the filesystem",
                         {'uuid': inst.uuid, 'old': current, 'new': size})
                return
            with attach.attached(self.path, 'qcow2', CONF, backing=base,
                                 image=inst.image_ref) as target:
                # The disk has been used: a full e2fsck first.
                grown = grow.grow(target, instance=inst.uuid,
                                  image=inst.image_ref)
        LOG.info("AMI disk of %(uuid)s grown from %(old)d to %(new)d bytes"
                 "%(fs)s", {'uuid': inst.uuid, 'old': current, 'new': size,
                            'fs': ' with its filesystem' if grown else ''})


class AmibootFlat(imagebackend.Flat):
    """nova's Flat (kernel and ramdisk copies), with the guest-mode layer.

    A ramdisk named in provisioned_in_guest() is its ARI (the base nova
    hands in, from our cache) followed by that instance's layer, written
    whole or not at all; every other file is nova's copy.
    """

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None):
        super().__init__(instance=instance, disk_name=disk_name, path=path,
                         disk_info_mapping=disk_info_mapping)
        self.instance = instance

    def create_image(self, prepare_template, base, size, *args, **kwargs):
        layers = (_guest_layers(self.instance.uuid)
                  if self.instance is not None else None)
        spec = (layers or {}).get(self.path)
        if spec is None or os.path.exists(self.path):
            return super().create_image(prepare_template, base, size,
                                        *args, **kwargs)
        if not os.path.exists(base):
            prepare_template(target=base, *args, **kwargs)
        spawn.instance_ramdisk(base, self.path, spec)
        LOG.info("Ramdisk %(path)s of %(uuid)s: its ARI and the "
                 "provisioning layer", {'path': self.path,
                                        'uuid': self.instance.uuid})
