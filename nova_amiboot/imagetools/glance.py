"""AMI triplets between the local image store and Glance (openstacksdk).

upload: AKI (aki/aki), ARI (ari/ari), then the AMI (ami/ami) with
``kernel_id``/``ramdisk_id`` pointing at the Glance copies and the local
properties kept (``os_command_line``, ``hw_*``...). A part whose bytes are
in Glance already (same ``os_hash_value``, same disk_format, active) is
reused, not uploaded again: an interrupted upload resumes with what is
missing.

download: the reverse; the three parts go through the same checks as
``amiboot image import``.
"""

import contextlib
import io
import os
import shutil

from oslo_log import log as logging

from nova_amiboot import exception

LOG = logging.getLogger(__name__)

# Local bookkeeping that means nothing in Glance.
# spawn.PROVISION_PROPERTY (not imported: spawn pulls in the pipeline).
PROVISION_PROPERTY = 'amiboot_provision'
_LOCAL_ONLY = {'kernel_id', 'ramdisk_id', 'snapshot_of', 'base_image_ref'}
# Glance's own fields in an image's JSON; everything else is a property.
_GLANCE_FIELDS = {
    'id', 'name', 'status', 'visibility', 'protected', 'checksum',
    'os_hash_algo', 'os_hash_value', 'owner', 'size', 'virtual_size',
    'min_ram', 'min_disk', 'disk_format', 'container_format', 'created_at',
    'updated_at', 'tags', 'self', 'file', 'schema', 'direct_url',
    'locations', 'os_hidden', 'stores', 'kernel_id', 'ramdisk_id',
}


def connect(cloud_name):
    import openstack

    try:
        conn = openstack.connect(cloud=cloud_name)
        conn.authorize()
    except Exception as e:
        # openstacksdk raises many kinds; the user needs the cloud and why.
        raise exception.InvalidInput(
            reason="cannot reach cloud %s: %s" % (cloud_name, e))
    return conn


class _Reader(object):
    """A file for requests to stream, reporting bytes read."""

    def __init__(self, path, label, progress):
        self.f = open(path, 'rb')
        self.size = os.path.getsize(path)
        self.done = 0
        self.label = label
        self.progress = progress

    def read(self, n=-1):
        data = self.f.read(n)
        self.done += len(data)
        if self.progress:
            self.progress(self.label, self.done, self.size)
        return data

    def __len__(self):
        return self.size

    def close(self):
        self.f.close()


class _Writer(io.RawIOBase):
    """A file for openstacksdk to write into, reporting bytes written."""

    def __init__(self, path, label, total, progress):
        super().__init__()
        self.f = open(path, 'wb')
        self.done = 0
        self.label = label
        self.total = total
        self.progress = progress

    def writable(self):
        return True

    def write(self, data):
        self.f.write(data)
        self.done += len(data)
        if self.progress:
            self.progress(self.label, self.done, self.total)
        return len(data)

    def close(self):
        self.f.close()
        super().close()


@contextlib.contextmanager
def glance_errors(what):
    """openstacksdk's exceptions as ours, naming what was being done."""
    from openstack import exceptions as sdk_exc

    try:
        yield
    except sdk_exc.SDKException as e:
        raise exception.ImageDownloadFailed(image=what, reason=str(e))


def _raw(conn, image_id):
    """The image's JSON as Glance returns it (properties at top level)."""
    return conn.image.get('/images/%s' % image_id).json()


def _existing(conn, meta, want=None):
    """An active Glance image with these bytes (and ``want`` properties)."""
    for image in conn.image.images(os_hash_value=meta.os_hash_value):
        if (image.hash_value == meta.os_hash_value and
                image.disk_format == meta.disk_format and
                image.status == 'active'):
            if want:
                raw = _raw(conn, image.id)
                if any(raw.get(k) != v for k, v in want.items()):
                    continue
            return image
    return None


def _put(conn, meta, path, name, properties, progress, want=None):
    found = _existing(conn, meta, want)
    if found is not None:
        LOG.info("Image %(name)s: %(fmt)s already in Glance as %(id)s",
                 {'name': name, 'fmt': meta.disk_format, 'id': found.id})
        return found.id, 'reused'
    reader = _Reader(path, 'uploading %s' % name, progress)
    try:
        image = conn.image.create_image(
            name=name, data=reader, disk_format=meta.disk_format,
            container_format=meta.disk_format, allow_duplicates=True,
            validate_checksum=False, wait=True, **properties)
    finally:
        reader.close()
    got = _raw(conn, image.id)
    if got.get('os_hash_value') != meta.os_hash_value:
        raise exception.ImageChecksumMismatch(
            image=name, algo='os_hash_value',
            actual=got.get('os_hash_value'), expected=meta.os_hash_value)
    return image.id, 'uploaded'


def upload(conn, store, ami, progress=None):
    """Upload the local AMI ``ami`` (ImageMeta) and its parts.

    Returns {'ami': id, 'aki': id, 'ari': id, 'uploaded': [...],
    'reused': [...]}.
    """
    if not ami.kernel_id or not ami.ramdisk_id:
        raise exception.InvalidImage(image=ami.name,
                                     reason="it is not an AMI (no kernel_id "
                                     "and ramdisk_id)")
    result = {'uploaded': [], 'reused': []}
    ids = {}
    for part_id, fmt in ((ami.kernel_id, 'aki'), (ami.ramdisk_id, 'ari')):
        meta = store.get_meta(part_id)
        # The part's own properties (an ARI's amiboot_provision) go along;
        # a part is reused only with them.
        part_props = {k: str(v) for k, v in meta.properties.items()
                      if k not in _LOCAL_ONLY}
        gid, how = _put(conn, meta, os.path.join(store.path, meta.id),
                        meta.name, part_props, progress,
                        want=part_props or None)
        ids[fmt] = gid
        result[how].append(meta.name)
    props = {k: str(v) for k, v in ami.properties.items()
             if k not in _LOCAL_ONLY}
    props.update(kernel_id=ids['aki'], ramdisk_id=ids['ari'])
    # The AMI is reused only with these links and properties.
    gid, how = _put(conn, ami, os.path.join(store.path, ami.id), ami.name,
                    props, progress, want=props)
    result[how].append(ami.name)
    result.update(ami=gid, aki=ids['aki'], ari=ids['ari'])
    return result


def download(conn, cloud, name_or_id, name=None, progress=None):
    """Import a Glance AMI and its kernel and ramdisk into ``cloud``."""
    image = conn.image.find_image(name_or_id, ignore_missing=True)
    if image is None:
        raise exception.ImageNotFound(image=name_or_id, source="Glance")
    ami = _raw(conn, image.id)
    if not ami.get('kernel_id') or not ami.get('ramdisk_id'):
        raise exception.InvalidImage(
            image=name_or_id, reason="it is not an AMI (no kernel_id and "
            "ramdisk_id properties)")
    work = os.path.join(cloud.state_dir, 'tmp', 'download-%s' % image.id)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, mode=0o700)
    try:
        paths = {}
        for key, gid in (('kernel', ami['kernel_id']),
                         ('ramdisk', ami['ramdisk_id']),
                         ('root', image.id)):
            part = conn.image.get_image(gid)
            path = os.path.join(work, key)
            writer = _Writer(path, 'downloading %s' % part.name,
                             part.size, progress)
            try:
                # openstacksdk checks the MD5 Glance recorded as it writes.
                conn.image.download_image(part, output=writer,
                                          chunk_size=1024 * 1024)
            finally:
                writer.close()
            paths[key] = path
        props = {k: v for k, v in ami.items()
                 if k not in _GLANCE_FIELDS and isinstance(v, str)}
        props['glance_id'] = image.id
        # The ARI's declaration of guest provisioning comes along.
        ari = _raw(conn, ami['ramdisk_id'])
        ari_props = {k: ari[k] for k in (PROVISION_PROPERTY,)
                     if isinstance(ari.get(k), str)}
        meta = cloud.import_triplet(name or ami['name'], paths['kernel'],
                                    paths['ramdisk'], paths['root'], props,
                                    ramdisk_properties=ari_props)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta
