"""LibvirtDriver for the AMI boot method.

What changes for instances whose image has a kernel_id (AMIs); every other
instance is stock nova:

- kernel and ramdisk enter ``_base`` through the core's cache, with the
  same format inspection as the root disk (nova fetches them uninspected);
- the root disk comes from AmibootQcow2: a qcow2 overlay over the raw base,
  the filesystem grown to the flavor, the key injected from user space;
- the kernel command line gets the per-instance boot parameters (metadata
  key ``amiboot_boot_params`` and ``bootparams=`` lines of the user data),
  through ``[amiboot] allowed_boot_params``, checked before any disk work;
- the domain XML states the shared raw base under each qcow2 disk, with
  libvirt's DAC relabelling off for it (see shared_bases_unlabelled).
"""

import base64
import binascii
import os

from nova import exception as nova_exception
from nova import objects
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import utils as libvirt_utils
from lxml import etree
from oslo_log import log as logging

from nova_amiboot import bootparams
from nova_amiboot.conf import CONF
from nova_amiboot import domain
from nova_amiboot import exception
from nova_amiboot import images as images_mod
from nova_amiboot import qemuimg
from nova_amiboot import spawn
from nova_amiboot.virt import errors
from nova_amiboot.virt import imagebackend

LOG = logging.getLogger(__name__)

METADATA_KEY = bootparams.METADATA_KEY


def boot_params(instance):
    params = bootparams.from_metadata(instance.metadata)
    if instance.user_data:
        try:
            user_data = base64.b64decode(instance.user_data)
        except (binascii.Error, ValueError):
            user_data = b''
        params.extend(bootparams.from_user_data(
            user_data, instance=instance.uuid))
    return params


def os_command_line(instance):
    """The image's os_command_line property of ``instance``, or None."""
    props = objects.ImageMeta.from_instance(instance).properties
    if props.obj_attr_is_set('os_command_line'):
        return props.os_command_line
    return None


def _shared_base(disk_path, base_dir):
    """The raw base in ``base_dir`` under qcow2 ``disk_path``, or None.

    Read from the qcow2 header (written by nova or by us, never by the
    guest), without opening the backing file: a hard reboot writes the XML
    before it fetches a base that was aged out. Only a raw file directly in
    the image cache directory qualifies (resolved, no symlink): the chain
    then ends at it, which is what the empty <backingStore/> states.
    """
    try:
        # A disk the guest's QEMU can write: read in the sandbox.
        info = qemuimg.info(disk_path, 'qcow2', force_share=True,
                            timeout=60)
    except (exception.AmibootException, ValueError) as e:
        LOG.warning("Cannot read the backing file of %(disk)s: %(err)s",
                    {'disk': disk_path, 'err': e})
        return None
    # Read through a descriptor: a relative name is relative to the disk.
    backing = info.backing_file
    if backing and not os.path.isabs(backing):
        backing = os.path.join(os.path.dirname(disk_path), backing)
    if not backing or info.backing_file_format != 'raw':
        return None
    if (os.path.islink(backing)
            or os.path.dirname(os.path.realpath(backing))
            != os.path.realpath(base_dir)
            or (os.path.lexists(backing) and not os.path.isfile(backing))):
        return None
    return backing


def shared_bases_unlabelled(xml, base_dir, instance='?'):
    """``xml`` with the raw base of each qcow2 file disk stated, unlabelled.

    nova writes the overlay's <source> only, so libvirt probes the chain
    and its DAC driver chowns every file of it to the QEMU user while the
    guest runs: the raw base in _base, shared by every instance of the
    image, would be writable by each guest's QEMU. The <backingStore> of
    domain.add_backing_store (as the amiboot command writes for its own
    domains) keeps the base root-owned and read-only; only the instance's
    own overlay is relabelled.
    """
    dom = etree.fromstring(xml.encode('utf-8'),
                           etree.XMLParser(resolve_entities=False,
                                           no_network=True))
    disks = []
    for disk in dom.iterfind('devices/disk'):
        drv, src = disk.find('driver'), disk.find('source')
        if (disk.get('type') == 'file' and drv is not None
                and drv.get('type') == 'qcow2' and src is not None
                and src.get('file') and os.path.exists(src.get('file'))):
            disks.append(src.get('file'))
    for path in disks:
        base = _shared_base(path, base_dir)
        if base:
            xml = domain.add_backing_store(xml, path, base,
                                           instance=instance)
    return xml


def copy_destination_xml(path, backing):
    """<disk> XML of a block copy's destination ``path`` over ``backing``.

    The copy's chain stated (as for the domain's own disks) so that
    libvirt neither probes it nor relabels the shared raw base.
    """
    dom = etree.Element('domain')
    disk = etree.SubElement(etree.SubElement(dom, 'devices'), 'disk',
                            type='file', device='disk')
    etree.SubElement(disk, 'driver', name='qemu', type='qcow2')
    etree.SubElement(disk, 'source', file=path)
    xml = domain.add_backing_store(
        etree.tostring(dom, encoding='unicode'), path, backing)
    return etree.tostring(etree.fromstring(xml).find('devices/disk'),
                          encoding='unicode', with_tail=False)


class _UnlabelledCopyDevice(object):
    """nova's BlockDevice whose snapshot copy leaves the shared base alone.

    nova's live snapshot mirrors the root disk into a new qcow2 over the
    same raw base with blockRebase, which names only the destination's
    path: libvirt then probes that chain and its DAC driver chowns the
    base to the QEMU user (and leaves it so). The same copy is made with
    blockCopy and the chain stated, base unlabelled.
    """

    def __init__(self, dev, base_dir):
        self._dev = dev
        self._base_dir = base_dir

    def __getattr__(self, name):
        return getattr(self._dev, name)

    def rebase(self, base, shallow=False, reuse_ext=False, copy=False,
               relative=False, copy_dev=False):
        backing = None
        if copy and shallow and reuse_ext and not (relative or copy_dev):
            backing = _shared_base(base, self._base_dir)
        if not backing:
            return self._dev.rebase(base, shallow=shallow,
                                    reuse_ext=reuse_ext, copy=copy,
                                    relative=relative, copy_dev=copy_dev)
        import libvirt
        flags = (libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
                 | libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT)
        return self._dev._guest._domain.blockCopy(
            self._dev._disk, copy_destination_xml(base, backing), {},
            flags)


class _UnlabelledCopyGuest(object):
    """nova's Guest, its block devices as _UnlabelledCopyDevice."""

    def __init__(self, guest, base_dir):
        self._guest = guest
        self._base_dir = base_dir

    def __getattr__(self, name):
        return getattr(self._guest, name)

    def get_block_device(self, disk):
        return _UnlabelledCopyDevice(self._guest.get_block_device(disk),
                                     self._base_dir)


def _base_dir():
    return os.path.join(CONF.instances_path,
                        CONF.image_cache.subdirectory_name)


def _fetch_or_copy(cache, image_id, fmt, source_host=None):
    """cache.fetch, or the base copied from ``source_host`` when gone.

    A resize or cold migration (nova's fallback_from_host) to a host
    without the base, of a kernel or ramdisk deleted from Glance since:
    nova copies a root disk's base from the source host then, but fetches
    kernel and ramdisk again and fails the move. Their base is copied from
    the source (the same instances path there) and inspected as a fetch
    is (ImageCache.adopt).
    """
    try:
        return cache.fetch(image_id, fmt)
    except exception.ImageNotFound:
        if not source_host:
            raise
    base = cache.path_for(image_id)
    LOG.info("Image %(image)s is gone from Glance: copying its base from "
             "%(host)s", {'image': image_id, 'host': source_host})
    return cache.adopt(image_id, fmt, lambda tmp: libvirt_utils.copy_image(
        src=base, dest=tmp, host=source_host, receive=True))


class AmibootLibvirtDriver(libvirt_driver.LibvirtDriver):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        # images_type stays qcow2; only its class changes.
        for name, stock, ours in (
                ('qcow2', libvirt_driver.imagebackend.Qcow2,
                 imagebackend.AmibootQcow2),
                ('default', libvirt_driver.imagebackend.Qcow2,
                 imagebackend.AmibootQcow2),
                ('raw', libvirt_driver.imagebackend.Flat,
                 imagebackend.AmibootFlat),
                ('flat', libvirt_driver.imagebackend.Flat,
                 imagebackend.AmibootFlat)):
            if self.image_backend.BACKEND.get(name) is stock:
                self.image_backend.BACKEND[name] = ours

    def _cmdline(self, instance, base):
        return domain.build_cmdline(base, None, boot_params(instance),
                                    CONF.amiboot.allowed_boot_params,
                                    instance=instance.uuid)

    def _check_boot_params(self, instance):
        """Refuse a denied boot parameter before anything is changed.

        The image's os_command_line is checked with them: nova writes it
        into the domain XML only later, outside any error mapping, where a
        line XML cannot hold would reschedule the build instead of ending
        it with the reason.
        """
        if instance.kernel_id:
            with errors.as_nova_errors(instance.image_ref):
                domain.build_cmdline('', os_command_line(instance),
                                     boot_params(instance),
                                     CONF.amiboot.allowed_boot_params,
                                     instance=instance.uuid,
                                     image=instance.image_ref)

    def _create_guest(self, context, xml, instance, *args, **kwargs):
        # Every domain nova defines for an instance goes through here with
        # its XML: spawn, hard reboot (and start, resume on host boot),
        # rescue and unrescue, the finish of a resize or cold migration and
        # of its revert. (The XML of a live migration and of nova's volume
        # swap and live snapshot is libvirt's own, which keeps the
        # <backingStore> given here; the live snapshot's mirror is made in
        # _live_snapshot.)
        if xml and instance.kernel_id:
            with errors.as_nova_errors(instance.image_ref):
                xml = shared_bases_unlabelled(xml, _base_dir(),
                                              instance=instance.uuid)
        return super()._create_guest(context, xml, instance, *args,
                                     **kwargs)

    def _live_snapshot(self, context, instance, guest, *args, **kwargs):
        # The snapshot's temporary mirror over the shared base: see
        # _UnlabelledCopyDevice.
        if instance.kernel_id:
            guest = _UnlabelledCopyGuest(guest, _base_dir())
        return super()._live_snapshot(context, instance, guest, *args,
                                      **kwargs)

    def cache_image(self, context, image_id):
        """Pre-cache ``image_id`` in ``_base`` (compute API 2.81).

        ``openstack aggregate cache image`` calls this on every host of the
        aggregate. An AMI (an image with a kernel_id) enters ``_base`` with
        its AKI and ARI through the core's cache, as a spawn fetches them
        (its locks, verification, format inspection; the AMI's base checked
        as the spawn's provisioning route needs), so that a later boot here
        downloads nothing. An AKI or ARI alone enters the same way. nova's
        contract: True when anything was fetched, False when everything was
        cached already (each existing base re-inspected and its timestamp
        renewed, as nova renews it). Every other image is nova's.
        """
        cache = imagebackend.image_cache(context)
        with errors.as_nova_errors(image_id):
            meta = cache.source.get_meta(image_id)
            if meta.kernel_id:
                parts = self._triplet_parts(cache, meta)
            elif meta.disk_format in ('aki', 'ari'):
                parts = [(image_id, meta.disk_format, True)]
            else:
                return super().cache_image(context, image_id)
            fetched = []
            for part_id, fmt, facts in parts:
                if cache.fetch(part_id, fmt, facts=facts).fetched:
                    fetched.append(part_id)
        LOG.info("Image %(image)s cached by request: %(fetched)s fetched, "
                 "%(had)s already cached",
                 {'image': image_id, 'fetched': ', '.join(fetched) or 'none',
                  'had': ', '.join(p[0] for p in parts
                                   if p[0] not in fetched) or 'none'})
        return bool(fetched)

    @staticmethod
    def _triplet_parts(cache, ami):
        """[(image id, expected format, facts)] of AMI ``ami``'s triplet.

        Kernel and ramdisk first: a triplet with a part gone fails before
        the AMI, the large one, is downloaded. The AMI's base gets its
        facts unless the image is provisioned in the guest (as
        _create_ami_disk fetches it); an image that no boot would accept
        (a provisioning declaration refused) is refused here too, before
        anything is fetched.
        """
        guest = False
        if ami.ramdisk_id:
            # As _provision_mode decides it for an instance of the image.
            try:
                ari = spawn.ramdisk_meta(cache.source, ami)
            except exception.ImageNotFound:
                ari = None
            guest = spawn.provision_mode(
                CONF, ami, ari, instance='(image pre-cache)') == 'guest'
        parts = [(ami.kernel_id, 'aki', True)]
        if ami.ramdisk_id:
            parts.append((ami.ramdisk_id, 'ari', True))
        return parts + [(ami.id, 'ami', not guest)]

    def _cache_kernel_ramdisk(self, context, instance, kernel_id,
                              ramdisk_id, suffix=''):
        """kernel and ramdisk (instance files) from our inspected cache.

        nova's own route (fetch_raw_image) inspects neither.
        """
        inst_dir = libvirt_utils.get_instance_path(instance)
        cache = imagebackend.image_cache(context, instance.trusted_certs)
        with errors.as_nova_errors(instance.image_ref):
            for name, image_id, fmt in (('kernel', kernel_id, 'aki'),
                                        ('ramdisk', ramdisk_id, 'ari')):
                if not image_id:
                    continue
                base = cache.fetch(image_id, fmt)
                path = os.path.join(inst_dir, name + suffix)
                if os.path.exists(path):
                    continue
                if name == 'ramdisk' and self._provision_mode(
                        cache, instance, {'image_id': instance.image_ref,
                                          'ramdisk_id': image_id}) == 'guest':
                    # A live migration's destination, a hard reboot that
                    # lost it: the layer that only grows the root.
                    spawn.instance_ramdisk(base.path, path,
                                           self._layer_spec(instance, None))
                else:
                    spawn.private_copy(base.path, path)

    def _create_image(self, context, instance, disk_mapping,
                      injection_info=None, suffix='', disk_images=None,
                      *args, **kwargs):
        layers = None
        if instance.kernel_id:
            images = disk_images or {'image_id': instance.image_ref,
                                     'kernel_id': instance.kernel_id,
                                     'ramdisk_id': instance.ramdisk_id}
            # Refuse a denied parameter before any download or disk work.
            self._check_boot_params(instance)
            if images.get('kernel_id'):
                # Into _base, inspected; nova then copies them from there.
                cache = imagebackend.image_cache(context,
                                                 instance.trusted_certs)
                source_host = kwargs.get('fallback_from_host')
                if source_host is None and len(args) > 1:
                    source_host = args[1]
                with errors.as_nova_errors(instance.image_ref):
                    _fetch_or_copy(cache, images['kernel_id'], 'aki',
                                   source_host)
                    if images.get('ramdisk_id'):
                        _fetch_or_copy(cache, images['ramdisk_id'], 'ari',
                                       source_host)
                    if self._provision_mode(cache, instance,
                                            images) == 'guest':
                        path = os.path.join(
                            libvirt_utils.get_instance_path(instance),
                            'ramdisk' + suffix)
                        layers = {path: self._layer_spec(instance,
                                                         injection_info)}
        with imagebackend.injection(instance.uuid, injection_info), \
                imagebackend.provisioned_in_guest(
                    instance.uuid if layers else None, layers or {}):
            return super()._create_image(
                context, instance, disk_mapping, injection_info, suffix,
                disk_images, *args, **kwargs)

    @staticmethod
    def _provision_mode(cache, instance, images):
        """'guest' or 'host' for the AMI and ARI of ``images``.

        From their Glance metadata (never from their bytes); an image
        gone from Glance counts as declaring nothing, except the AMI's
        own declaration, which nova keeps in the instance's system
        metadata.
        """
        if not images.get('ramdisk_id') or not images.get('image_id'):
            return 'host'
        metas = []
        for image_id in (images['image_id'], images['ramdisk_id']):
            try:
                metas.append(cache.source.get_meta(image_id))
            except exception.ImageNotFound:
                metas.append(None)
        ami, ari = metas
        if ami is None:
            declared = (instance.system_metadata or {}).get(
                'image_' + spawn.PROVISION_PROPERTY)
            ami = images_mod.ImageMeta(
                id=images['image_id'], name=images['image_id'],
                disk_format='ami', container_format='ami', size=None,
                properties={spawn.PROVISION_PROPERTY: declared}
                if declared else {})
        return spawn.provision_mode(CONF, ami, ari, instance.uuid)

    @staticmethod
    def _layer_spec(instance, injection_info):
        """The layer of ``instance``: what the host route would inject.

        With nova's injection_info (spawn, rebuild, evacuate, unshelve,
        rescue): the key, hostname, password and files, as the host
        route's options allow. Without it (the finish of a resize or cold
        migration: the ramdisk is made anew on the destination) only the
        grow, so that what the tenant changed since stays changed.
        """
        files = None
        req = spawn.InstanceRequest(
            uuid=instance.uuid, name=instance.uuid,
            image_id=instance.image_ref,
            flavor=spawn.Flavor(instance.flavor.name, instance.flavor.root_gb,
                                instance.flavor.memory_mb,
                                instance.flavor.vcpus))
        if injection_info is not None:
            req.key = instance.key_data
            req.hostname = instance.hostname
            req.password = injection_info.admin_pass
            if CONF.amiboot.inject_files:
                files = injection_info.files
        return spawn.provision_spec(req, CONF, files=files)

    def _hard_reboot(self, context, instance, *args, **kwargs):
        # Hard reboot and start rebuild the domain from current metadata
        # after destroying it: check first, so that the guest keeps
        # running (and the fault says why).
        self._check_boot_params(instance)
        return super()._hard_reboot(context, instance, *args, **kwargs)

    def _create_images_and_backing(self, context, instance, instance_dir,
                                   disk_info, *args, **kwargs):
        # The destination of a block live migration (and a hard reboot that
        # lost its disk): a plain overlay over the same base.
        with imagebackend.migration_target(instance.uuid):
            return super()._create_images_and_backing(
                context, instance, instance_dir, disk_info, *args, **kwargs)

    def _fetch_instance_kernel_ramdisk(self, context, instance,
                                       fallback_from_host=None):
        if instance.kernel_id:
            try:
                self._cache_kernel_ramdisk(context, instance,
                                           instance.kernel_id,
                                           instance.ramdisk_id)
            except nova_exception.ImageNotFound:
                # nova copies them from the source host.
                if not fallback_from_host:
                    raise
        return super()._fetch_instance_kernel_ramdisk(
            context, instance, fallback_from_host=fallback_from_host)

    def _set_guest_for_inst_kernel(self, instance, guest, inst_path,
                                   root_device_name, image_meta):
        super()._set_guest_for_inst_kernel(instance, guest, inst_path,
                                           root_device_name, image_meta)
        guest.os_cmdline = self._cmdline(instance, guest.os_cmdline)

    def _conf_non_lxc(self, guest, root_device_name, rescue, instance,
                      inst_path, image_meta, disk_info):
        ami_rescue = bool(rescue and rescue.get('kernel_id'))
        if ami_rescue:
            # A stable-device rescue keeps the instance's disks first and
            # adds the rescue disk last: the kernel must be told which one
            # is its root.
            rescue_disk = disk_info.get('mapping', {}).get('disk.rescue')
            if rescue_disk:
                root_device_name = '/dev/' + rescue_disk['dev']
        super()._conf_non_lxc(guest, root_device_name, rescue, instance,
                              inst_path, image_meta, disk_info)
        if ami_rescue and instance.kernel_id:
            # nova's rescue line drops the per-instance parameters.
            guest.os_cmdline = self._cmdline(instance, guest.os_cmdline)
