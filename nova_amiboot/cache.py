"""The per-host image cache: ``<instances dir>/_base``.

Each part of a triplet is fetched once per host into a base file named like
nova's (sha1 of the image id), so nova's own image cache manager recognises
our bases. A fetch writes a temporary file in ``_base``, verifies size and
checksum, inspects the format, fsyncs and renames: a base either exists
whole and checked, or not at all.

Every fetch and every removal of a base holds the same external lock as
nova's ``Image.cache()`` (``<instances dir>/locks/nova-<base name>``): two
lock names for one file corrupted it in nova once (LP#1265452), and removing
a base while another spawn used it broke instances (LP#1256838).
"""

import dataclasses
import errno
import hashlib
import json
import os
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging

from nova_amiboot import exception
from nova_amiboot import grow
from nova_amiboot import safety
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

# nova's lock_file_prefix: sharing the lock file with nova-compute's own
# Image.cache() and image cache manager.
LOCK_PREFIX = 'nova-'


def base_name(image_id):
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


@dataclasses.dataclass
class CachedImage:
    image_id: str
    path: str
    format: str
    virtual_size: int


class ImageCache(object):

    def __init__(self, instances_path, source, conf, progress=None):
        self.instances_path = instances_path
        self.base_dir = os.path.join(instances_path, '_base')
        self.lock_path = os.path.join(instances_path, 'locks')
        self.source = source
        self.conf = conf
        # progress(label, done, total): bytes fetched; total None when
        # unknown. Conversions report (label, 0, None) when they start.
        self.progress = progress
        os.makedirs(self.base_dir, mode=0o755, exist_ok=True)

    def _lock(self, name):
        return lockutils.lock(name, lock_file_prefix=LOCK_PREFIX,
                              external=True, lock_path=self.lock_path)

    def path_for(self, image_id):
        return os.path.join(self.base_dir, base_name(image_id))

    def fetch(self, image_id, expected_format=None):
        """Return a CachedImage for ``image_id``, fetching it if needed.

        ``expected_format`` (aki, ari, ami) refuses an image whose
        disk_format is another part of a triplet: an AMI whose kernel_id
        points at another AMI is an error, not a kernel.
        """
        meta = self.source.get_meta(image_id)
        if expected_format and meta.disk_format != expected_format and \
                not (expected_format == 'ami'
                     and meta.disk_format in ('raw', 'qcow2')):
            raise exception.InvalidImage(
                image=image_id, reason="disk_format is %s, expected %s"
                % (meta.disk_format, expected_format))
        path = self.path_for(image_id)
        with self._lock(os.path.basename(path)):
            if os.path.exists(path):
                # Re-inspect on every use: a base that entered the cache
                # under older rules must not be trusted forever.
                claimed = 'raw' if meta.disk_format == 'qcow2' else \
                    meta.disk_format
                safety.recheck(path, claimed, image_id)
                os.utime(path)
                return CachedImage(image_id, path, 'raw',
                                   os.path.getsize(path))
            info = self._download(meta, path)
        return CachedImage(image_id, path, 'raw', info.virtual_size)

    def _download(self, meta, path):
        tmp = '%s.part-%d' % (path, os.getpid())
        conv = tmp + '.raw'
        t0 = time.monotonic()
        try:
            self._write_verified(meta, tmp)
            info = safety.inspect(tmp, meta.disk_format, meta.id, self.conf)
            if info.format == 'qcow2':
                # The base is always raw: the overlay's backing_fmt says so
                # and nothing has to interpret qcow2 metadata again.
                if self.progress:
                    self.progress('converting %s to raw' % meta.id, 0, None)
                utils.execute('qemu-img', 'convert', '-q', '-f', 'qcow2',
                              '-O', 'raw', '-S', '4k', tmp, conv)
                os.unlink(tmp)
                os.rename(conv, tmp)
                info = safety.inspect(tmp, 'raw', meta.id, self.conf)
            os.chmod(tmp, 0o644)
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
            os.rename(tmp, path)
            _fsync_dir(self.base_dir)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise exception.DiskFull(path=self.base_dir,
                                         action="fetching image %s" % meta.id)
            raise
        except exception.CommandFailed as e:
            if 'No space left' in str(e):
                raise exception.DiskFull(path=self.base_dir,
                                         action="converting image %s"
                                         % meta.id)
            raise exception.ImageDownloadFailed(image=meta.id, reason=str(e))
        finally:
            for leftover in (tmp, conv):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        LOG.info("Fetched image %(id)s (%(fmt)s, %(size)d bytes) into "
                 "%(path)s in %(t).2fs",
                 {'id': meta.id, 'fmt': meta.disk_format, 'size': meta.size,
                  'path': path, 't': time.monotonic() - t0})
        return info

    def _write_verified(self, meta, tmp):
        algo = meta.os_hash_algo if meta.os_hash_value else None
        if algo and algo not in hashlib.algorithms_available:
            raise exception.ImageDownloadFailed(
                image=meta.id, reason="unknown hash algorithm %s" % algo)
        if not algo and not meta.checksum:
            raise exception.ImageDownloadFailed(
                image=meta.id, reason="the image service gives no checksum "
                "to verify it with")
        with open(tmp, 'wb') as f:
            writer = _HashingWriter(f, algo or 'md5', meta, self.progress)
            self.source.download(meta.id, writer)
            # The size even where the image ends in zeros (a hole).
            f.truncate(writer.size)
        if meta.size is not None and writer.size != meta.size:
            raise exception.ImageSizeMismatch(image=meta.id,
                                              actual=writer.size,
                                              expected=meta.size)
        expected = meta.os_hash_value if algo else meta.checksum
        actual = writer.hasher.hexdigest()
        if actual != expected:
            raise exception.ImageChecksumMismatch(
                image=meta.id, algo=algo or 'md5', actual=actual,
                expected=expected)

    # --- listing and ageing ------------------------------------------------

    def users(self):
        """{base path: [instance dirs]} for bases that instances use.

        An instance uses a base as the backing file of its ``disk`` and,
        through hard links (same inode), as its ``kernel`` and ``ramdisk``.
        """
        inodes = {}
        for name in os.listdir(self.base_dir):
            p = os.path.join(self.base_dir, name)
            if os.path.isfile(p):
                inodes[os.stat(p).st_ino] = p
        used = {}
        for entry in sorted(os.listdir(self.instances_path)):
            idir = os.path.join(self.instances_path, entry)
            if entry in ('_base', 'locks') or not os.path.isdir(idir):
                continue
            for f in ('kernel', 'ramdisk', 'disk'):
                p = os.path.join(idir, f)
                if not os.path.isfile(p):
                    continue
                st = os.stat(p)
                if st.st_ino in inodes:
                    used.setdefault(inodes[st.st_ino], []).append(idir)
                elif f == 'disk':
                    backing = backing_file(p)
                    if backing:
                        used.setdefault(os.path.realpath(backing),
                                        []).append(idir)
        return used

    def list(self):
        used = self.users()
        now = time.time()
        out = []
        for name in sorted(os.listdir(self.base_dir)):
            p = os.path.join(self.base_dir, name)
            if not os.path.isfile(p) or '.part' in name:
                continue
            st = os.stat(p)
            out.append({'path': p, 'size': st.st_size,
                        'disk_usage': st.st_blocks * 512,
                        'age': int(now - st.st_mtime),
                        'users': used.get(os.path.realpath(p), [])})
        return out

    def clean(self, min_age=None):
        """Remove bases unused for at least ``min_age`` seconds."""
        if min_age is None:
            min_age = self.conf.amiboot.image_cache_min_age_seconds
        removed = []
        for entry in self.list():
            if entry['users'] or entry['age'] < min_age:
                continue
            with self._lock(os.path.basename(entry['path'])):
                # Decide again under the lock: a spawn may have taken it.
                p = entry['path']
                if not os.path.exists(p) or \
                        time.time() - os.stat(p).st_mtime < min_age or \
                        self.users().get(os.path.realpath(p)):
                    continue
                os.unlink(p)
                removed.append(p)
                LOG.info("Removed unused cached image %s", p)
        # Grown templates of removed bases go with them.
        grow.sweep_templates(self.base_dir)
        return removed


# Zero runs of this size (a multiple of any filesystem block) are skipped.
_HOLE = 64 * 1024
_ZEROS = bytes(_HOLE)


class _HashingWriter(object):
    """A file wrapper that hashes, counts and reports what passes through."""

    def __init__(self, f, algo, meta, progress):
        self.f = f
        self.hasher = hashlib.new(algo, usedforsecurity=False) \
            if algo == 'md5' else hashlib.new(algo)
        self.meta = meta
        self.progress = progress
        self.size = 0

    def write(self, chunk):
        self.hasher.update(chunk)
        chunk = bytes(chunk)
        for i in range(0, len(chunk), _HOLE):
            piece = chunk[i:i + _HOLE]
            if piece == _ZEROS[:len(piece)]:
                # A hole: the base stays sparse where the image is.
                self.f.seek(len(piece), os.SEEK_CUR)
            else:
                self.f.write(piece)
        self.size += len(chunk)
        if self.progress:
            self.progress('fetching %s' % self.meta.id, self.size,
                          self.meta.size)


def backing_file(disk):
    """The backing file of our own qcow2 overlay, or None."""
    try:
        out, _err = utils.execute('qemu-img', 'info', '-f', 'qcow2',
                                  '--output=json', '-U', disk)
    except exception.CommandFailed:
        return None
    info = json.loads(out)
    return info.get('full-backing-filename') or info.get('backing-filename')


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
