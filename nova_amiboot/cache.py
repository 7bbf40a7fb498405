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

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import os
import re
import threading
import time

import fasteners
from oslo_concurrency import lockutils
from oslo_log import log as logging

from nova_amiboot import disk as disk_mod
from nova_amiboot import exception
from nova_amiboot import grow
from nova_amiboot import meta as meta_mod
from nova_amiboot import safety
from nova_amiboot import sandbox
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

# nova's lock_file_prefix: sharing the lock file with nova-compute's own
# Image.cache() and image cache manager.
LOCK_PREFIX = 'nova-'
_BASE_NAME = re.compile(r'[0-9a-f]{40}')
# A spawn holds a shared lock on ``locks/amiboot-use-<base name>`` from the
# moment it is handed a base until its instance disk and links make the
# base visibly used; clean() removes a base only when it can take that lock
# exclusively. (An age threshold alone does not cover this window: with a
# min age of 0 a base could go between fetch and overlay creation.)
PIN_PREFIX = 'amiboot-use-'
# fcntl locks belong to the process, and closing any descriptor of the file
# drops them all: one shared lock per pinned base per process, counted.
_PINS = {}      # base path -> [InterProcessReaderWriterLock, count]
_PINS_LOCK = threading.Lock()


def base_name(image_id):
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


@dataclasses.dataclass
class CachedImage:
    image_id: str
    path: str
    format: str
    virtual_size: int
    # True when this call downloaded it (it was not in the cache).
    fetched: bool = False


class ImageCache(object):

    def __init__(self, instances_path, source, conf, progress=None,
                 base_dir_name='_base', min_age=86400):
        self.instances_path = instances_path
        # nova's [image_cache] subdirectory_name in the nova adapter.
        self.base_dir_name = base_dir_name
        self.base_dir = os.path.join(instances_path, base_dir_name)
        self.lock_path = os.path.join(instances_path, 'locks')
        self.source = source
        self.conf = conf
        # clean(): a base unused this long (seconds) goes.
        self.min_age = min_age
        # progress(label, done, total): bytes fetched; total None when
        # unknown. Conversions report (label, 0, None) when they start.
        self.progress = progress
        self._local = threading.local()
        os.makedirs(self.base_dir, mode=0o755, exist_ok=True)

    def _lock(self, name):
        return lockutils.lock(name, lock_file_prefix=LOCK_PREFIX,
                              external=True, lock_path=self.lock_path)

    def _pin_lock(self, path):
        os.makedirs(self.lock_path, exist_ok=True)
        return fasteners.InterProcessReaderWriterLock(os.path.join(
            self.lock_path, PIN_PREFIX + os.path.basename(path)))

    @contextlib.contextmanager
    def pinning(self):
        """Keep every base fetched inside this block from clean-up.

        The pins go when the block ends; by then the caller's instance disk
        (backing file) and kernel/ramdisk links mark the bases as used.
        """
        pins = self._local.pins = []
        try:
            yield
        finally:
            self._local.pins = None
            for path in pins:
                with _PINS_LOCK:
                    entry = _PINS[path]
                    entry[1] -= 1
                    if entry[1] == 0:
                        entry[0].release_read_lock()
                        del _PINS[path]

    def _pin(self, path):
        """Pin ``path`` if inside pinning(); call with the base's lock."""
        pins = getattr(self._local, 'pins', None)
        if pins is None:
            return
        with _PINS_LOCK:
            entry = _PINS.get(path)
            if entry is None:
                lock = self._pin_lock(path)
                lock.acquire_read_lock()
                entry = _PINS[path] = [lock, 0]
            entry[1] += 1
        pins.append(path)

    def path_for(self, image_id):
        return os.path.join(self.base_dir, base_name(image_id))

    def fetch(self, image_id, expected_format=None, max_virtual_size=None,
              facts=True):
        """Return a CachedImage for ``image_id``, fetching it if needed.

        ``expected_format`` (aki, ari, ami) refuses an image whose
        disk_format is another part of a triplet: an AMI whose kernel_id
        points at another AMI is an error, not a kernel.
        ``max_virtual_size`` (bytes; for example the flavor's root disk)
        refuses, before converting and without caching anything, an image
        that would not fit where it is going.

        A base in the cache is used without asking the image source: the
        image may have been deleted there while instances still run on it
        (hard reboot, resize, evacuate must keep working). The disk_format
        it was fetched as is recorded on the base itself.

        ``facts``: an AMI's new base gets its facts (grow.base_facts:
        attached, e2fsck'd) before it enters the cache; False (the guest
        route of provisioning, which attaches nothing) only probes its
        filesystem type in the sandbox, and the facts wait for a spawn on
        the host route that needs them (spawn.base_facts).
        """
        path = self.path_for(image_id)
        with self._lock(os.path.basename(path)):
            if os.path.exists(path):
                disk_format = _recorded_format(path)
                if disk_format is None:
                    # Not fetched by this cache (nova's own fetch, a copy
                    # from another host): the source says what it is, or,
                    # when the image is gone there, the use does.
                    try:
                        disk_format = self.source.get_meta(
                            image_id).disk_format
                    except exception.ImageNotFound:
                        disk_format = expected_format or 'raw'
                _check_format(image_id, disk_format, expected_format)
                # Re-inspect on every use: a base that entered the cache
                # under older rules must not be trusted forever.
                claimed = 'raw' if disk_format == 'qcow2' else disk_format
                safety.recheck(path, claimed, image_id, touch=True)
                self._pin(path)
                return CachedImage(image_id, path, 'raw',
                                   os.path.getsize(path))
            meta = self.source.get_meta(image_id)
            _check_format(image_id, meta.disk_format, expected_format)
            # Under this lock nobody writes this base: any temporary file
            # of it is left from a fetch that died (kill -9, power loss).
            self._remove_stale_parts(path)
            info = self._download(meta, path, max_virtual_size,
                                  root=expected_format == 'ami',
                                  facts=facts)
            _record_format(path, meta.disk_format)
            self._pin(path)
        return CachedImage(image_id, path, 'raw', info.virtual_size,
                           fetched=True)

    def adopt(self, image_id, expected_format, write):
        """``image_id`` into the cache from ``write(path)``, not the source.

        For a kernel or ramdisk the image source no longer has, which a
        migration copies from the host it left: written aside under the
        base's lock (``write`` fills the path it is given), inspected as
        ``expected_format`` as a fetch inspects, renamed into place whole
        and root-owned 0644. A base already there is left as it is.
        Returns what fetch() returns for it then.
        """
        path = self.path_for(image_id)
        with self._lock(os.path.basename(path)):
            if not os.path.exists(path):
                self._remove_stale_parts(path)
                tmp = '%s.part-%d' % (path, os.getpid())
                try:
                    write(tmp)
                    safety.inspect(tmp, expected_format, image_id,
                                   self.conf)
                    os.chmod(tmp, 0o644)
                    with open(tmp, 'rb') as f:
                        os.fsync(f.fileno())
                    os.rename(tmp, path)
                    utils.fsync_dir(self.base_dir)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                _record_format(path, expected_format)
                LOG.info("Image %(id)s (%(fmt)s) entered %(path)s from a "
                         "copy, not from its source",
                         {'id': image_id, 'fmt': expected_format,
                          'path': path})
        return self.fetch(image_id, expected_format)

    def _remove_stale_parts(self, path):
        for part in glob.glob(glob.escape(path) + '.part*'):
            LOG.info("Removing %s, left by an interrupted fetch", part)
            try:
                os.unlink(part)
            except FileNotFoundError:
                pass

    def _check_space(self, meta, needed, action):
        """Refuse before writing ``needed`` bytes that do not fit."""
        st = os.statvfs(self.base_dir)
        free = st.f_bavail * st.f_frsize
        if needed > free:
            LOG.warning("Not %s image %s: needs %d bytes, %d free in %s",
                        action, meta.id, needed, free, self.base_dir)
            raise exception.InsufficientSpace(image=meta.id, needed=needed,
                                              free=free, path=self.base_dir)

    def _download(self, meta, path, max_virtual_size=None, root=False,
                  facts=True):
        """Fetch, verify, inspect and convert ``meta`` into ``path``.

        ``root``: the image is an AMI's root: refused (before a qcow2 is
        converted, and again on the raw base) unless it holds a filesystem
        the pipeline serves, and its base checked once (grow.base_facts)
        before it enters the cache (``facts``; else only its type probed,
        unattached); nothing of a refused image stays.
        """
        tmp = '%s.part-%d' % (path, os.getpid())
        conv = tmp + '.raw'
        head = tmp + '.head'
        t0 = time.monotonic()
        try:
            if meta.size:
                self._check_space(meta, meta.size, 'fetching')
            self._write_verified(meta, tmp)
            info = safety.inspect(tmp, meta.disk_format, meta.id, self.conf)
            if max_virtual_size is not None and \
                    info.virtual_size > max_virtual_size:
                raise exception.ImageTooLarge(image=meta.id,
                                              size=info.virtual_size,
                                              limit=max_virtual_size)
            if info.format == 'qcow2':
                # A few KiB of qcow2 can describe gigabytes of data (every
                # L2 entry pointing at one cluster): the raw base can be as
                # large as the virtual size, which inspect() bounded by
                # max_image_virtual_size_gb. It must also fit on the disk,
                # checked now rather than found out by filling it.
                if root:
                    self._check_root_fs(meta, tmp, 'qcow2', info, head)
                self._check_space(meta, info.virtual_size, 'converting')
                # The base is always raw: the overlay's backing_fmt says so
                # and nothing has to interpret qcow2 metadata again.
                if self.progress:
                    self.progress('converting %s to raw' % meta.id, 0, None)
                # -S 4k: zero areas become holes (a sparse base), whether
                # the qcow2 marks them as zero or stores them as data.
                os.close(os.open(conv, os.O_WRONLY | os.O_CREAT |
                                 os.O_EXCL, 0o644))
                sandbox.run(['qemu-img', 'convert', '-q', '-f', 'qcow2',
                             '-O', 'raw', '-S', '4k', tmp, conv], meta.id,
                            self.conf, files=[tmp], write=[conv],
                            timeout=self.conf.amiboot.image_convert_timeout,
                            file_size=info.virtual_size + 1024 ** 2,
                            timeout_name='[amiboot] image_convert_timeout')
                os.unlink(tmp)
                os.rename(conv, tmp)
                info = safety.inspect(tmp, 'raw', meta.id, self.conf)
            if root:
                # Checked on the base itself (its facts go with its inode).
                os.chmod(tmp, 0o644)
                if facts:
                    fstype = grow.base_facts(tmp, self.conf,
                                             image=meta.id)['fstype']
                else:
                    fstype = self._probe_fs(meta, tmp)
                self._refuse_unservable(meta, fstype)
            os.chmod(tmp, 0o644)
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
            os.rename(tmp, path)
            utils.fsync_dir(self.base_dir)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise exception.DiskFull(path=self.base_dir,
                                         action="fetching image %s" % meta.id)
            raise
        except exception.ToolOutOfSpace:
            raise exception.DiskFull(path=self.base_dir,
                                     action="converting image %s" % meta.id)
        except (exception.CommandFailed, exception.AttachFailed) as e:
            # Under a FUSE export a full disk may show as anything.
            if utils.fs_full(self.base_dir):
                raise exception.DiskFull(path=self.base_dir,
                                         action="checking image %s"
                                         % meta.id)
            if isinstance(e, exception.AttachFailed):
                raise
            raise exception.ImageDownloadFailed(image=meta.id, reason=str(e))
        finally:
            for leftover in (tmp, conv, head):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        LOG.info("Fetched image %(id)s (%(fmt)s, %(size)d bytes) into "
                 "%(path)s in %(t).2fs",
                 {'id': meta.id, 'fmt': meta.disk_format, 'size': meta.size,
                  'path': path, 't': time.monotonic() - t0})
        return info

    def _check_root_fs(self, meta, src, fmt, info, head):
        """Refuse a qcow2 AMI holding no servable filesystem, unconverted.

        Its first MiB is converted (in the sandbox, no backing opened) and
        probed there: a few KiB of qcow2 that would make gigabytes of raw
        base and then be refused never get that far.
        """
        size = min(1024 ** 2, info.virtual_size)
        spec = {'driver': 'raw', 'offset': 0, 'size': size,
                'file': {'driver': fmt, 'backing': None,
                         'file': {'driver': 'file', 'filename': src}}}
        os.close(os.open(head, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        lim = sandbox.Limits.from_conf(self.conf, timeout=120)
        with sandbox.Run(meta.id, lim) as r:
            spec['file']['file']['filename'] = r.file(src)
            r.execute(['qemu-img', 'convert', '-q', 'json:' + json.dumps(
                spec), '-O', 'raw', r.file(head, write=True)])
        os.truncate(head, info.virtual_size)
        res = sandbox.run(['blkid', '-p', '-o', 'value', '-s', 'TYPE', head],
                          meta.id, self.conf, files=[head], ok_codes=(0, 2))
        os.unlink(head)
        self._refuse_unservable(meta, res.text.strip() or None)

    def _probe_fs(self, meta, path):
        """The filesystem type of raw ``path`` (blkid, in the sandbox)."""
        res = sandbox.run(['blkid', '-p', '-o', 'value', '-s', 'TYPE', path],
                          meta.id, self.conf, files=[path], ok_codes=(0, 2))
        return res.text.strip() or None

    @staticmethod
    def _refuse_unservable(meta, fstype):
        if fstype not in grow.SERVABLE_TYPES:
            raise exception.InvalidImage(
                image=meta.id, reason="it holds %s, not a root filesystem "
                "the AMI boot method serves (%s)" % (
                    'filesystem %s' % fstype if fstype else 'no filesystem',
                    ', '.join(grow.SERVABLE_TYPES)))

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

        An instance uses a base as the backing file of its ``disk`` and as
        the source of its ``kernel`` and ``ramdisk``: a hard link (same
        inode), or a private copy that names its base (meta.USED_BASE).
        Instances come and go while this looks: a file that vanishes
        between listing and stat is simply not a user.
        """
        inodes = {}
        for name in os.listdir(self.base_dir):
            st = _stat(os.path.join(self.base_dir, name))
            if st is not None and _isreg(st):
                inodes[st.st_ino] = os.path.join(self.base_dir, name)
        used = {}
        for entry in sorted(os.listdir(self.instances_path)):
            idir = os.path.join(self.instances_path, entry)
            if entry in (self.base_dir_name, 'locks') or \
                    not os.path.isdir(idir):
                continue
            for f in ('kernel', 'ramdisk', 'disk'):
                p = os.path.join(idir, f)
                st = _stat(p)
                if st is None or not _isreg(st):
                    continue
                if st.st_ino in inodes:
                    used.setdefault(inodes[st.st_ino], []).append(idir)
                elif f != 'disk':
                    base = _copied_from(p, self.base_dir)
                    if base:
                        used.setdefault(base, []).append(idir)
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
            st = _stat(p)
            if st is None or not _isreg(st) or '.part' in name:
                continue
            out.append({'path': p, 'size': st.st_size,
                        'disk_usage': st.st_blocks * 512,
                        'age': int(now - st.st_mtime),
                        'users': used.get(os.path.realpath(p), [])})
        return out

    def _pinned(self, path):
        """True if a spawn (any process) holds ``path`` pinned."""
        with _PINS_LOCK:
            if path in _PINS:
                return True
            lock = self._pin_lock(path)
            if not lock.acquire_write_lock(blocking=False):
                lock._do_close()
                return True
            lock.release_write_lock()
            return False

    def clean(self, min_age=None):
        """Remove bases unused for at least ``min_age`` seconds.

        Also ages out temporary files of fetches that died: one whose base
        lock is free has no writer (a live fetch holds that lock).
        """
        if min_age is None:
            min_age = self.min_age
        removed = []
        for name in sorted(os.listdir(self.base_dir)):
            if '.part' in name:
                removed += self._clean_part(os.path.join(self.base_dir,
                                                         name))
        for entry in self.list():
            if entry['users'] or entry['age'] < min_age:
                continue
            with self._lock(os.path.basename(entry['path'])):
                # Decide again under the lock: a spawn may have taken it.
                p = entry['path']
                st = _stat(p)
                if st is None or time.time() - st.st_mtime < min_age or \
                        self._pinned(p) or \
                        self.users().get(os.path.realpath(p)):
                    continue
                os.unlink(p)
                removed.append(p)
                LOG.info("Removed unused cached image %s", p)
        # Grown templates of removed bases go with them.
        grow.sweep_templates(self.base_dir)
        return removed

    def _clean_part(self, part):
        base = os.path.basename(part[:part.index('.part')])
        try:
            with lockutils.lock(base, lock_file_prefix=LOCK_PREFIX,
                                external=True, lock_path=self.lock_path,
                                blocking=False):
                if _stat(part) is None:
                    return []
                os.unlink(part)
        except lockutils.AcquireLockFailedException:
            return []     # its fetch is running
        LOG.info("Removed %s, left by an interrupted fetch", part)
        return [part]


def _stat(path):
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _isreg(st):
    return (st.st_mode & 0o170000) == 0o100000


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


def _copied_from(path, base_dir):
    """The base that ``path`` (a kernel or ramdisk copy) was made from."""
    name = meta_mod.get_text(path, meta_mod.USED_BASE)
    if name is None:
        return None
    # Only a plain base name in this cache counts (the name is read back
    # from a file the guest's QEMU owns while it runs).
    if not _BASE_NAME.fullmatch(name):
        return None
    base = os.path.join(base_dir, name)
    return base if os.path.isfile(base) else None


def backing_file(disk):
    """The backing file of our own qcow2 overlay, or None."""
    try:
        return disk_mod.header_backing(disk)
    except (exception.CommandFailed, OSError, ValueError):
        return None


# The disk_format a base was fetched as, kept on the base's own inode
# (where there are no user xattrs the source is asked on the next use).
def _recorded_format(path):
    return meta_mod.get_text(path, meta_mod.DISK_FORMAT)


def _record_format(path, disk_format):
    meta_mod.record(path, meta_mod.DISK_FORMAT, disk_format)


def _check_format(image_id, disk_format, expected_format):
    if expected_format and disk_format != expected_format and \
            not (expected_format == 'ami'
                 and disk_format in ('raw', 'qcow2')):
        raise exception.InvalidImage(
            image=image_id, reason="disk_format is %s, expected %s"
            % (disk_format, expected_format))
