"""Turn a whole-disk image into an AMI triplet, without mounting it.

Distributions publish whole disks (a partition table, an ESP or BIOS boot
partition, a root partition with /boot inside). The AMI method needs a bare
root filesystem, a kernel and a ramdisk. Here:

1. the source (raw or qcow2) passes the same format checks as any image
   (no backing or data file, virtual size under the cap);
2. ``sfdisk --json`` reads its partition table (for qcow2 from a raw copy of
   the disk's first MiBs, sparse to the full size);
3. each candidate partition's first MiB is copied out and probed with
   ``blkid -p``; Linux partition types and root labels are tried first;
4. an ext2/3/4 candidate is copied out whole (``qemu-img convert`` of the
   partition's byte range, sparse) and is the root when it holds
   /etc/os-release and /sbin/init;
5. the newest /boot/vmlinuz-* (or the one asked for) is read out, and the
   ARI is built by the project's ARI builder from that kernel's own modules;
6. /etc/fstab names the root by LABEL= and loses the entries of partitions
   that no longer exist; a /boot partition's files move into /boot;
7. the filesystem gets its label, is shrunk (resize2fs -M) and its free
   blocks are discarded, which in a regular file punches holes: they read
   as zeros and the image compresses.

Everything read from the image goes through debugfs from user space; paths
through a symbolic link are refused, and sizes are bounded.
"""

import dataclasses
import json
import os
import re
import shutil
import stat
import tempfile

from oslo_log import log as logging
from oslo_utils.imageutils import format_inspector
from oslo_utils import units

from nova_amiboot.imagetools import appliance
from nova_amiboot.imagetools import ari
from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import inject
from nova_amiboot import e2fs
from nova_amiboot import safety
from nova_amiboot import sandbox
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

MiB = units.Mi
# The partition table of a GPT or MBR disk (logical partitions aside) lives
# in the first MiB; 4 MiB leaves room for unusual layouts.
TABLE_BYTES = 4 * MiB
PROBE_BYTES = 1 * MiB
# Bounds for what is read out of the image onto the host.
MAX_KERNEL = 256 * MiB
MAX_TEXT = 1 * MiB
MAX_MODULES = 2048 * MiB

EXT_TYPES = ('ext2', 'ext3', 'ext4')
# What blkid calls root filesystems that cannot become an AMI, and what we
# say about them.
UNSUPPORTED = {
    'LVM2_member': 'an LVM physical volume',
    'crypto_LUKS': 'LUKS-encrypted',
    'btrfs': 'btrfs',
    'xfs': 'XFS',
    'zfs_member': 'ZFS',
    'swap': None,
    'vfat': None,
}
# GPT partition type GUIDs (lower case) and MBR type codes.
GPT_ROOT_TYPES = {
    '4f68bce3-e8cd-4db1-96e7-fbcaf984b709',   # Linux root (x86-64)
    '44479540-f297-41b2-9af7-d131d5f0458a',   # Linux root (x86)
    'b921b045-1df0-41c3-af44-4c6f280d3fae',   # Linux root (ARM64)
}
GPT_LINUX_TYPES = {
    '0fc63daf-8483-4772-8e79-3d69d8477de4',   # Linux filesystem
    'e6d6d379-f507-44c2-a23c-238f2a3df928',   # Linux LVM
    'ca7d7ccb-63ed-4c53-861c-1742536059cc',   # Linux LUKS
    'bc13c2ff-59e6-4262-a352-b275fd6f7172',   # Linux extended boot
}
GPT_SKIP_TYPES = {
    'c12a7328-f81f-11d2-ba4b-00a0c93ec93b',   # EFI system partition
    '21686148-6449-6e6f-744e-656564454649',   # BIOS boot
    '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f',   # Linux swap
}
MBR_LINUX_TYPES = {'83', '8e'}
MBR_SKIP_TYPES = {'ef', '82', '5', 'f', '85', 'ee'}
ROOT_LABELS = {'cloudimg-rootfs', 'root', 'rootfs', '/'}

LABEL_RE = re.compile(r'^[A-Za-z0-9_.-]{1,16}$')
VERSION_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$')
DEFAULT_LABEL = 'cloudimg-rootfs'
DEFAULT_CMDLINE = 'ro console=tty0 console=ttyS0'
# fstab sources that name a disk or partition: none of them exists in an
# instance but the root, which becomes LABEL=.
_BLOCK_SPEC = re.compile(r'^(UUID|PARTUUID|LABEL|PARTLABEL)=|^/dev/')


@dataclasses.dataclass
class Partition:
    number: int
    start: int          # bytes
    size: int           # bytes
    type: str = ''
    name: str = ''
    fstype: str = None
    label: str = None
    uuid: str = None

    def describe(self):
        return 'partition %d' % self.number if self.number else 'the disk'


@dataclasses.dataclass
class Triplet:
    kernel: str
    ramdisk: str
    root: str
    kernel_version: str
    modules: list
    cmdline: str
    root_partition: int
    os_name: str
    root_size: int
    dropped_fstab: list


# processutils replaces the whole environment with env_variables: keep PATH
# (sfdisk and e2fsprogs live in /sbin).
_C_LOCALE = {'LC_ALL': 'C', 'PATH': os.environ.get('PATH', os.defpath)}


def _fail(image, reason):
    raise exception.InvalidImage(image=image, reason=reason)


# --- the source disk ------------------------------------------------------

def inspect_source(src, image, conf):
    """('raw'|'qcow2', virtual size) of a whole-disk image, or refuse."""
    if not os.path.isfile(src):
        raise exception.ImageNotFound(image=image, source="file %s" % src)
    try:
        inspector = format_inspector.detect_file_format(src)
    except format_inspector.ImageFormatError as e:
        raise exception.UnsafeImage(image=image,
                                    reason="ambiguous format: %s" % e)
    detected = str(inspector) if inspector else 'raw'
    if detected == 'qcow2':
        return 'qcow2', safety.inspect(src, 'qcow2', image,
                                       conf).virtual_size
    if detected not in ('raw', 'gpt'):
        raise exception.ImageFormatMismatch(image=image,
                                            claimed='raw or qcow2',
                                            detected=detected)
    # A disk with a partition table is "gpt" to the inspector (MBR too).
    try:
        inspector.safety_check()
    except (format_inspector.SafetyCheckFailed,
            format_inspector.ImageFormatError) as e:
        raise exception.UnsafeImage(image=image, reason=str(e))
    info = safety._qemu_img_info(src, 'raw', image, conf)
    vsize = info.virtual_size
    limit = conf.amiboot.max_image_virtual_size_gb * units.Gi
    if vsize > limit:
        raise exception.ImageTooLarge(image=image, size=vsize, limit=limit)
    return 'raw', vsize


def _range_spec(src, fmt, offset, size):
    """qemu ``json:`` filename for bytes [offset, offset+size) of ``src``.

    Drivers named explicitly: nothing is probed (CVE-2014-0134); a qcow2
    source is opened with no backing at all, whatever its header names
    (inspect_source refused one that has a backing file).
    """
    inner = {'driver': 'file', 'filename': src}
    if fmt != 'raw':
        inner = {'driver': 'qcow2', 'file': inner, 'backing': None}
    return 'json:' + json.dumps({'driver': 'raw', 'offset': offset,
                                 'size': size, 'file': inner})


def copy_range(src, fmt, offset, size, dst, image=None, conf=None):
    """Copy a byte range of the disk into the raw file ``dst`` (sparse)."""
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    lim = sandbox.Limits.from_conf(
        conf, timeout=conf.amiboot.image_convert_timeout,
        timeout_name='[amiboot] image_convert_timeout') if conf \
        else sandbox.Limits()
    with sandbox.Run(image or src, lim) as r:
        r.execute(['qemu-img', 'convert', '-q',
                   _range_spec(r.file(src), fmt, offset, size), '-O', 'raw',
                   r.file(dst, write=True)])
    with open(dst, 'r+b') as f:
        f.truncate(size)


def read_partitions(src, fmt, vsize, work, image, conf=None):
    """The disk's partitions per sfdisk; [whole disk] if it has none."""
    if fmt == 'raw':
        table_file = src
    else:
        table_file = os.path.join(work, 'table.raw')
        copy_range(src, fmt, 0, min(TABLE_BYTES, vsize), table_file, image,
                   conf)
        with open(table_file, 'r+b') as f:
            f.truncate(vsize)
    # A partition table at all? (blkid's low-level probe: exit 2 and no
    # PTTYPE when there is none.) Then sfdisk reads it.
    pttype = sandbox.run(['blkid', '-p', '-o', 'value', '-s', 'PTTYPE',
                          table_file], image, files=[table_file],
                         ok_codes=(0, 2)).text.strip()
    if not pttype:
        return [Partition(0, 0, vsize)]
    try:
        out = sandbox.run(['sfdisk', '--json', table_file], image,
                          files=[table_file]).text
    except exception.CommandFailed as e:
        _fail(image, "cannot read its %s partition table: %s" % (pttype, e))
    table = json.loads(out or '{}').get('partitiontable') or {}
    sector = int(table.get('sectorsize', 512))
    parts = []
    for p in table.get('partitions', []):
        m = re.search(r'(\d+)$', p.get('node', ''))
        start, size = int(p['start']) * sector, int(p['size']) * sector
        if not m or start + size > vsize:
            _fail(image, "partition %s lies outside the disk"
                  % p.get('node'))
        parts.append(Partition(int(m.group(1)), start, size,
                               str(p.get('type', '')).lower(),
                               p.get('name', '')))
    if not parts:
        _fail(image, "its partition table is empty")
    return parts


def _rank(part):
    """Lower is tried first; None: never a root candidate."""
    if part.type in GPT_SKIP_TYPES or part.type in MBR_SKIP_TYPES:
        return None
    if part.type in GPT_ROOT_TYPES:
        return 0
    if (part.name or '').lower() in ROOT_LABELS:
        return 1
    if part.type in GPT_LINUX_TYPES or part.type in MBR_LINUX_TYPES:
        return 2
    return 3


def probe(src, fmt, part, work, conf=None, image=None):
    """Fill in fstype/label/uuid of ``part`` from its first MiB."""
    path = os.path.join(work, 'probe-%d' % part.number)
    copy_range(src, fmt, part.start, min(PROBE_BYTES, part.size), path,
               image, conf)
    with open(path, 'r+b') as f:
        f.truncate(part.size)
    try:
        out = sandbox.run(['blkid', '-p', '-o', 'export', path],
                          image or src, files=[path], ok_codes=(0, 2)).text
    finally:
        os.unlink(path)
    values = dict(line.split('=', 1) for line in out.splitlines()
                  if '=' in line)
    part.fstype = values.get('TYPE')
    part.label = values.get('LABEL')
    part.uuid = values.get('UUID')
    return part


# --- reading files out of an ext filesystem -------------------------------

# Host paths that go into our own debugfs scripts (the work directory and
# what we make in it): one plain word for debugfs's parser.
_HOST_PATH = re.compile(r'/[A-Za-z0-9_@+:./-]{1,1023}')
# One entry of debugfs ``ls -p``: /inode/mode/uid/gid/name/size/. Names
# are used only after the grammar (and, in listdir, a secure lookup).
_LS_P = re.compile(
    r'/([0-9]{1,10})/([0-7]{1,7})/[0-9]+/[0-9]+/(.*)/([0-9]*)/')
# Bounds of a tree extracted from an image (a modules tree has ~4,000).
MAX_TREE_ENTRIES = 100000
MAX_TREE_DEPTH = 32
_MAX_LINE = e2fs.MAX_LINE
# Prefixes looked up in one debugfs run (two requests each).
_BATCH = 200
DEBUGFS_TIMEOUT = 600


class ImageFS(inject.GuestFS):
    """A filesystem in a plain file, read with bounds, symlinks refused.

    Kind, existence and size always come from GuestFS's fixed-form inode
    lookups (imap/idump), every component a real directory. Bulk data (a
    kernel, a modules tree, /boot files written in) cannot travel in the
    fixed requests; for those this class runs debugfs itself on the plain
    file it owns (never an nbd device: no privilege is involved), with
    scripts built here from names of the e2fs grammar and inode numbers
    from the secure lookup. Only files come back (dump/rdump into our
    private work directory) and names from ``ls -p``, each checked again
    before use. ``stat`` output is never parsed.
    """

    def __init__(self, path, image, conf=None):
        lim = sandbox.Limits.from_conf(conf) if conf else sandbox.Limits()
        super().__init__(attach.Target(path, 'file', image=image,
                                       limits=lim), instance=image)
        self.image = image

    def _fail(self, what, reason):
        raise exception.InvalidImage(image=self.image,
                                     reason="%s: %s" % (what, reason))

    def check_path(self, path):
        try:
            return super().check_path(path)
        except exception.UnsafeInjectionPath as e:
            self._fail(path, e.kwargs.get('reason', str(e)))

    def _prefixes(self, path):
        try:
            return super()._prefixes(path)
        except exception.UnsafeInjectionPath as e:
            self._fail(path, e.kwargs.get('reason', str(e)))

    def _lookup(self, paths):
        """{path: _Inode or None} for plain absolute ``paths``.

        An inode is returned only when every directory on the way is a real
        directory (not a link): what a link points to is never looked at.
        The last component may be anything, a link included.
        """
        found, wanted = {}, []
        for path in paths:
            for p in self._prefixes(path):
                if p not in wanted:
                    wanted.append(p)
        for i in range(0, len(wanted), _BATCH):
            batch = wanted[i:i + _BATCH]
            inodes = self._query(batch[0], batch)[0]
            found.update(zip(batch, inodes))
        result = {}
        for path in paths:
            prefixes = self._prefixes(path)
            dirs = [found[p] for p in prefixes[:-1]]
            if all(d is not None and d.kind == 'dir' for d in dirs):
                result[path] = found[prefixes[-1]]
            else:
                result[path] = None
        return result

    def inode(self, path):
        return self._lookup([path])[path]

    def kind(self, path):
        """'file', 'dir', 'link', 'other' or None.

        None: absent, or reached only through a link or a non-directory.
        """
        inode = self.inode(path)
        return inode.kind if inode is not None else None

    def exists(self, path):
        # A link counts as there (merged-/usr images: /usr/sbin/init ->
        # systemd); it is never followed.
        return self.inode(path) is not None

    def _real_dir(self, path):
        """The inode of ``path`` if it is a real directory all the way."""
        if path == '/':
            return 2
        inode = self.inode(path)
        return inode.ino if inode is not None and inode.kind == 'dir' \
            else None

    def size(self, path):
        inode = self.check_path(path)[-1][1]
        if inode is None:
            self._fail(path, "does not exist")
        return inode.size

    def _host(self, path):
        if not _HOST_PATH.fullmatch(path) or '//' in path:
            self._fail(path, "work path not usable in a debugfs script")
        return path

    def _run(self, lines, write=False, what='files', outdir=None,
             indirs=()):
        """Run our own debugfs script on our file; return (stdout, errors).

        Every line is built in this class from checked names, inode numbers
        and host paths of our work directory. In the sandbox: ``outdir``
        (a private directory the script writes into) and ``indirs`` (that
        it reads from) are its only host directories.
        """
        for line in lines:
            if not line.isascii() or not line.isprintable() or \
                    len(line) >= _MAX_LINE:
                self._fail(what, "debugfs line too long or not one line")
        try:
            with sandbox.Run(self.image, self.target.limits or
                             sandbox.Limits()) as r:
                cmd = ['debugfs'] + (['-w'] if write else []) + \
                    ['-f', '-', r.file(self.target.path, write=write)]
                dirs = ([(outdir, True)] if outdir else []) + \
                    [(d, False) for d in indirs]
                for d, w in dirs:
                    # Our own script's paths under d: as the sandbox has it.
                    inside = r.outdir(d, write=w)
                    lines = [' '.join(sandbox.in_dir(line.split(' '), d,
                                                     inside))
                             for line in lines]
                script = ''.join(line + '\n' for line in lines).encode(
                    'ascii')
                res = r.execute(cmd, stdin=script)
        except exception.CommandFailed as e:
            self._fail(what, str(e))
        out, err = res.text, res.err
        errors = [line for line in err.splitlines()
                  if line.strip() and not inject._BANNER.fullmatch(
                      line.strip())]
        return out, errors

    def read_bounded(self, path, limit, dest):
        """Copy the regular file ``path`` to ``dest`` (at most ``limit``).

        Every component must be a real directory and the file a regular
        file: a link is refused, never followed. The size comes from the
        inode before anything is read, and the file is dumped by its inode
        number.
        """
        inode = self.check_path(path)[-1][1]
        if inode is None:
            return None
        if inode.size > limit:
            self._fail(path, "%d bytes, over the limit of %d"
                       % (inode.size, limit))
        private = tempfile.mkdtemp(prefix='dump-',
                                   dir=os.path.dirname(dest))
        try:
            out_file = os.path.join(private, 'file')
            _out, errors = self._run(['dump <%d> %s'
                                      % (inode.ino, self._host(out_file))],
                                     what=path, outdir=private)
            if errors:
                self._fail(path, '; '.join(errors))
            # Written by the sandboxed debugfs: a link is not a file.
            st = os.lstat(out_file) if os.path.lexists(out_file) else None
            got = st.st_size if st and stat.S_ISREG(st.st_mode) else -1
            if got != inode.size:
                self._fail(path, "read %d bytes of %d" % (got, inode.size))
            os.rename(out_file, dest)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return dest

    def read_text(self, path, work):
        content = self.read(path, MAX_TEXT)
        if content is None:
            return None
        return content.decode('utf-8', 'replace')

    def read(self, path, limit=inject.READ_LIMIT):
        try:
            return super().read(path, limit)
        except exception.UnsafeInjectionPath as e:
            self._fail(path, e.kwargs.get('reason', str(e)))
        except exception.GuestFileTooLarge:
            self._fail(path, "over the limit of %d bytes" % limit)

    def listdir(self, path):
        """{name: (kind, size)} of a real directory ({} if it is not one).

        Names come from ``ls -p``; each must be a plain name and is looked
        up again with the secure lookup, which gives kind and size.
        """
        ino = self._real_dir(path)
        if ino is None:
            return {}
        out, errors = self._run(['ls -p <%d>' % ino], what=path)
        if errors:
            self._fail(path, '; '.join(errors))
        names = []
        for line in out.splitlines():
            m = _LS_P.fullmatch(line)
            if not m:
                continue
            name = m.group(3)
            if name in ('.', '..') or not e2fs.NAME.fullmatch(name):
                # Not a name we can use safely: left out.
                continue
            names.append(name)
        base = '' if path == '/' else path
        inodes = self._lookup([base + '/' + n for n in names])
        return {n: (inodes[base + '/' + n].kind, inodes[base + '/' + n].size)
                for n in names if inodes[base + '/' + n] is not None}

    def _entries(self, ino, where):
        """[(name, inode number, kind, size)] of the directory inode ``ino``.

        One debugfs run per directory: a name in the image cannot make one
        directory's listing pass for another's. Only names of the e2fs
        grammar are kept, and a name seen twice (two entries of one name in
        different directory blocks pass e2fsck) refuses the whole tree.
        """
        out, errors = self._run(['ls -p <%d>' % ino], what=where)
        if errors:
            self._fail(where, '; '.join(errors))
        entries, seen = [], set()
        for line in out.splitlines():
            m = _LS_P.fullmatch(line)
            if not m:
                continue
            child, mode, name, size = (int(m.group(1)), int(m.group(2), 8),
                                       m.group(3), m.group(4))
            if name in ('.', '..'):
                continue
            if name in seen:
                self._fail(where, "two directory entries are named %r"
                           % name)
            seen.add(name)
            if not e2fs.NAME.fullmatch(name):
                LOG.info("Image %(image)s: %(where)s: skipping an entry "
                         "whose name is not plain", {'image': self.image,
                                                     'where': where})
                continue
            kind = {0o040000: 'dir', 0o100000: 'file'}.get(mode & 0o170000,
                                                           'other')
            entries.append((name, child, kind, mode & 0o777,
                            int(size or 0)))
        return entries

    def dump_tree(self, path, dest, limit):
        """Extract a real directory, by inode, into the new dir ``dest``.

        Nothing is extracted by following names onto the host: every
        directory is listed by its inode number, every regular file is
        dumped by its inode number into a private directory under a name
        made here, then copied into a file created with
        O_CREAT|O_EXCL|O_NOFOLLOW under a directory opened with O_NOFOLLOW
        and made here. Links, devices, sockets and fifos are never created;
        a name seen twice in one directory refuses the tree. Returns the
        extracted directory (``dest`` for ``/``, else
        ``dest/<basename>``), or None if ``path`` is not a real directory.
        """
        ino = self._real_dir(path)
        if ino is None:
            return None
        os.mkdir(dest, 0o755)
        if path == '/':
            result, top = dest, dest
        else:
            result = os.path.join(dest, os.path.basename(path))
            os.mkdir(result, 0o755)
            top = result
        # Walk the tree by inode: (directory inode, its path in the image,
        # its path under ``top``).
        files, total, count = [], 0, 0
        pending, visited = [(ino, path, '')], {ino}
        while pending:
            dir_ino, where, rel = pending.pop()
            for name, child, kind, mode, size in self._entries(dir_ino,
                                                               where):
                count += 1
                if count > MAX_TREE_ENTRIES:
                    self._fail(path, "more than %d entries"
                               % MAX_TREE_ENTRIES)
                image_path = where.rstrip('/') + '/' + name
                if kind == 'dir':
                    if path == '/' and not rel and name == 'lost+found':
                        continue
                    if child in visited or rel.count('/') >= MAX_TREE_DEPTH:
                        self._fail(image_path, "directory loop or too deep")
                    visited.add(child)
                    sub = os.path.join(rel, name)
                    os.mkdir(os.path.join(top, sub), 0o755)
                    pending.append((child, image_path, sub))
                elif kind == 'file':
                    total += size
                    if total > limit:
                        self._fail(path, "over the limit of %d bytes"
                                   % limit)
                    files.append((child, size, mode, rel, name, image_path))
                else:
                    LOG.debug("Image %(image)s: %(path)s is neither a file "
                              "nor a directory: not extracted",
                              {'image': self.image, 'path': image_path})
        private = tempfile.mkdtemp(prefix='dump-', dir=os.path.dirname(dest))
        try:
            for i in range(0, len(files), _BATCH):
                batch = files[i:i + _BATCH]
                names = [os.path.join(private, str(n))
                         for n in range(i, i + len(batch))]
                _out, errors = self._run(
                    ['dump <%d> %s' % (f[0], self._host(out_file))
                     for f, out_file in zip(batch, names)], what=path,
                    outdir=private)
                if errors:
                    self._fail(path, '; '.join(errors))
                for (child, size, mode, rel, name, image_path), out_file in \
                        zip(batch, names):
                    _place(out_file, top, rel, name, mode, size,
                           lambda why, p=image_path: self._fail(p, why))
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return result

    def remove(self, path):
        """Remove the regular file ``path`` (checked: no link on the way)."""
        parts = self.check_path(path)
        if parts[-1][1] is None:
            return False
        parent = parts[-2][1].ino if len(parts) > 1 else 2
        _out, errors, _t = self.debugfs(
            [('cd', parent), ('rm', os.path.basename(path))], write=True,
            what=path)
        if errors:
            self._fail(path, '; '.join(errors))
        return True


def _place(src, top, rel, name, mode, size, fail):
    """Copy the dumped file ``src`` to ``top/rel/name``, never following.

    Each directory on the way is opened with O_NOFOLLOW (they were made by
    dump_tree); the file is created with O_CREAT|O_EXCL|O_NOFOLLOW, so
    nothing that already exists there, a link above all, is ever written
    through.
    """
    nofollow = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fds = [os.open(top, nofollow)]
    try:
        for part in [p for p in rel.split('/') if p]:
            fds.append(os.open(part, nofollow, dir_fd=fds[-1]))
        # The sandboxed debugfs wrote ``src``: never follow what it left.
        try:
            # O_NONBLOCK: a fifo left there must not hang this open.
            fds.append(os.open(src, os.O_RDONLY | os.O_NOFOLLOW |
                               os.O_NONBLOCK))
            st = os.fstat(fds[-1])
            got = st.st_size if stat.S_ISREG(st.st_mode) else -1
        except OSError:
            got = -1
        if got != size:
            fail("read %d bytes of %d" % (got, size))
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                      os.O_NOFOLLOW, 0o644 | (mode & 0o111),
                      dir_fd=fds[-2])
        try:
            left = size
            while left:
                n = os.copy_file_range(fds[-1], out, left)
                if n == 0:
                    fail("read %d bytes of %d" % (size - left, size))
                left -= n
        finally:
            os.close(out)
        os.unlink(src)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _version_key(version):
    return [(0, int(t), '') if t.isdigit() else (1, 0, t)
            for t in re.findall(r'\d+|[^\d]+', version)]


def is_linux_root(fs):
    return (fs.kind('/etc') == 'dir' and
            (fs.exists('/etc/os-release') or fs.exists('/usr/lib/os-release'))
            and (fs.exists('/sbin/init') or fs.exists('/usr/sbin/init')))


def os_name(fs, work):
    for path in ('/etc/os-release', '/usr/lib/os-release'):
        if fs.kind(path) != 'file':
            continue    # /etc/os-release is often a link to the other
        text = fs.read_text(path, work) or ''
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', text, re.M)
        if m:
            return m.group(1)
    return 'Linux'


def choose_kernel(fs, image, version=None):
    if fs._real_dir('/boot') is None:
        _fail(image, "its root filesystem has no /boot directory")
    kernels = {name[len('vmlinuz-'):]: kind
               for name, (kind, _size) in fs.listdir('/boot').items()
               if name.startswith('vmlinuz-')}
    if version:
        if kernels.get(version) != 'file':
            _fail(image, "no kernel /boot/vmlinuz-%s (found: %s)"
                  % (version, ', '.join(sorted(kernels)) or 'none'))
        return version
    found = sorted((v for v, kind in kernels.items()
                    if kind == 'file' and VERSION_RE.match(v)),
                   key=_version_key)
    if not found:
        _fail(image, "no kernel /boot/vmlinuz-* in its root filesystem")
    return found[-1]


def rewrite_fstab(text, label, fstype):
    """(new fstab, dropped lines): root by LABEL=, other disks gone."""
    lines, dropped, have_root = [], [], False
    for line in (text or '').splitlines():
        fields = line.split()
        if not fields or fields[0].startswith('#') or len(fields) < 2:
            lines.append(line)
            continue
        if fields[1] == '/':
            fields[0] = 'LABEL=%s' % label
            if len(fields) > 2:
                fields[2] = fstype
            lines.append(' '.join(fields))
            have_root = True
        elif _BLOCK_SPEC.match(fields[0]):
            # A partition of the source disk (ESP, /boot, swap) or another
            # disk: the instance has only its root disk.
            dropped.append(line)
        else:
            lines.append(line)
    if not have_root:
        lines.insert(0, 'LABEL=%s / %s defaults 0 1' % (label, fstype))
    return '\n'.join(lines) + '\n', dropped


def _merge_boot(root_fs, boot_tree, image):
    """Write a /boot partition's files into the root's /boot.

    Every name is a plain name (e2fs grammar) and every target path is
    looked up securely first: a directory there is used, a regular file
    replaced, anything else (a link, a device) refused.
    """
    dirs_wanted, files_wanted = ['/boot'], []
    for dirpath, dirs, files in os.walk(boot_tree):
        rel = os.path.relpath(dirpath, boot_tree)
        target_dir = '/boot' if rel == '.' else '/boot/' + rel
        for name in sorted(dirs):
            dirs_wanted.append(target_dir + '/' + name)
        for name in sorted(files):
            files_wanted.append((target_dir, name, os.path.join(dirpath,
                                                                name)))
    paths = dirs_wanted + [d + '/' + n for d, n, _src in files_wanted]
    # The grammar first (plain names, bounded length), then the lookup.
    for p in paths:
        root_fs._prefixes(p)
    found = root_fs._lookup(paths)
    script = []
    for p in dirs_wanted:
        inode = found[p]
        if inode is None:
            script += ['mkdir %s' % p, 'sif %s mode 040755' % p,
                       'sif %s uid 0' % p, 'sif %s gid 0' % p]
        elif inode.kind != 'dir':
            _fail(image, "cannot move /boot into the root: %s is a %s"
                  % (p, inode.kind))
    for target_dir, name, src in files_wanted:
        inode = found[target_dir + '/' + name]
        mode = os.lstat(src).st_mode & 0o777
        script.append('cd %s' % target_dir)
        if inode is not None:
            if inode.kind != 'file':
                _fail(image, "cannot move /boot into the root: %s/%s is a "
                      "%s" % (target_dir, name, inode.kind))
            script.append('rm %s' % name)
        script += ['write %s %s' % (root_fs._host(src), name),
                   'sif %s mode 0%o' % (name, 0o100000 | mode),
                   'sif %s uid 0' % name, 'sif %s gid 0' % name]
    if files_wanted or len(dirs_wanted) > 1 or found['/boot'] is None:
        _out, errors = root_fs._run(script, write=True, what='/boot',
                                    indirs=[boot_tree])
        if errors:
            _fail(image, "cannot move /boot into the root: %s"
                  % '; '.join(errors))


def _fs_tool(cmd, path, image, conf, write=True, ok_codes=(0,)):
    lim = sandbox.Limits.from_conf(conf) if conf else sandbox.Limits()
    with sandbox.Run(image, lim) as r:
        argv = [r.file(c, write=write) if c == path else c for c in cmd]
        return r.execute(argv, ok_codes=ok_codes).text


def check_fs(path, image, conf=None):
    """e2fsck -fy our copy: replays the journal before anything is edited.

    debugfs ignores the journal; an edit made before a replay would be
    overwritten by the replay (a guest stopped without a clean unmount, a
    disk image saved from a running system).
    """
    try:
        _fs_tool(['e2fsck', '-fy', path], path, image, conf,
                 ok_codes=(0, 1, 2))
    except exception.CommandFailed as e:
        _fail(image, "its root filesystem is damaged beyond repair: %s" % e)


def finish_fs(path, label, image, conf=None):
    """Label, shrink, zero free blocks, trim the file to the filesystem."""
    try:
        _fs_tool(['e2fsck', '-fy', path], path, image, conf,
                 ok_codes=(0, 1))
        if label:
            _fs_tool(['tune2fs', '-L', label, path], path, image, conf)
        _fs_tool(['resize2fs', '-M', path], path, image, conf)
        # On a regular file e2fsprogs' discard punches holes: free blocks
        # read as zeros afterwards (and take no space).
        _fs_tool(['e2fsck', '-fy', '-E', 'discard', path], path, image,
                 conf, ok_codes=(0, 1))
        out = _fs_tool(['dumpe2fs', '-h', path], path, image, conf,
                       write=False)
    except exception.CommandFailed as e:
        _fail(image, "its root filesystem cannot be checked or shrunk: %s"
              % e)
    blocks = int(re.search(r'^Block count:\s+(\d+)', out, re.M).group(1))
    bsize = int(re.search(r'^Block size:\s+(\d+)', out, re.M).group(1))
    with open(path, 'r+b') as f:
        f.truncate(blocks * bsize)
    return blocks * bsize


def convert(src, image, work, conf, kernel_version=None,
            label=DEFAULT_LABEL, append='', appliance_kit=None):
    """Make an AMI triplet of the whole-disk image ``src`` inside ``work``.

    ``image`` names the source in every error. ``appliance_kit`` (an
    appliance.Kit) reads XFS, btrfs and LVM roots in the appliance VM;
    without it they are refused. Returns a Triplet.
    """
    if not LABEL_RE.match(label or ''):
        raise exception.InvalidInput(
            reason="label %r: use at most 16 letters, digits, '.', '_' or "
                   "'-'" % label)
    if kernel_version and not VERSION_RE.match(kernel_version):
        raise exception.InvalidInput(
            reason="kernel version %r is not a plain version" %
                   kernel_version)
    # Opened once: every later reader gets this descriptor, so the file
    # checked is the file read (a path could be swapped in between).
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise exception.ImageNotFound(image=image, source="file %s (%s)"
                                      % (src, e.strerror))
    try:
        if not stat.S_ISREG(os.fstat(src_fd).st_mode):
            raise exception.ImageNotFound(image=image,
                                          source="file %s" % src)
        return _convert('/proc/self/fd/%d' % src_fd, image, work, conf,
                        kernel_version, label, append, appliance_kit)
    finally:
        os.close(src_fd)


# What the appliance reads (in its own kernel): XFS, btrfs, LVM.
APPLIANCE_TYPES = ('xfs', 'btrfs', 'LVM2_member')
# The empty ext4 filesystem the appliance puts kernels and modules in.
TRANSFER_BYTES = 2048 * MiB


def _build_ramdisk(modules_dir, version, image, work):
    """(path, modules): the ARI from the image's own modules tree."""
    ramdisk = os.path.join(work, 'initrd.img')
    try:
        modules = ari.build_ari(ramdisk, modules_dir=modules_dir)
    except (exception.ModuleNotFound, exception.ARIBuildFailed) as e:
        _fail(image, "kernel %s: %s" % (version, e))
    shutil.rmtree(os.path.join(work, 'modules'), ignore_errors=True)
    return ramdisk, modules


def _make_transfer(path, image, conf):
    """An empty ext4 filesystem in a sparse file (no tenant byte in it)."""
    with open(path, 'wb') as f:
        f.truncate(TRANSFER_BYTES)
    utils.execute('mkfs.ext4', '-q', '-F', '-E', 'root_owner=0:0,nodiscard',
                  '-O', '^has_journal', path)


def _convert_in_appliance(src, fmt, vsize, image, work, conf,
                          kernel_version, append, kit):
    """The XFS, btrfs and LVM route: the root copied out in the appliance.

    The appliance (a VM, the source attached read-only) copies the one root
    it finds to a disk of its own, merges a /boot partition in, rewrites
    fstab (the root by UUID, other disks' lines commented out) and trims it;
    kernels, their modules and os-release come back on an ext4 transfer
    disk read here from user space like any ext filesystem. XFS cannot
    shrink: the AMI is as large as the root partition (or LV), its free
    space holes. btrfs is shrunk in the VM; an ext root on LVM here.
    """
    scratch = os.path.join(work, 'appliance')
    os.mkdir(scratch, 0o755)
    # QEMU, under its own user, opens these; work itself stays private but
    # searchable.
    os.chmod(work, 0o711)
    source = os.path.join(scratch, 'source.' + fmt)
    with open(src, 'rb') as fin, open(source, 'xb') as fout:
        utils.clone_or_copy(fin, fout)
    output = os.path.join(scratch, 'root.img')
    with open(output, 'xb') as f:
        f.truncate(vsize)
    transfer = os.path.join(scratch, 'transfer.img')
    _make_transfer(transfer, image, conf)
    for path in (source, output, transfer):
        os.chmod(path, 0o644)   # libvirt gives them to QEMU while it runs
    timeout = conf.amiboot.image_convert_timeout if conf else 3600
    try:
        devices, res = appliance.extract(
            kit.kernel, kit.initrd, source, fmt, output, transfer,
            image=image, work=scratch, virt_type=kit.virt_type,
            timeout=timeout, host=kit.host)
    finally:
        os.unlink(source)
    root_dev = appliance.find_root(devices, image)
    root_fs = ImageFS(transfer, image, conf)
    versions = {name[len('vmlinuz-'):]
                for name in root_fs.listdir('/boot')
                if name.startswith('vmlinuz-')} \
        if root_fs.kind('/boot') == 'dir' else set()
    if kernel_version:
        if kernel_version not in versions:
            _fail(image, "no kernel /boot/vmlinuz-%s with its modules "
                  "(found: %s)" % (kernel_version,
                                   ', '.join(sorted(versions)) or 'none'))
        version = kernel_version
    else:
        found = sorted((v for v in versions if VERSION_RE.match(v)),
                       key=_version_key)
        if not found:
            _fail(image, "no kernel /boot/vmlinuz-* with its modules in "
                  "its root filesystem")
        version = found[-1]
    kernel = root_fs.read_bounded('/boot/vmlinuz-%s' % version, MAX_KERNEL,
                                  os.path.join(work, 'vmlinuz'))
    modules_dir = root_fs.dump_tree('/modules/%s' % version,
                                    os.path.join(work, 'modules'),
                                    MAX_MODULES)
    name = 'Linux'
    if root_fs.kind('/os-release') == 'file':
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$',
                      root_fs.read_text('/os-release', work) or '', re.M)
        name = m.group(1) if m else name
    os.unlink(transfer)
    ramdisk, modules = _build_ramdisk(modules_dir, version, image, work)
    size = res.size
    if res.fstype in EXT_TYPES:
        # An ext root on LVM: shrunk and zeroed here like any other.
        size = finish_fs(output, None, image, conf)
    root_path = os.path.join(work, 'root.img')
    os.rename(output, root_path)
    os.rmdir(scratch)
    cmdline = 'root=UUID=%s %s' % (res.uuid, DEFAULT_CMDLINE)
    if res.subvol:
        cmdline += ' rootflags=subvol=%s' % res.subvol
    if append:
        cmdline += ' ' + ' '.join(append.split())
    LOG.info("Image %(image)s: root %(dev)s (%(fs)s%(sub)s, %(os)s) copied "
             "in the appliance, kernel %(ver)s, %(size)d bytes",
             {'image': image, 'dev': root_dev.path, 'fs': res.fstype,
              'sub': ' subvolume %s' % res.subvol if res.subvol else '',
              'os': name, 'ver': version, 'size': size})
    return Triplet(kernel=kernel, ramdisk=ramdisk, root=root_path,
                   kernel_version=version, modules=modules, cmdline=cmdline,
                   root_partition=root_dev.partition or 0, os_name=name,
                   root_size=size, dropped_fstab=res.dropped)


def _convert(src, image, work, conf, kernel_version, label, append,
             appliance_kit=None):
    fmt, vsize = inspect_source(src, image, conf)
    parts = read_partitions(src, fmt, vsize, work, image, conf)
    ranked = sorted((p for p in parts if _rank(p) is not None),
                    key=lambda p: (_rank(p), p.number))
    for p in ranked:
        probe(src, fmt, p, work, conf, image)
    refused, root, root_fs, boot_tree = [], None, None, None
    for p in ranked:
        if p.fstype in EXT_TYPES:
            path = os.path.join(work, 'part-%d.img' % p.number)
            copy_range(src, fmt, p.start, p.size, path, image, conf)
            check_fs(path, image, conf)
            fs = ImageFS(path, image, conf)
            if root is None and is_linux_root(fs):
                root, root_fs = p, fs
                continue
            if boot_tree is None and any(
                    n.startswith('vmlinuz-') for n in fs.listdir('/')):
                boot_tree = fs.dump_tree('/', os.path.join(work, 'boot'),
                                         MAX_MODULES)
                LOG.info("Image %(image)s: %(part)s is /boot",
                         {'image': image, 'part': p.describe()})
            os.unlink(path)
        elif UNSUPPORTED.get(p.fstype):
            refused.append(p)
    if root is None and any(p.fstype in APPLIANCE_TYPES for p in refused):
        if appliance_kit is not None:
            return _convert_in_appliance(src, fmt, vsize, image, work, conf,
                                         kernel_version, append,
                                         appliance_kit)
        _fail(image, "no ext2/3/4 root filesystem found; %s can be read "
              "only in the appliance VM: give --appliance-kernel-package "
              "or set [local] appliance_kernel_package" % ', '.join(
                  '%s (%s)' % (p.describe(), UNSUPPORTED[p.fstype])
                  for p in refused))
    if root is None:
        if refused:
            # Which of them is the root is not known (they are not read
            # here): name them all, not the first (a RHEL-like disk's XFS
            # /boot comes before its XFS root).
            _fail(image, "no Linux root filesystem found; %s cannot "
                  "become an AMI (an encrypted or ZFS root needs a key or "
                  "a pool the instance's boot does not have)"
                  % ', '.join('%s (%s)' % (p.describe(),
                                           UNSUPPORTED[p.fstype])
                              for p in refused))
        _fail(image, "no Linux root filesystem found (looked for "
              "/etc/os-release and /sbin/init on %s)"
              % (', '.join('%s (%s)' % (p.describe(), p.fstype or 'unknown')
                           for p in ranked) or 'no partition'))
    name = os_name(root_fs, work)
    if boot_tree is not None:
        if root_fs.listdir('/boot') and any(
                n.startswith('vmlinuz-') for n in root_fs.listdir('/boot')):
            LOG.info("Image %s: /boot inside the root already has kernels",
                     image)
        else:
            _merge_boot(root_fs, boot_tree, image)
        shutil.rmtree(os.path.join(work, 'boot'), ignore_errors=True)
    version = choose_kernel(root_fs, image, kernel_version)
    kernel = root_fs.read_bounded('/boot/vmlinuz-%s' % version, MAX_KERNEL,
                                  os.path.join(work, 'vmlinuz'))
    modules_dir = None
    for top in ('/usr/lib/modules', '/lib/modules'):
        modules_dir = root_fs.dump_tree('%s/%s' % (top, version),
                                        os.path.join(work, 'modules'),
                                        MAX_MODULES)
        if modules_dir:
            break
    if not modules_dir:
        _fail(image, "kernel %s has no modules directory "
              "(/usr/lib/modules/%s or /lib/modules/%s)"
              % (version, version, version))
    ramdisk, modules = _build_ramdisk(modules_dir, version, image, work)
    fstab = root_fs.read_text('/etc/fstab', work)
    new_fstab, dropped = rewrite_fstab(fstab, label, root.fstype)
    root_fs.write('/etc/fstab', new_fstab.encode(), mode=0o644)
    size = finish_fs(root_fs.target.path, label, image, conf)
    root_path = os.path.join(work, 'root.img')
    os.rename(root_fs.target.path, root_path)
    cmdline = 'root=LABEL=%s %s' % (label, DEFAULT_CMDLINE)
    if append:
        cmdline += ' ' + ' '.join(append.split())
    LOG.info("Image %(image)s: root %(part)s (%(os)s), kernel %(ver)s, "
             "%(size)d bytes", {'image': image, 'part': root.describe(),
                                'os': name, 'ver': version, 'size': size})
    return Triplet(kernel=kernel, ramdisk=ramdisk, root=root_path,
                   kernel_version=version, modules=modules, cmdline=cmdline,
                   root_partition=root.number, os_name=name, root_size=size,
                   dropped_fstab=dropped)


def work_dir(base):
    # Searchable, not listable: the appliance's QEMU (its own user) opens
    # files in a work directory; the directories' names are random.
    os.makedirs(base, mode=0o711, exist_ok=True)
    os.chmod(base, 0o711)
    return tempfile.mkdtemp(prefix='amiboot-convert-', dir=base)
