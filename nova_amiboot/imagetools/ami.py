"""Build an AMI (a bare ext4 root filesystem) from a directory tree.

``mkfs.ext4 -d`` copies the tree into a new filesystem without mounting
anything; ``e2fsck -f`` then ``resize2fs -M`` shrink it to its contents, so
the image is small to store and is grown per instance at spawn time.

4 KiB blocks always: mke2fs picks 1 KiB blocks for small filesystems, and
such a filesystem grown to a 20 GiB flavor has ~2,500 block groups whose
metadata makes a 16 MiB overlay instead of 3 MiB.
"""

import os

from oslo_log import log as logging
from oslo_utils import units

from nova_amiboot import exception
from nova_amiboot import sandbox
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

MiB = units.Mi


def _tree_bytes(tree):
    total = 0
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            total += max(st.st_blocks * 512, 4096)
    return total


def build_ami(tree, output, label='cloudimg-rootfs', minimise=True):
    """Write an ext4 AMI of ``tree`` to ``output``; return its size."""
    if not os.path.isdir(tree):
        raise exception.InvalidImage(image=output,
                                     reason="%s is not a directory" % tree)
    if os.path.exists(output):
        raise exception.InvalidImage(image=output,
                                     reason="%s exists already" % output)
    # Room for the contents, inodes and journal; resize2fs -M trims it.
    size = int(_tree_bytes(tree) * 1.3) + 64 * MiB
    part = output + '.part'
    try:
        utils.execute('mkfs.ext4', '-q', '-F', '-T', 'default', '-b', '4096',
                      '-L', label, '-d', tree, '-E', 'root_owner=0:0',
                      part, '%dk' % (size // 1024))
        if minimise:
            sandbox.run(['e2fsck', '-fy', part], output, write=[part],
                        ok_codes=(0, 1))
            sandbox.run(['resize2fs', '-M', part], output, write=[part])
        sandbox.run(['e2fsck', '-fn', part], output, files=[part])
        os.rename(part, output)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    LOG.info("Built AMI %(out)s from %(tree)s: %(size)d bytes",
             {'out': output, 'tree': tree, 'size': os.path.getsize(output)})
    return os.path.getsize(output)
