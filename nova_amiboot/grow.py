"""Grow the AMI's filesystem to the whole instance disk.

Nova's qcow2 backend makes a full-size overlay but leaves the filesystem at
the AMI's size; only its Flat backend grows it, after copying the image.
Here the overlay is grown in place: e2fsck -fp, then resize2fs, both from
user space on the attached target (no kernel mount).

The result depends only on the base and the disk size, so it is made once
per (base, size) as a *grown template*: a small qcow2 overlay of the base
whose filesystem is checked and grown, kept in ``_base/amiboot-grown``. An
instance disk is a private copy of it: still a qcow2 overlay whose backing
file is the raw base, with nothing left to grow.

Guest mode (the ARI grows the root at boot) has its own kind: a *plain
template* per (base, size), the empty overlay ``qemu-img create`` makes,
kept in ``_base/amiboot-plain``; an instance disk is a copy of it. No
tenant byte is read to make either kind of copy.
"""

import errno
import os
import re
import shutil
import uuid

from oslo_log import log as logging

from nova_amiboot import attach
from nova_amiboot import disk
from nova_amiboot import exception
from nova_amiboot import meta
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

EXT_TYPES = ('ext2', 'ext3', 'ext4')
# Root filesystems an AMI may hold: the pipeline boots them (ext2/3/4 are
# also grown and written from user space). An AMI base holding anything
# else is refused when it is fetched.
SERVABLE_TYPES = EXT_TYPES + ('xfs', 'btrfs')
CHECK_PREFIX = 'amiboot-check-'
TEMPLATE_DIR = 'amiboot-grown'
PLAIN_DIR = 'amiboot-plain'
_TEMPLATE_RE = re.compile(r'^(?P<base>[^/]+)-(?P<size>[0-9]+)-'
                          r'(?P<id>[0-9a-f]{32})\.qcow2'
                          r'(?:\.part-(?P<pid>[0-9]+))?$')


def fs_type(target):
    """The filesystem type on ``target`` (blkid low-level probe), or None."""
    try:
        out, _err = target.run('blkid', ['-p', '-o', 'value', '-s', 'TYPE'],
                               ok_codes=(0, 2))
    except exception.CommandFailed:
        return None
    return out.strip() or None


def base_facts(path, conf, image=None):
    """{'fstype': ..., 'clean': bool} for a raw base in the cache.

    A new instance disk holds the base's filesystem byte for byte, so the
    check every instance disk would get (e2fsck -fp) is run once, on a
    throwaway overlay of the base: 'clean' means it changed nothing. (A
    read-only e2fsck -n is not that: it passes filesystems that -p still
    repairs, such as wrong free counts.) Recorded in an xattr of the base
    (meta.FS_FACTS; without user xattrs it is checked again next time).
    """
    facts = meta.get_json(path, meta.FS_FACTS)
    if facts is not None:
        return facts
    facts = {'fstype': None, 'clean': False}
    # Owned: a spawn killed here leaves the next one something to reap. The
    # scratch overlay sits in the instances path, beside the instance disks:
    # the privileged nbd attach connects nothing else.
    instances = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    utils.reap_stale_tempdirs(CHECK_PREFIX, dir=instances)
    tmp = utils.owned_tempdir(CHECK_PREFIX, dir=instances)
    try:
        scratch = os.path.join(tmp, 'disk')
        fmt = disk.create(path, scratch, os.path.getsize(path))
        with attach.attached(scratch, fmt, conf,
                             image=image or path) as target:
            facts['fstype'] = fs_type(target)
            if facts['fstype'] in EXT_TYPES:
                try:
                    # e2fsck -p replays a journal or releases orphans and
                    # still exits 0: the guest's kernel would do that
                    # over what we write, so such a base is not clean.
                    pending = _pending_recovery(target)
                    target.run('e2fsck', ['-fp'])
                    facts['clean'] = not pending
                except exception.CommandFailed as e:
                    if utils.fs_full(instances):
                        # Not a fact of the base: its scratch overlay met
                        # a full instances filesystem.
                        raise exception.DiskFull(
                            path=instances, action="checking image %s"
                            % (image or path))
                    LOG.info("Base %(path)s gets e2fsck on every instance "
                             "disk: %(err)s", {'path': path, 'err': e})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta.record(path, meta.FS_FACTS, facts)
    return facts


def _pending_recovery(target):
    """True if the filesystem has a journal to replay or orphans to free."""
    out, _err = target.run('dumpe2fs', ['-h'])
    for line in out.splitlines():
        key, _sep, value = line.partition(':')
        if key == 'Filesystem features' and \
                'needs_recovery' in value.split():
            return True
        if key == 'First orphan inode' and \
                value.strip() not in ('', '0'):
            return True
    return False


def check(target, instance='?', image='?'):
    """e2fsck -fp the disk's filesystem: replay its journal, mend or refuse.

    A journal left to replay would be replayed by the guest's kernel at
    mount, over whatever was written here before.
    """
    try:
        # 0: clean, 1: errors fixed, 2: fixed, reboot advised; 4 and up:
        # errors left, which nothing must work on.
        target.run('e2fsck', ['-fp'], ok_codes=(0, 1, 2))
    except exception.CommandFailed as e:
        raise exception.FilesystemCorrupt(instance=instance, image=image,
                                          reason=str(e))


def grow(target, instance='?', image='?', fstype=None, checked=False):
    """Grow an ext2/3/4 filesystem on ``target``; return True if grown.

    ``checked``: the filesystem is known clean (its base passed e2fsck and
    the disk is still identical to it), so the per-disk e2fsck is skipped
    and resize2fs is told so with -f.
    """
    fstype = fstype or fs_type(target)
    if fstype not in EXT_TYPES:
        LOG.warning("Instance %(inst)s: filesystem %(fs)s of image "
                    "%(image)s is not ext2/3/4; left at its size",
                    {'inst': instance, 'fs': fstype, 'image': image})
        return False
    if not checked:
        check(target, instance, image)
    try:
        # -f: resize2fs wants a check newer than the last mount; the check
        # above (or of the identical base) is that check.
        target.run('resize2fs', ['-f'])
    except exception.CommandFailed as e:
        raise exception.FilesystemCorrupt(instance=instance, image=image,
                                          reason="resize2fs: %s" % e)
    return True


def known_facts(path):
    """The facts base_facts() recorded on ``path``, or None (no attach)."""
    return meta.get_json(path, meta.FS_FACTS)


# --- grown templates --------------------------------------------------------

def base_id(path):
    """The random identity recorded on the base's inode, or None.

    Made once per inode; the first writer wins (XATTR_CREATE), so
    concurrent spawns agree. None where the filesystem has no user xattrs:
    no templates there.
    """
    ident = meta.get_text(path, meta.BASE_ID)
    if ident is not None:
        return ident
    new = uuid.uuid4().hex
    try:
        meta.put(path, meta.BASE_ID, new, create=True)
        return new
    except OSError as e:
        if e.errno != errno.EEXIST:
            LOG.debug("No identity for base %s: %s", path, e)
            return None
    return meta.get_text(path, meta.BASE_ID)


def template_path(base, size, ident, kind=TEMPLATE_DIR):
    return os.path.join(os.path.dirname(base), kind, '%s-%d-%s.qcow2'
                        % (os.path.basename(base), size, ident))


def _template_for(base, size, kind, instance, image):
    """The path of base's ``kind`` template for ``size``, or None.

    None where the base has no identity (no templates there). Refuses a
    size smaller than the base.
    """
    needed = os.path.getsize(base)
    if size < needed:
        raise exception.FlavorDiskTooSmall(instance=instance, flavor=size,
                                           needed=needed, image=image)
    ident = base_id(base)
    if not ident:
        return None
    return template_path(base, size, ident, kind=kind)


def _from_template(tpl, dest, lock, build, instance):
    """Copy template ``tpl`` to ``dest``, building it first if missing.

    Returns the template's facts. ``build()`` runs under ``lock()``.
    """
    for _attempt in range(3):
        found = _copy_template(tpl, dest)
        if found is not None:
            return found
        with lock():
            if not os.path.exists(tpl):
                build()
                sweep_templates(os.path.dirname(os.path.dirname(tpl)))
    raise exception.AmibootException(
        "Instance %s: the template %s keeps vanishing" % (instance, tpl))


def grown_disk(base, dest, size, facts, conf, lock, instance='?',
               image='?'):
    """Make ``dest`` a qcow2 overlay of ``base`` already grown to ``size``.

    Returns the template's facts ({'selinux': bool, 'known': record of
    inject.GuestFS.remember()}) or None when no
    template can be used here (no identity on the base): the caller then
    makes and grows the disk itself. ``lock``: a context manager factory
    for the base's cache lock, held while a template is built (the base
    cannot be removed meanwhile) and while stale templates are removed.
    """
    tpl = _template_for(base, size, TEMPLATE_DIR, instance, image)
    if tpl is None:
        return None
    return _from_template(
        tpl, dest, lock, lambda: _build_template(base, tpl, size, facts,
                                                 conf, instance, image),
        instance)


def plain_disk(base, dest, size, conf, lock, instance='?', image='?'):
    """Make ``dest`` a plain qcow2 overlay of ``base`` at ``size`` bytes.

    A copy of the base's plain template for ``size`` (made once, by
    ``qemu-img create`` in the sandbox, without opening the base): the
    same bytes ``disk.create`` would write, without a process per
    instance. Returns False when no template can be used here (no
    identity on the base): the caller then creates the overlay itself.
    """
    tpl = _template_for(base, size, PLAIN_DIR, instance, image)
    if tpl is None:
        return False
    _from_template(tpl, dest, lock,
                   lambda: _build_plain(base, tpl, size, conf, instance,
                                        image),
                   instance)
    return True


def _build_plain(base, tpl, size, conf, instance, image):
    os.makedirs(os.path.dirname(tpl), mode=0o755, exist_ok=True)
    # Under the base's lock: a .part of this name is a dead build's.
    tmp = '%s.part-%d' % (tpl, os.getpid())
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        disk.create(base, tmp, size, instance=instance, image=image,
                    cluster_size=conf.amiboot.overlay_cluster_size)
        meta.put(tmp, meta.TEMPLATE, {})
        _publish(tmp, tpl)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    LOG.info("Made plain template %(tpl)s of %(base)s for %(size)d bytes",
             {'tpl': tpl, 'base': base, 'size': size})


def _copy_template(tpl, dest):
    """Copy a template to ``dest``; its facts, or None if it is gone."""
    try:
        src = open(tpl, 'rb')
    except FileNotFoundError:
        return None
    with src:
        facts = meta.get_json(src.fileno(), meta.TEMPLATE) or {}
        # Templates are never written after their rename into place; the
        # copy is the instance's own (0644, like qemu-img create makes).
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with open(fd, 'wb') as dst:
                utils.clone_or_copy(src, dst)
        except BaseException:
            os.unlink(dest)
            raise
        base = meta.recorded_backing(src.fileno())
    if base:
        meta.record_backing(dest, base)
    return facts


def _publish(tmp, tpl):
    """Put a finished template in place: read-only, durable, renamed.

    Shared by every instance of its (base, size), so never writable.
    """
    os.chmod(tmp, 0o444)
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.rename(tmp, tpl)
    utils.fsync_dir(os.path.dirname(tpl))


def _build_template(base, tpl, size, facts, conf, instance, image):
    # Imported here: inject is only needed on this cold path.
    from nova_amiboot import inject

    os.makedirs(os.path.dirname(tpl), mode=0o755, exist_ok=True)
    # Built as <instances>/amiboot-check-*/disk, the one shape of scratch
    # disk the privileged nbd attach connects besides instance disks, then
    # renamed into place (same filesystem). Owned: a build killed midway is
    # reaped like a killed base check.
    instances = os.path.dirname(os.path.dirname(os.path.abspath(base)))
    utils.reap_stale_tempdirs(CHECK_PREFIX, dir=instances)
    scratch = utils.owned_tempdir(CHECK_PREFIX, dir=instances)
    tmp = os.path.join(scratch, 'disk')
    try:
        fmt = disk.create(base, tmp, size, instance=instance, image=image,
                          cluster_size=conf.amiboot.overlay_cluster_size)
        with attach.attached(tmp, fmt, conf, image=image) as target:
            grow(target, instance=instance, image=image,
                 fstype=facts['fstype'], checked=facts['clean'])
            fs = inject.GuestFS(target, instance=instance)
            selinux = fs.is_dir('/etc/selinux')
            # What every instance would read first (its authorized_keys):
            # the same in every copy, so read here once.
            known = fs.remember()
        meta.put(tmp, meta.TEMPLATE, {'selinux': selinux, 'known': known})
        _publish(tmp, tpl)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    LOG.info("Made grown template %(tpl)s of %(base)s for %(size)d bytes",
             {'tpl': tpl, 'base': base, 'size': size})


def sweep_templates(base_dir):
    """Remove templates whose base is gone or was replaced; return them.

    Also removes what a build killed midway left (.part of a dead process).
    Safe without a lock: a template is only ever read, through a copy that
    either opened it already or builds it again.
    """
    removed = []
    for kind in (TEMPLATE_DIR, PLAIN_DIR):
        removed += _sweep(base_dir, os.path.join(base_dir, kind))
    if removed:
        LOG.info("Removed templates of removed bases: %s",
                 ', '.join(removed))
    return removed


def _sweep(base_dir, tdir):
    try:
        names = os.listdir(tdir)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        m = _TEMPLATE_RE.match(name)
        if not m:
            continue
        if m.group('pid'):
            stale = not _pid_alive(int(m.group('pid')))
        else:
            current = meta.get_text(os.path.join(base_dir, m.group('base')),
                                    meta.BASE_ID)
            stale = current != m.group('id')
        if stale:
            try:
                os.unlink(os.path.join(tdir, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
