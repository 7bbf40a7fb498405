"""Grow the AMI's filesystem to the whole instance disk.

Nova's qcow2 backend makes a full-size overlay but leaves the filesystem at
the AMI's size; only its Flat backend grows it, after copying the image.
Here the overlay is grown in place: e2fsck -fp, then resize2fs, both from
user space on the attached target (no kernel mount).
"""

import json
import os
import shutil

from oslo_log import log as logging

from nova_amiboot import attach
from nova_amiboot import disk
from nova_amiboot import exception
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

EXT_TYPES = ('ext2', 'ext3', 'ext4')
# Facts about a cached base's filesystem, kept on the base's own inode: they
# derive from its content, which never changes once it is in the cache.
_FACTS_XATTR = 'user.amiboot.fs'
_CHECK_PREFIX = 'amiboot-check-'


def fs_type(target):
    """The filesystem type on ``target`` (blkid low-level probe), or None."""
    try:
        out, _err = target.run('blkid', ['-p', '-o', 'value', '-s', 'TYPE'],
                               ok_codes=(0, 2))
    except exception.CommandFailed:
        return None
    return out.strip() or None


def base_facts(path, conf):
    """{'fstype': ..., 'clean': bool} for a raw base in the cache.

    A new instance disk holds the base's filesystem byte for byte, so the
    check every instance disk would get (e2fsck -fp) is run once, on a
    throwaway overlay of the base: 'clean' means it changed nothing. (A
    read-only e2fsck -n is not that: it passes filesystems that -p still
    repairs, such as wrong free counts.) Recorded in an xattr of the base.
    """
    try:
        return json.loads(os.getxattr(path, _FACTS_XATTR))
    except (OSError, ValueError):
        pass
    facts = {'fstype': None, 'clean': False}
    # Owned: a spawn killed here leaves the next one something to reap. The
    # scratch overlay sits in the instances path, beside the instance disks:
    # the privileged nbd attach connects nothing else.
    instances = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    utils.reap_stale_tempdirs(_CHECK_PREFIX, dir=instances)
    tmp = utils.owned_tempdir(_CHECK_PREFIX, dir=instances)
    try:
        scratch = os.path.join(tmp, 'disk')
        fmt = disk.create(path, scratch, os.path.getsize(path))
        with attach.attached(scratch, fmt, conf) as target:
            facts['fstype'] = fs_type(target)
            if facts['fstype'] in EXT_TYPES:
                try:
                    target.run('e2fsck', ['-fp'])
                    facts['clean'] = True
                except exception.CommandFailed as e:
                    LOG.info("Base %(path)s gets e2fsck on every instance "
                             "disk: %(err)s", {'path': path, 'err': e})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.setxattr(path, _FACTS_XATTR, json.dumps(facts).encode())
    except OSError as e:
        # No user xattrs on this filesystem: check again next time.
        LOG.debug("Cannot record facts of %s: %s", path, e)
    return facts


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
        try:
            # 0: clean, 1: errors fixed, 2: fixed, reboot advised; 4 and
            # up: errors left, which resize2fs must not work on.
            target.run('e2fsck', ['-fp'], ok_codes=(0, 1, 2))
        except exception.CommandFailed as e:
            raise exception.FilesystemCorrupt(instance=instance, image=image,
                                              reason=str(e))
    try:
        # -f: resize2fs wants a check newer than the last mount; the check
        # above (or of the identical base) is that check.
        target.run('resize2fs', ['-f'])
    except exception.CommandFailed as e:
        raise exception.FilesystemCorrupt(instance=instance, image=image,
                                          reason="resize2fs: %s" % e)
    return True
