"""The spawn pipeline: from an AMI id to an instance ready to boot.

1. fetch AMI, AKI and ARI into the cache (verified, inspected, once);
2. make the instance disk (qcow2 overlay over the raw base, or a copy): a
   copy of the base's grown template for this size where there is one
   (grow.grown_disk), so the filesystem is grown already;
3. attach it (nbd or FUSE), grow the filesystem (unless the template did),
   inject key, hostname, password, user data; detach;
4. link kernel and ramdisk into the instance dir and write the domain XML.

That is the host route of provisioning. In the guest route
(``[amiboot] provision``, provision_mode()) steps 2-3 are a plain overlay
at the flavor size, nothing attached and no filesystem tool run on it, and
the instance's ramdisk copy is its ARI followed by the per-instance layer
(nova_amiboot.layer) that the ARI's /init applies at boot.

Cheap checks (boot parameters, image metadata, flavor size) come before any
disk work. On failure the instance directory is removed whole; the cache
keeps only complete, checked bases.
"""

from concurrent import futures
import dataclasses
import errno
import functools
import os
import shutil
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging
from oslo_utils import units

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot import disk as disk_mod
from nova_amiboot import domain
from nova_amiboot import exception
from nova_amiboot import grow
from nova_amiboot import inject
from nova_amiboot import layer
from nova_amiboot import meta
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

GiB = units.Gi


@dataclasses.dataclass
class Flavor:
    name: str
    root_gb: int
    memory_mb: int
    vcpus: int


@dataclasses.dataclass
class InstanceRequest:
    uuid: str
    name: str
    image_id: str
    flavor: Flavor
    key: str = None
    password: str = None
    hostname: str = None
    user_data: bytes = None
    boot_params: tuple = ()
    network: domain.Network = dataclasses.field(
        default_factory=domain.Network)
    # The libvirt domain's name when it differs from ``name`` (which
    # errors and logs use).
    domain_name: str = None


@dataclasses.dataclass(frozen=True)
class BootSettings:
    """What a front end decides for its boots, beside the request.

    The ``amiboot`` command takes them from its own [local] group; nova
    builds its domains itself and never reads them.
    """
    virt_type: str = 'kvm'
    default_cmdline: str = 'root=/dev/vda console=tty0 console=ttyS0'
    disk_mode: str = 'overlay'
    vnc: bool = False


@dataclasses.dataclass
class Prepared:
    instance_dir: str
    disk: str
    disk_format: str
    kernel: str
    ramdisk: str
    cmdline: str
    console_log: str
    xml: str
    grown: bool
    timings: dict
    # 'host' (grown and written here) or 'guest' (by the ARI, at boot).
    provision: str = 'host'


def private_copy(src, dst):
    """The instance's own copy ``dst`` of the cached kernel or ramdisk.

    A copy, as nova makes (its Flat backend), not a hard link: libvirt
    chowns the domain's kernel and initrd to the QEMU user while the guest
    runs, and through a link that would hand the shared base to every
    guest's QEMU to write. Written aside and renamed: whole or absent.
    The copy names its base, so that the cache still counts the base as
    used by this instance (as nova's image cache manager does for an
    instance's kernel_id and ramdisk_id).
    """
    tmp = dst + '.part'
    try:
        with open(src, 'rb') as s, open(tmp, 'wb') as d:
            utils.clone_or_copy(s, d)
        os.chmod(tmp, 0o644)
        meta.record(tmp, meta.USED_BASE, os.path.basename(src))
        os.rename(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fetch_triplet(cache, image_id, flavor=None, instance='?', facts=True):
    """Fetch AMI, AKI, ARI; return (ami meta, root, kernel, ramdisk).

    With ``flavor``, an AMI larger than its root disk is refused before it
    is converted or cached (a refused image leaves nothing in ``_base``).
    ``facts``: see ImageCache.fetch (False on the guest route).
    """
    ami = cache.source.get_meta(image_id)
    if not ami.kernel_id or not ami.ramdisk_id:
        raise exception.InvalidImage(
            image=image_id, reason="it is not an AMI: kernel_id and "
            "ramdisk_id properties are required")
    limit = flavor.root_gb * GiB if flavor else None
    try:
        root = cache.fetch(image_id, 'ami', max_virtual_size=limit,
                           facts=facts)
    except exception.ImageTooLarge as e:
        if limit is None or e.kwargs.get('limit') != limit:
            raise
        raise exception.FlavorDiskTooSmall(instance=instance, flavor=limit,
                                           needed=e.kwargs['size'],
                                           image=image_id)
    kernel = cache.fetch(ami.kernel_id, 'aki')
    ramdisk = cache.fetch(ami.ramdisk_id, 'ari')
    return ami, root, kernel, ramdisk


PROVISION_PROPERTY = 'amiboot_provision'
PROVISION_VALUES = ('guest', 'host')


def _image_label(meta):
    if meta.name and meta.name != meta.id:
        return '%s (%s)' % (meta.name, meta.id)
    return meta.id


def declared_provision(ami, ari=None):
    """What the image declares: 'guest', 'host' or None.

    The property ``amiboot_provision`` of the AMI, else of its ARI (image
    metadata only: the ARI's bytes are never read for it). Any other value
    is refused, naming the image that carries it.
    """
    for image in (ami, ari):
        if image is None:
            continue
        value = image.properties.get(PROVISION_PROPERTY)
        if value is None:
            continue
        if value not in PROVISION_VALUES:
            raise exception.InvalidImage(
                image=_image_label(image), reason="property %s=%s is not "
                "one of %s" % (PROVISION_PROPERTY, domain.shown(value),
                               ', '.join(PROVISION_VALUES)))
        return value
    return None


def ramdisk_meta(source, ami):
    """The ARI's metadata, or None when the AMI names none."""
    return source.get_meta(ami.ramdisk_id) if ami.ramdisk_id else None


def provision_mode(conf, ami, ari=None, instance='?'):
    """'host' or 'guest': where instance ``instance`` of ``ami`` is set up.

    ``[amiboot] provision``: host and guest are forced (guest refuses an
    image that does not declare it, GuestProvisionNotDeclared); auto is
    guest when the image declares it (declared_provision()), else host.
    """
    wanted = conf.amiboot.provision
    if wanted == 'host':
        return 'host'
    declared = declared_provision(ami, ari)
    if declared == 'guest':
        return 'guest'
    if wanted == 'guest':
        raise exception.GuestProvisionNotDeclared(
            instance=instance, image=_image_label(ami))
    return 'host'


def provision_spec(req, conf, files=None):
    """The layer.Spec of ``req`` (what the host route would inject).

    The same options decide what goes in: inject_key, inject_hostname,
    inject_password (hashed here: the layer carries no clear password),
    grow_filesystem; the user data and ``files`` always. Refused with
    InvalidProvisionSpec naming the instance.
    """
    password_hash = None
    if req.password and conf.amiboot.inject_password:
        try:
            password_hash = inject.hash_password(req.password)
        except (OSError, ValueError, UnicodeError) as e:
            raise exception.InvalidProvisionSpec(
                instance=req.name, reason="cannot hash the password: %s" % e)
    hostname = None
    if req.hostname and conf.amiboot.inject_hostname:
        hostname = req.hostname.split('.')[0]
    # nova keeps a key pair's public key as given, usually ending in a
    # newline (the host route strips it too); a newline inside stays
    # refused by the layer's grammar.
    key = req.key.strip() if isinstance(req.key, str) else req.key
    user_data = req.user_data
    if isinstance(user_data, str):
        user_data = user_data.encode('utf-8')
    try:
        return layer.Spec(
            instance=req.uuid,
            ssh_keys=[key] if key and conf.amiboot.inject_key
            else [],
            hostname=hostname, password_hash=password_hash,
            user_data=user_data, files=list(files or ()),
            grow=conf.amiboot.grow_filesystem,
            # The seed's, as the host route writes it (inject_user_data).
            local_hostname=req.hostname or req.name)
    except exception.InvalidProvisionSpec as e:
        # The layer names the instance by its id (the NoCloud
        # instance-id); the user knows it by its name.
        raise exception.InvalidProvisionSpec(
            instance=req.name, reason=e.kwargs.get('reason', e))


def instance_ramdisk(ari_path, dest, spec):
    """The guest route's private ramdisk copy: the ARI, then the layer.

    Named as a copy of its base, as private_copy() does.
    """
    return layer.write_instance_ramdisk(
        ari_path, dest, spec, xattrs={
            meta.USED_BASE: os.path.basename(ari_path).encode()})


def wants(req, conf):
    """What to inject for ``req``, as words for an error message."""
    return [w for w, v in (('SSH key', req.key and conf.amiboot.inject_key),
                           ('password', req.password
                            and conf.amiboot.inject_password),
                           ('hostname', req.hostname
                            and conf.amiboot.inject_hostname),
                           ('user data', req.user_data)) if v]


def customise(target, req, conf, facts, grown=False, selinux=None,
              known=None):
    """Grow and inject on an attached disk; return True if grown.

    ``facts``: grow.base_facts() of the base the disk was made from.
    ``grown``: the disk is a grown template's copy (nothing to grow).
    ``selinux``: whether the image has /etc/selinux, when known already.
    ``known``: the template's record of files read already (its 'known').
    """
    fstype = facts['fstype']
    is_ext = fstype in grow.EXT_TYPES
    if conf.amiboot.grow_filesystem and not grown:
        grown = grow.grow(target, instance=req.name, image=req.image_id,
                          fstype=fstype, checked=facts['clean'])
    wanted = wants(req, conf)
    if not wanted:
        return grown
    if is_ext and not grown and not facts['clean']:
        # Not grown, so not checked: a base that e2fsck changes (a journal
        # to replay, above all) is checked before anything is written, or
        # the guest's kernel replays the journal over what we wrote.
        grow.check(target, instance=req.name, image=req.image_id)
    if not is_ext:
        raise exception.InjectionFailed(
            instance=req.name, what=', '.join(wanted),
            reason="filesystem %s of image %s cannot be written from user "
                   "space (ext2/3/4 only); with an ARI that provisions in "
                   "the guest, declare amiboot_provision=guest on the image "
                   "([amiboot] provision = auto or guest)"
                   % (fstype, req.image_id))
    fs = inject.GuestFS(target, instance=req.name, known=known)
    if req.key and conf.amiboot.inject_key:
        inject.inject_key(fs, req.key)
    if req.hostname and conf.amiboot.inject_hostname:
        inject.inject_hostname(fs, req.hostname)
    if req.password and conf.amiboot.inject_password:
        inject.inject_password(fs, req.password)
    if req.user_data:
        inject.inject_user_data(fs, req.user_data, req.uuid,
                                req.hostname or req.name)
    if selinux is not False:
        inject.arrange_relabel(fs)
    return grown


def _disk_full(e, path=None):
    """True if ``e`` came from a full filesystem (that of ``path``)."""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    if isinstance(e, exception.ToolOutOfSpace):
        return True
    # A tool that met ENOSPC under a FUSE export may only report an
    # inconsistency: then the filesystem's free space tells.
    return path is not None and \
        isinstance(e, exception.AmibootException) and \
        not isinstance(e, exception.DiskFull) and utils.fs_full(path)


def _claim_instance_dir(idir, req):
    """Create the instance dir, marked as being built by this process.

    The mark (meta.BUILDING, an owner record) stays until the caller
    calls finished(): a directory whose mark names a dead process is what a
    killed spawn left (its own clean-up never ran). A retry for the same
    instance starts again from nothing; interrupted() finds the others.
    """
    if os.path.exists(idir):
        if not interrupted(idir):
            raise exception.InvalidInput(
                reason="instance %s: %s exists already" % (req.name, idir))
        LOG.warning("Instance %(name)s: removing %(dir)s left by an "
                    "interrupted spawn", {'name': req.name, 'dir': idir})
        shutil.rmtree(idir)
    # Made aside and renamed: the directory never exists without its mark.
    tmp = idir + '.new-%d' % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp, mode=0o755)
        meta.write_owner(os.path.join(tmp, meta.BUILDING))
        os.rename(tmp, idir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise exception.DiskFull(
                path=os.path.dirname(idir),
                action="preparing instance %s" % req.name) from e
        raise


def interrupted(idir):
    """True if ``idir`` is an instance dir whose spawn died midway."""
    return meta.owner_dead(os.path.join(idir, meta.BUILDING))


def finished(idir):
    """The instance in ``idir`` is complete (its domain is defined)."""
    try:
        os.unlink(os.path.join(idir, meta.BUILDING))
    except FileNotFoundError:
        pass


def base_lock(cache, root):
    """The base's own cache lock (nova's name for it)."""
    return lockutils.lock(os.path.basename(root.path),
                          lock_file_prefix=cache_mod.LOCK_PREFIX,
                          external=True, lock_path=cache.lock_path)


def make_disk(conf, cache, req, root, facts, path, size=None, mode=None):
    """Create the instance disk; return (format, template facts or None).

    ``size``: bytes (default: the flavor's root disk); ``mode``: overlay
    (the default, and what nova's Qcow2 backend asks for) or copy (the
    amiboot command's ``[local] disk_mode = copy``). A grown template is
    used for ext2/3/4 overlays that are to be grown, of a size of whole
    GiB; otherwise (or where the base cannot carry an identity) the disk is a
    plain overlay or copy that customise() grows.
    """
    size = size or req.flavor.root_gb * GiB
    mode = mode or 'overlay'
    if mode == 'overlay' and size % GiB == 0 and \
            conf.amiboot.grow_filesystem and \
            facts['fstype'] in grow.EXT_TYPES:
        # The base stays while a template of it is built.
        lock = functools.partial(base_lock, cache, root)
        tfacts = grow.grown_disk(root.path, path, size, facts, conf, lock,
                                 instance=req.name, image=req.image_id)
        if tfacts is not None:
            return 'qcow2', tfacts
    fmt = disk_mod.create(root.path, path, size, mode=mode,
                          instance=req.name, image=req.image_id,
                          cluster_size=conf.amiboot.overlay_cluster_size)
    return fmt, None


def base_facts(conf, cache, req, root):
    """grow.base_facts() of the AMI's base, checked once under its lock."""
    facts = grow.known_facts(root.path)
    if facts is not None:
        return facts
    # Once per base: concurrent first spawns wait for one check.
    with base_lock(cache, root):
        try:
            return grow.base_facts(root.path, conf, image=req.image_id)
        except (OSError, exception.AmibootException) as e:
            # Its scratch overlay is in the instances path: a full disk
            # there is met here first.
            if _disk_full(e, cache.instances_path):
                raise exception.DiskFull(
                    path=cache.instances_path,
                    action="checking image %s for instance %s"
                    % (req.image_id, req.name)) from e
            raise


@dataclasses.dataclass
class Disk:
    path: str
    format: str
    grown: bool
    # Made from the base's grown template.
    from_template: bool


def prepare_disk(conf, cache, req, root, path, size=None, mode=None,
                 files=None, attach_method=None, timings=None):
    """Make the instance disk ``path`` of ``req`` over ``root``, ready.

    The one pipeline of both front ends: the base's facts (checked once,
    under its lock), the disk (a grown template's copy, an overlay or a
    copy), then, attached only if something is to be done, grow and
    inject (key, password, hostname, user data and nova's injected
    ``files``, a list of (path, bytes)); synced. Returns a Disk.
    ``timings``: a dict that gets the seconds of 'facts', 'disk' and
    'customise'.
    """
    timings = {} if timings is None else timings
    t = time.monotonic()
    facts = base_facts(conf, cache, req, root)
    timings['facts'] = time.monotonic() - t
    t = time.monotonic()
    fmt, tfacts = make_disk(conf, cache, req, root, facts, path, size=size,
                            mode=mode)
    timings['disk'] = time.monotonic() - t
    t = time.monotonic()
    grown = tfacts is not None
    if tfacts is None or wants(req, conf) or files:
        with attach.attached(path, fmt, conf, method=attach_method,
                             backing=root.path, image=req.image_id) as tg:
            grown = customise(tg, req, conf, facts, grown=grown,
                              selinux=(tfacts or {}).get('selinux'),
                              known=(tfacts or {}).get('known'))
            if files:
                inject.inject_files(inject.GuestFS(tg, instance=req.name),
                                    files)
    # (A template's copy is grown already: nothing to write, no attach.)
    # Durable before anyone boots from it, whichever way it was reached.
    utils.fdatasync(path)
    timings['customise'] = time.monotonic() - t
    return Disk(path, fmt, grown, tfacts is not None)


def guest_disk(conf, cache, req, root, path, size=None, mode=None,
               timings=None):
    """The guest route's instance disk: a plain overlay (or copy), as is.

    At the flavor's size; nothing attached, no tool run on its filesystem
    (the ARI grows it at boot). An overlay is a copy of the base's plain
    template for the size (grow.plain_disk) where the base can have one.
    Returns a Disk (not grown).
    """
    timings = {} if timings is None else timings
    t = time.monotonic()
    size = size or req.flavor.root_gb * GiB
    mode = mode or 'overlay'
    fmt, from_template = None, False
    if mode == 'overlay':
        from_template = grow.plain_disk(
            root.path, path, size, conf,
            functools.partial(base_lock, cache, root),
            instance=req.name, image=req.image_id)
        fmt = 'qcow2' if from_template else None
    if fmt is None:
        fmt = disk_mod.create(root.path, path, size, mode=mode,
                              instance=req.name, image=req.image_id,
                              cluster_size=conf.amiboot.overlay_cluster_size)
    utils.fdatasync(path)
    timings['disk'] = time.monotonic() - t
    return Disk(path, fmt, False, from_template)


def prepare(conf, cache, req, virt_type=None, attach_method=None,
            owner=None, settings=None):
    """Prepare instance ``req`` under the cache's instances dir.

    ``owner``: the domain.Owner mark the domain XML carries; ``settings``:
    the front end's BootSettings (``virt_type``, when given, wins over
    theirs).
    """
    settings = settings or BootSettings()
    if virt_type:
        settings = dataclasses.replace(settings, virt_type=virt_type)
    timings = {}
    t0 = time.monotonic()
    ami = cache.source.get_meta(req.image_id)
    cmdline = domain.build_cmdline(
        settings.default_cmdline, ami.properties.get('os_command_line'),
        req.boot_params, conf.amiboot.allowed_boot_params,
        instance=req.name, image=req.image_id)
    # Decided, and the layer checked, before any disk work.
    layer_spec = None
    if provision_mode(conf, ami, ramdisk_meta(cache.source, ami),
                      req.name) == 'guest':
        layer_spec = provision_spec(req, conf)
    # Pinned until the disk and the links mark the bases as used: a cache
    # clean-up running meanwhile must not take them.
    with cache.pinning():
        return _prepare(conf, cache, req, cmdline, settings, attach_method,
                        timings, t0, owner, layer_spec)


def _prepare(conf, cache, req, cmdline, settings, attach_method, timings,
             t0, owner, layer_spec=None):
    _ami, root, kernel, ramdisk = fetch_triplet(cache, req.image_id,
                                                req.flavor, req.name,
                                                facts=layer_spec is None)
    timings['fetch'] = time.monotonic() - t0

    idir = os.path.join(cache.instances_path, req.uuid)
    _claim_instance_dir(idir, req)
    kpath = os.path.join(idir, 'kernel')
    rpath = os.path.join(idir, 'ramdisk')
    # The kernel and ramdisk copies (some MiB) need no disk: they run
    # while the disk is attached and written (the tools run as other
    # processes), off the critical path.
    pool = futures.ThreadPoolExecutor(thread_name_prefix='amiboot-copy')
    copies = [pool.submit(private_copy, kernel.path, kpath)]
    if layer_spec is None:
        copies.append(pool.submit(private_copy, ramdisk.path, rpath))
    else:
        # The guest route: the ARI and the instance's layer.
        copies.append(pool.submit(instance_ramdisk, ramdisk.path, rpath,
                                  layer_spec))
    # No more work for it: its threads end with the copies.
    pool.shutdown(wait=False)
    try:
        disk = os.path.join(idir, 'disk')
        if layer_spec is None:
            made = prepare_disk(conf, cache, req, root, disk,
                                mode=settings.disk_mode,
                                attach_method=attach_method,
                                timings=timings)
        else:
            made = guest_disk(conf, cache, req, root, disk,
                              mode=settings.disk_mode, timings=timings)
        fmt, grown = made.format, made.grown
        for copy in copies:
            copy.result()
        log = os.path.join(idir, 'console.log')
        spec = domain.DomainSpec(
            name=req.domain_name or req.name, uuid=req.uuid,
            memory_mb=req.flavor.memory_mb,
            vcpus=req.flavor.vcpus, kernel=kpath, initrd=rpath,
            cmdline=cmdline, disk_path=disk, disk_format=fmt,
            console_log=log,
            backing_file=root.path if fmt == 'qcow2' else None,
            virt_type=settings.virt_type,
            network=req.network, vnc=settings.vnc,
            metadata={'image': req.image_id, 'flavor': req.flavor.name},
            owner=owner)
        xml = domain.build_domain_xml(spec)
        # Complete or absent: a killed spawn never leaves half an XML.
        xml_path = os.path.join(idir, 'libvirt.xml')
        with open(xml_path + '.part', 'w') as f:
            f.write(xml)
            f.flush()
            os.fsync(f.fileno())
        os.replace(xml_path + '.part', xml_path)
    except BaseException as e:
        # Not removed under a copy still writing into it.
        futures.wait(copies)
        shutil.rmtree(idir, ignore_errors=True)
        if _disk_full(e, cache.instances_path):
            # Whichever tool met it (qemu-img, the FUSE export under
            # e2fsprogs, our own writes), the cause is the same.
            raise exception.DiskFull(
                path=cache.instances_path,
                action="preparing instance %s" % req.name) from e
        raise
    timings['total'] = time.monotonic() - t0
    mode = 'host' if layer_spec is None else 'guest'
    LOG.info("Instance %(name)s prepared in %(t).3fs (%(steps)s; "
             "provisioning: %(mode)s)",
             {'name': req.name, 't': timings['total'],
              'steps': ', '.join('%s %.3fs' % kv for kv in timings.items()),
              'mode': mode})
    return Prepared(idir, disk, fmt, kpath, rpath, cmdline, log, xml, grown,
                    timings, mode)
