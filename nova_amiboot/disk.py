"""The instance root disk: a qcow2 overlay over the raw base, or a copy."""

import errno
import os
import shutil

from oslo_log import log as logging

from nova_amiboot import exception
from nova_amiboot import sandbox

LOG = logging.getLogger(__name__)


def create(base, path, size, mode='overlay', instance='?', image='?',
           cluster_size=None):
    """Make the instance disk at ``path`` with ``size`` bytes.

    Returns the disk format ('qcow2' or 'raw'). Refuses a size smaller than
    the base (the AMI's filesystem would not fit). Nothing is left at
    ``path`` on failure. ``cluster_size``: of the overlay (qemu-img's
    default when None).
    """
    needed = os.path.getsize(base)
    if size < needed:
        raise exception.FlavorDiskTooSmall(instance=instance, flavor=size,
                                           needed=needed, image=image)
    if os.path.exists(path):
        raise exception.AmibootException(
            "Instance %s: disk %s exists already" % (instance, path))
    try:
        if mode == 'overlay':
            # -F raw: the backing format is stated, never probed; -u: the
            # base is not opened (its size is not needed, ours is given).
            opts = 'backing_file=%s,backing_fmt=raw' % base
            if cluster_size:
                opts += ',cluster_size=%d' % int(cluster_size)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644))
            sandbox.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u',
                         '-o', opts, path, str(size)], image,
                        write=[path], timeout=120)
            return 'qcow2'
        # Parity with nova's Flat backend: a full raw copy, then grown.
        shutil.copyfile(base, path)
        sandbox.run(['qemu-img', 'resize', '-q', '-f', 'raw', path,
                     str(size)], image, write=[path], timeout=120,
                    file_size=size + 1)
        return 'raw'
    except BaseException as e:
        if os.path.exists(path):
            os.unlink(path)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or \
                'No space left' in str(e):
            raise exception.DiskFull(path=os.path.dirname(path),
                                     action="creating the disk of %s"
                                     % instance)
        raise
