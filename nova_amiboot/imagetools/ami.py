"""Build an AMI (a bare root filesystem) from a directory tree.

Without mounting anything, on ext4, XFS or btrfs:

- ext4: ``mkfs.ext4 -d`` copies the tree into a new filesystem; ``e2fsck
  -f`` then ``resize2fs -M`` shrink it to its contents, so the image is
  small to store and is grown per instance at spawn time. 4 KiB blocks
  always: mke2fs picks 1 KiB blocks for small filesystems, and such a
  filesystem grown to a 20 GiB flavor has ~2,500 block groups whose
  metadata makes a 16 MiB overlay instead of 3 MiB.
- XFS: ``mkfs.xfs -p PROTOFILE`` (xfs_mkfs(8)), the protofile written here
  from the tree. XFS cannot shrink: the image is sized for the tree (at
  least mkfs.xfs's 300 MiB minimum) and left sparse, so only what mkfs
  wrote takes room.
- btrfs: ``mkfs.btrfs --rootdir`` (``--shrink`` to its contents).

The ext4 and btrfs results are checked read-only in the sandbox (``e2fsck
-fn``, ``btrfs check --readonly``); an XFS one is as mkfs.xfs wrote it,
with the sticky bits the protofile cannot carry set by ``xfs_db`` (in the
sandbox too). XFS and btrfs AMIs are for guest-mode provisioning (the
project's ARI grows them at first boot).
"""

import os
import stat

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


FSTYPES = ('ext4', 'xfs', 'btrfs')
DEFAULT_LABEL = 'cloudimg-rootfs'
# An XFS label holds at most 12 bytes.
XFS_LABEL_MAX = 12
# mkfs.xfs (xfsprogs >= 5.19) refuses a filesystem below 300 MiB.
XFS_MIN_BYTES = 300 * MiB
# mkfs.btrfs refuses a device below about 109 MiB (single profiles).
BTRFS_MIN_BYTES = 128 * MiB


def xfs_protofile(tree, image='?'):
    """A mkfs.xfs protofile (xfs_mkfs(8) ``-p``) for ``tree``.

    Regular files, directories, symbolic links, device nodes and fifos,
    with the tree's modes (set-id bits included) and owners. The format
    is whitespace-separated: a name or link target that holds whitespace
    cannot be written and is refused, as are one named "$" (the
    protofile's end of a directory), an unprintable name and a socket.
    (Hard links become separate copies; extended attributes are not
    carried.)
    """
    lines = ['/dev/null', '0 0']

    def word(text, what):
        # One token of the protofile: printable, no whitespace, and not
        # "$" (which ends a directory there).
        try:
            text.encode('utf-8')
            ok = bool(text) and text != '$' and text.isprintable() and \
                not any(c.isspace() for c in text)
        except UnicodeEncodeError:
            ok = False
        if not ok:
            raise exception.InvalidImage(
                image=image, reason="%s %r cannot go into an XFS protofile "
                "(it holds whitespace or an unprintable character, or is "
                "\"$\")" % (what, text))
        return text

    def entry(path, name):
        st = os.lstat(path)
        mode = st.st_mode
        perm = '%s%s%03o' % ('u' if mode & stat.S_ISUID else '-',
                             'g' if mode & stat.S_ISGID else '-',
                             mode & 0o777)
        owner = '%d %d' % (st.st_uid, st.st_gid)
        prefix = (word(name, 'the name') + ' ') if name else ''
        if stat.S_ISLNK(mode):
            lines.append('%sl%s %s %s' % (prefix, perm, owner, word(
                os.readlink(path), 'the link target of %s' % path)))
        elif stat.S_ISDIR(mode):
            lines.append('%sd%s %s' % (prefix, perm, owner))
            for child in sorted(os.listdir(path)):
                entry(os.path.join(path, child), child)
            lines.append('$')
        elif stat.S_ISREG(mode):
            lines.append('%s-%s %s %s' % (prefix, perm, owner,
                                          word(path, 'the path')))
        elif stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
            lines.append('%s%s%s %s %d %d' % (
                prefix, 'b' if stat.S_ISBLK(mode) else 'c', perm, owner,
                os.major(st.st_rdev), os.minor(st.st_rdev)))
        elif stat.S_ISFIFO(mode):
            lines.append('%sp%s %s' % (prefix, perm, owner))
        else:
            raise exception.InvalidImage(
                image=image, reason="%s is a socket or an unknown kind of "
                "file: no XFS protofile entry for it" % path)

    entry(tree, None)
    return '\n'.join(lines) + '\n'


def build_ami(tree, output, label=None, minimise=True, fstype='ext4'):
    """Write a ``fstype`` AMI of ``tree`` to ``output``; return its size."""
    if fstype not in FSTYPES:
        raise exception.InvalidImage(
            image=output, reason="no AMI on %s: the filesystem is one of "
            "%s" % (fstype, ', '.join(FSTYPES)))
    label = label or DEFAULT_LABEL
    if fstype == 'xfs' and len(label.encode()) > XFS_LABEL_MAX:
        raise exception.InvalidImage(
            image=output, reason="an XFS label holds at most %d bytes, not "
            "%r (give --label)" % (XFS_LABEL_MAX, label))
    if not os.path.isdir(tree):
        raise exception.InvalidImage(image=output,
                                     reason="%s is not a directory" % tree)
    if os.path.exists(output):
        raise exception.InvalidImage(image=output,
                                     reason="%s exists already" % output)
    part = output + '.part'
    try:
        if fstype == 'ext4':
            _ext4(tree, part, label, minimise, output)
        elif fstype == 'xfs':
            _xfs(tree, part, label, output)
        else:
            _btrfs(tree, part, label, minimise, output)
        os.rename(part, output)
    finally:
        for leftover in (part, part + '.proto'):
            if os.path.exists(leftover):
                os.unlink(leftover)
    LOG.info("Built %(fs)s AMI %(out)s from %(tree)s: %(size)d bytes",
             {'fs': fstype, 'out': output, 'tree': tree,
              'size': os.path.getsize(output)})
    return os.path.getsize(output)


def _ext4(tree, part, label, minimise, output):
    # Room for the contents, inodes and journal; resize2fs -M trims it.
    size = int(_tree_bytes(tree) * 1.3) + 64 * MiB
    utils.execute('mkfs.ext4', '-q', '-F', '-T', 'default', '-b', '4096',
                  '-L', label, '-d', tree, '-E', 'root_owner=0:0',
                  part, '%dk' % (size // 1024))
    if minimise:
        sandbox.run(['e2fsck', '-fy', part], output, write=[part],
                    ok_codes=(0, 1))
        sandbox.run(['resize2fs', '-M', part], output, write=[part])
    sandbox.run(['e2fsck', '-fn', part], output, files=[part])


def _sparse_file(path, size):
    # Whole MiB: mkfs rounds a device down to its block size anyway.
    size = -(-size // MiB) * MiB
    with open(path, 'wb') as f:
        f.truncate(size)


def _xfs(tree, part, label, output):
    # The contents, inodes and the internal log; never below the minimum.
    _sparse_file(part, max(XFS_MIN_BYTES,
                           int(_tree_bytes(tree) * 1.3) + 80 * MiB))
    proto = part + '.proto'
    with open(proto, 'w') as f:
        f.write(xfs_protofile(tree, image=output))
    utils.execute('mkfs.xfs', '-q', '-f', '-L', label, '-p', proto, part)
    # A protofile mode has no sticky bit (three octal digits): set it on
    # what has it in the tree (/tmp, /var/tmp), through xfs_db in expert
    # mode on this new image, then read it back.
    for path, mode in _sticky(tree):
        sandbox.run(['xfs_db', '-x', '-c', 'path %s' % path, '-c',
                     'write core.mode 0%o' % mode, part], output,
                    write=[part])
        got = sandbox.run(['xfs_db', '-r', '-c', 'path %s' % path, '-c',
                           'print core.mode', part], output,
                          files=[part]).text.strip()
        if got != 'core.mode = 0%o' % mode:
            raise exception.InvalidImage(
                image=output, reason="cannot set the sticky bit of %s: %s"
                % (path, utils.one_line(got)))


def _sticky(tree):
    """(path from the tree's root as '/a/b', mode) with the sticky bit."""
    found = []
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            mode = os.lstat(full).st_mode
            if mode & stat.S_ISVTX and not stat.S_ISLNK(mode):
                found.append(('/' + os.path.relpath(full, tree), mode))
    mode = os.lstat(tree).st_mode
    if mode & stat.S_ISVTX:
        found.append(('/', mode))
    return sorted(found)


def _btrfs(tree, part, label, minimise, output):
    _sparse_file(part, max(BTRFS_MIN_BYTES,
                           int(_tree_bytes(tree) * 1.5) + 64 * MiB))
    cmd = ['mkfs.btrfs', '-q', '-f', '-L', label, '--rootdir', tree]
    if minimise:
        cmd.append('--shrink')
    utils.execute(*(cmd + [part]))
    sandbox.run(['btrfs', 'check', '--readonly', part], output, files=[part])
