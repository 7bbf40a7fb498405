"""The embedded default's image store: Glance-like records on local disk.

Each image is its bytes and a JSON record (what Glance would hold) under
the state directory's ``images/``; it serves the core through
``nova_amiboot.images.ImageSource`` as nova's Glance client does.
"""

import dataclasses
import hashlib
import json
import os
import uuid

from oslo_log import log as logging

from nova_amiboot import exception
from nova_amiboot import images

LOG = logging.getLogger(__name__)

CHUNK = images.CHUNK


def _file_hashes(path, algo='sha512'):
    md5, multi, size = hashlib.md5(usedforsecurity=False), \
        hashlib.new(algo), 0
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            md5.update(chunk)
            multi.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), multi.hexdigest()


def _copy(src, dst, progress, label):
    """Copy ``src`` to ``dst``, sparse: holes and zero chunks stay holes.

    (An XFS AMI is as large as its partition, mostly free space.)
    """
    total = os.path.getsize(src)
    zero = bytes(CHUNK)
    done = 0
    with open(src, 'rb') as fin, open(dst, 'wb') as fout:
        while done < total:
            try:
                data = os.lseek(fin.fileno(), done, os.SEEK_DATA)
            except OSError:
                data = total            # (ENXIO: only a hole is left)
            if data > done:
                done = data
                if progress:
                    progress(label, done, total)
                continue
            fin.seek(done)
            chunk = fin.read(CHUNK)
            if not chunk:
                break
            if chunk == zero[:len(chunk)]:
                fout.seek(done + len(chunk))
            else:
                fout.seek(done)
                fout.write(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
        fout.truncate(total)


class LocalImageStore(images.ImageSource):
    """Images as files under one directory, with Glance-like metadata.

    ``<dir>/<id>`` holds the bytes, ``<dir>/<id>.json`` the metadata; the
    JSON is written last, so an image without it is incomplete.
    """

    name = 'the local image store'

    def __init__(self, path):
        self.path = path
        os.makedirs(path, mode=0o755, exist_ok=True)

    def _meta_path(self, image_id):
        if os.sep in image_id or image_id.startswith('.'):
            raise exception.ImageNotFound(image=image_id, source=self.name)
        return os.path.join(self.path, image_id + '.json')

    def get_meta(self, image_id):
        try:
            with open(self._meta_path(image_id)) as f:
                return images.ImageMeta(**json.load(f))
        except FileNotFoundError:
            raise exception.ImageNotFound(image=image_id, source=self.name)

    def download(self, image_id, fileobj):
        self.get_meta(image_id)
        with open(os.path.join(self.path, image_id), 'rb') as f:
            for chunk in iter(lambda: f.read(CHUNK), b''):
                fileobj.write(chunk)

    def list(self):
        return sorted((self.get_meta(n[:-5]) for n in os.listdir(self.path)
                       if n.endswith('.json')), key=lambda m: m.name)

    def add(self, name, src, disk_format, properties=None, image_id=None,
            progress=None):
        """Copy ``src`` in and record its metadata; return ImageMeta.

        Checks (format safety) belong to the caller, before this is called.
        ``progress(label, done, total)`` is called as bytes are copied.
        """
        image_id = image_id or str(uuid.uuid4())
        container = disk_format if disk_format in ('ami', 'aki',
                                                   'ari') else 'bare'
        dst = os.path.join(self.path, image_id)
        tmp = dst + '.part'
        try:
            _copy(src, tmp, progress, 'importing %s' % name)
            size, md5, sha512 = _file_hashes(tmp)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        meta = images.ImageMeta(
            id=image_id, name=name, disk_format=disk_format,
            container_format=container, size=size, checksum=md5,
            os_hash_algo='sha512', os_hash_value=sha512,
            properties=dict(properties or {}))
        self.save_meta(meta)
        return meta

    def save_meta(self, meta):
        path = self._meta_path(meta.id)
        with open(path + '.part', 'w') as f:
            json.dump(dataclasses.asdict(meta), f, indent=1, sort_keys=True)
        os.replace(path + '.part', path)

    def delete(self, image_id):
        os.unlink(self._meta_path(image_id))
        os.unlink(os.path.join(self.path, image_id))
