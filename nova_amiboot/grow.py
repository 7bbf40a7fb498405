"""Grow the AMI's filesystem to the whole instance disk.

Nova's qcow2 backend makes a full-size overlay but leaves the filesystem at
the AMI's size; only its Flat backend grows it, after copying the image.
Here the overlay is grown in place: e2fsck -fp, then resize2fs, both from
user space on the attached target (no kernel mount).
"""

from oslo_log import log as logging

from nova_amiboot import exception

LOG = logging.getLogger(__name__)

EXT_TYPES = ('ext2', 'ext3', 'ext4')


def fs_type(target):
    """The filesystem type on ``target`` (blkid low-level probe), or None."""
    try:
        out, _err = target.run('blkid', ['-p', '-o', 'value', '-s', 'TYPE'],
                               ok_codes=(0, 2))
    except exception.CommandFailed:
        return None
    return out.strip() or None


def grow(target, instance='?', image='?', fstype=None):
    """Grow an ext2/3/4 filesystem on ``target``; return True if grown."""
    fstype = fstype or fs_type(target)
    if fstype not in EXT_TYPES:
        LOG.warning("Instance %(inst)s: filesystem %(fs)s of image "
                    "%(image)s is not ext2/3/4; left at its size",
                    {'inst': instance, 'fs': fstype, 'image': image})
        return False
    try:
        # 0: clean, 1: errors fixed, 2: fixed, reboot advised; 4 and up:
        # errors left, which resize2fs must not work on.
        target.run('e2fsck', ['-fp'], ok_codes=(0, 1, 2))
    except exception.CommandFailed as e:
        raise exception.FilesystemCorrupt(instance=instance, image=image,
                                          reason=str(e))
    try:
        target.run('resize2fs', [])
    except exception.CommandFailed as e:
        raise exception.FilesystemCorrupt(instance=instance, image=image,
                                          reason="resize2fs: %s" % e)
    return True
