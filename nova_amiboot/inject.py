"""Write into the guest filesystem from user space (e2fsprogs' debugfs).

The guest image is untrusted: it is never mounted in the host kernel, and
paths resolve inside the image only. Every path is absolute, normalised and
plain (the grammar of nova_amiboot.e2fs: no '..', whitespace,
quotes or control characters: OSSA-2012-008), and every existing
component on the way to the target must be a real directory (the target a
regular file): a symlink anywhere (for example /root/.ssh -> /etc) is
refused, never followed (OSSA-2012-011).

debugfs prints guest bytes raw (symlink targets, extended attributes, file
names), so nothing is parsed from output that can hold them: each path
component is looked up with ``imap`` (its inode number) and ``idump`` (a
hex dump of that inode, printable ASCII only in its text column), both
fixed-form, and type, size and owner come from the inode's bytes. Every
answer is matched to the request it answers by its position in the run.
File contents come last in a run, after all the fixed-form answers.

Reads are bounded: a file over ``limit`` (1 MiB by default) is refused
with its size, and the run is stopped as soon as more output than that
arrives (ext4 files can be sparse and 16 TiB large).

debugfs exits 0 even when a command fails, so its stderr is read: anything
but its version banner is an error.
"""

import os
import re
import struct
import subprocess

from oslo_log import log as logging
from oslo_utils import units

from nova_amiboot import exception
from nova_amiboot import e2fs
from nova_amiboot import layer

LOG = logging.getLogger(__name__)

KEY_MARKER = '# The following ssh key was injected by nova-amiboot'
_HOSTNAME = re.compile(r'(?=.{1,63}\Z)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?')
# An OpenSSH public key line: printable ASCII, one line.
_KEY = re.compile(r'[\x21-\x7e][\x20-\x7e]{0,16383}')
_SHA512_CRYPT = re.compile(r'\$6\$[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}')
_BANNER = re.compile(r'debugfs [0-9.]+ \(.*\)')
# Reading guest files: enough for any authorized_keys, shadow or hostname.
READ_LIMIT = units.Mi

# Fixed-form answers (see the module doc).
_IMAP = re.compile(rb'Inode ([0-9]{1,10}) is part of block group '
                   rb'[0-9]{1,10}\n\tlocated at block [0-9]{1,20}, '
                   rb'offset 0x[0-9a-f]{4}\n')
_HEXLINE = re.compile(rb'([0-7]{4,8})  ((?:[0-9a-f ]{4} ){8}) '
                      rb'[\x20-\x7e]{0,16}')
_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, \
    0o120000
_KINDS = {_S_IFDIR: 'dir', _S_IFREG: 'file', _S_IFLNK: 'link'}


class _Inode(object):
    FIELDS = ('ino', 'mode', 'size', 'uid', 'gid')

    def __init__(self, ino, raw=None, mode=0, size=0, uid=0, gid=0):
        self.ino = ino
        if raw is not None:
            mode, uid_lo, size_lo = struct.unpack_from('<HHI', raw, 0)
            gid_lo, = struct.unpack_from('<H', raw, 24)
            size_hi, = struct.unpack_from('<I', raw, 108)
            uid_hi, gid_hi = struct.unpack_from('<HH', raw, 120)
            size = size_lo | (size_hi << 32)
            uid = uid_lo | (uid_hi << 16)
            gid = gid_lo | (gid_hi << 16)
        self.mode = mode
        self.kind = _KINDS.get(mode & _S_IFMT, 'other')
        self.size, self.uid, self.gid = size, uid, gid

    def as_list(self):
        return [getattr(self, f) for f in self.FIELDS]

    @classmethod
    def from_list(cls, values):
        if not isinstance(values, list) or len(values) != len(cls.FIELDS) \
                or not all(type(v) is int and v >= 0 for v in values):
            raise ValueError("bad inode record %.80r" % (values,))
        return cls(**dict(zip(cls.FIELDS, values)))


def _parse_hexdump(text):
    """Bytes of a debugfs hex dump (lines of 16 bytes, ``*`` = repeat)."""
    raw, last, repeat = bytearray(), None, False
    for line in text.split(b'\n'):
        if line == b'':
            continue
        if line == b'*':
            if last is None or repeat:
                raise ValueError("bad repeat mark")
            repeat = True
            continue
        m = _HEXLINE.fullmatch(line)
        if not m:
            raise ValueError("unexpected line in inode dump")
        offset = int(m.group(1), 8)
        if repeat:
            while len(raw) < offset:
                raw += last
            repeat = False
        if offset != len(raw):
            raise ValueError("inode dump out of order")
        chunk = bytes.fromhex(m.group(2).decode().replace(' ', ''))
        raw += chunk
        last = chunk
    if repeat:
        # Repeated up to the end of the inode: at least the 128 bytes of
        # the smallest inode.
        while len(raw) < 128:
            raw += last
    if len(raw) < 128:
        raise ValueError("inode dump too short")
    return bytes(raw)


def _sections(out, commands):
    """Split debugfs output into the answer of each command, in order.

    Every command echoes as ``debugfs: <command>``; the commands are ours
    and only fixed-form answers precede the last one, so an echo line can
    only be one of ours. The last command's answer (file content) is left
    whole.
    """
    answers, pos = [], 0
    for i, cmd in enumerate(commands):
        echo = b'debugfs: ' + cmd + b'\n'
        if not out.startswith(echo, pos):
            raise ValueError("answer %d is not where expected" % i)
        pos += len(echo)
        if i == len(commands) - 1:
            answers.append(out[pos:])
            break
        nxt = out.find(b'\ndebugfs: ', pos - 1)
        end = len(out) if nxt < 0 else nxt + 1
        answers.append(out[pos:end])
        pos = end
    return answers


# Read once per grown template (grow._build_template) and handed to every
# copy of it (GuestFS(known=...)): a key injection then needs one debugfs
# run instead of two. Small contents only: the record lives in an xattr.
PREREAD = ('/root/.ssh/authorized_keys',)
_PREREAD_MAX = 2048


class GuestFS(object):
    """An ext2/3/4 filesystem on an attached Target, edited with debugfs.

    ``known``: what remember() returned for a disk whose filesystem is
    byte for byte the one on this target (a copy of a grown template):
    read() of those paths answers from it without running debugfs.
    """

    def __init__(self, target, instance='?', known=None):
        self.target = target
        self.instance = instance
        self._checked = {}
        self._known = {}
        for path, record in (known or {}).items():
            try:
                self._known[path] = self._unpack(path, record)
            except (TypeError, ValueError, KeyError,
                    exception.AmibootException) as e:
                # A record we cannot use is only a lost shortcut.
                LOG.debug("Ignoring the remembered %s: %s", path, e)

    def remember(self, paths=PREREAD):
        """Read ``paths`` now; a JSON-able record for GuestFS(known=...).

        Paths that are not plain files or directories on the way, or whose
        content is over a few KiB, are left out (read normally later).
        """
        record = {}
        for path in paths:
            try:
                content = self.read(path, limit=_PREREAD_MAX)
            except exception.AmibootException as e:
                # Too large, a symlink on the way, unreadable: whoever
                # needs it reads it (and meets the error) themselves.
                LOG.debug("Not remembering %s: %s", path, e)
                self._checked.pop(path, None)
                continue
            parts = self._checked.pop(path)
            record[path] = {
                'parts': [[p, None if i is None else i.as_list()]
                          for p, i in parts],
                'content': None if content is None else content.hex()}
        return record

    def _unpack(self, path, record):
        prefixes = self._prefixes(path)
        parts = [(p, None if i is None else _Inode.from_list(i))
                 for p, i in record['parts']]
        if [p for p, _i in parts] != prefixes:
            raise ValueError("record is for other paths")
        content = record['content']
        content = None if content is None else bytes.fromhex(content)
        inode = parts[-1][1]
        if (inode is None) != (content is None) or (
                inode is not None and (inode.kind != 'file'
                                       or inode.size != len(content))):
            raise ValueError("record does not hold together")
        # The same judgement a fresh read makes.
        return self._judge(path, prefixes, [i for _p, i in parts]), content

    def _fail(self, what, reason):
        raise exception.InjectionFailed(instance=self.instance, what=what,
                                        reason=reason)

    def _unsafe(self, path, reason):
        # A hostile path is shown escaped: the message stays one line.
        shown = path if isinstance(path, str) and path.isascii() and \
            path.isprintable() else ascii(path)
        raise exception.UnsafeInjectionPath(instance=self.instance,
                                            path=shown, reason=reason)

    def debugfs(self, requests, write=False, what='files', out_limit=None):
        """Run ``requests`` (e2fs.OPS); return (stdout bytes, errors)."""
        try:
            out, err, truncated = self.target.debugfs(
                requests, write=write,
                out_limit=out_limit or e2fs.DEFAULT_OUT)
        except (exception.CommandFailed,
                exception.E2fsRequestRefused) as e:
            self._fail(what, str(e))
        errors = [line for line in err.splitlines()
                  if line.strip() and not _BANNER.fullmatch(line.strip())]
        return out, errors, truncated

    def _prefixes(self, path):
        if not isinstance(path, str) or (
                path.startswith('/') and os.path.normpath(path) != path):
            self._unsafe(path, "not an absolute, normalised file path")
        try:
            names = e2fs.check_path(path)
        except e2fs.RequestRefused as e:
            self._unsafe(path, str(e))
        return ['/' + '/'.join(names[:i + 1]) for i in range(len(names))]

    def _query(self, path, prefixes, cat=False, limit=READ_LIMIT):
        """Look every prefix up; with ``cat``, read the last one too.

        Returns ([_Inode or None per prefix], content bytes or None).
        """
        requests = []
        for p in prefixes:
            requests += [('imap', p), ('idump', p)]
        if cat:
            requests.append(('cat', path))
        # Fixed-form answers: an inode dump is ~4 bytes of text per byte
        # of inode, and an inode is at most a block (64 KiB).
        overhead = 256 * 1024 * len(prefixes) + 4096
        out, errors, truncated = self.debugfs(
            requests, what=path, out_limit=overhead + (limit if cat else 0))
        commands = [' '.join(str(a) for a in r).encode() for r in requests]
        try:
            answers = _sections(out, commands) if not truncated or cat \
                else None
            if answers is None:
                raise ValueError("output over the limit")
            inodes = []
            for i, p in enumerate(prefixes):
                imap, idump = answers[2 * i], answers[2 * i + 1]
                if not imap and not idump:
                    inodes.append(None)
                    continue
                m = _IMAP.fullmatch(imap)
                if not m:
                    raise ValueError("unexpected answer for %s" % p)
                inodes.append(_Inode(int(m.group(1)),
                                     _parse_hexdump(idump)))
        except ValueError as e:
            self._fail(path, "cannot read the guest filesystem (%s)%s"
                       % (e, ': ' + '; '.join(errors) if errors else ''))
        content = answers[-1] if cat else None
        return inodes, content, truncated, errors

    def _judge(self, path, prefixes, inodes, final=('file',)):
        result, missing = [], False
        for i, (p, inode) in enumerate(zip(prefixes, inodes)):
            if missing and inode is not None:
                self._fail(path, "%s found under a missing directory" % p)
            if inode is None:
                missing = True
            elif inode.kind == 'link':
                self._unsafe(path, "%s is a symbolic link" % p)
            elif i < len(prefixes) - 1 and inode.kind != 'dir':
                self._unsafe(path, "%s is not a directory" % p)
            elif i == len(prefixes) - 1 and inode.kind not in final:
                self._unsafe(path, "%s exists and is not a regular file" % p)
            result.append((p, inode))
        return result

    def check_path(self, path):
        """Validate ``path``; return the parts and their inodes.

        Returns [(path_so_far, _Inode or None)] for each component, None
        where it does not exist (and so neither does what follows).
        """
        prefixes = self._prefixes(path)
        inodes = self._query(path, prefixes)[0]
        return self._judge(path, prefixes, inodes)

    def stat(self, path):
        """(mode, uid, gid) of an existing regular file or directory."""
        parts = self._checked.get(path)
        if not parts:
            prefixes = self._prefixes(path)
            parts = self._judge(path, prefixes,
                                self._query(path, prefixes)[0],
                                final=('file', 'dir'))
        inode = parts[-1][1]
        if inode is None:
            self._fail(path, "%s does not exist" % path)
        return inode.mode & 0o7777, inode.uid, inode.gid

    def read(self, path, limit=READ_LIMIT):
        """Content (bytes) of a regular file, or None if absent.

        One debugfs run checks the path and reads the file; a file over
        ``limit`` bytes is refused. The check is remembered for stat() and
        a following write() of the same path.
        """
        if path in self._known:
            parts, content = self._known.pop(path)
            self._checked[path] = parts
            if content is not None and len(content) > limit:
                raise exception.GuestFileTooLarge(
                    instance=self.instance, path=path, size=len(content),
                    limit=limit)
            return content
        prefixes = self._prefixes(path)
        inodes, content, truncated, errors = self._query(
            path, prefixes, cat=True, limit=limit)
        parts = self._judge(path, prefixes, inodes)
        self._checked[path] = parts
        inode = parts[-1][1]
        if inode is None:
            return None
        if inode.size > limit:
            raise exception.GuestFileTooLarge(instance=self.instance,
                                              path=path, size=inode.size,
                                              limit=limit)
        if truncated or errors or len(content) != inode.size:
            self._fail(path, "reading it gave %s bytes for a size of %d%s"
                       % ('over %d' % limit if truncated else len(content),
                          inode.size,
                          ': ' + '; '.join(errors) if errors else ''))
        return content

    def write(self, path, data, mode=0o644, uid=0, gid=0, dir_mode=0o755,
              parent_mode=None):
        """Create or replace a regular file; create missing directories.

        Directories it creates get ``dir_mode`` and owner 0:0; with
        ``parent_mode`` the file's directory gets that mode and 0:0 too.
        The file is always a new inode (a hard link in the guest is never
        written through).
        """
        if not isinstance(data, bytes):
            self._fail(path, "data must be bytes")
        if len(data) > e2fs.MAX_WRITE:
            self._fail(path, "%d bytes is over the limit of %d"
                       % (len(data), e2fs.MAX_WRITE))
        # What was remembered describes the filesystem before any write.
        self._known.clear()
        parts = self._checked.pop(path, None) or self.check_path(path)
        requests = []
        for p, inode in parts[:-1]:
            if inode is None:
                requests += [('mkdir', p),
                             ('sif', p, 'mode', 0o40000 | dir_mode),
                             ('sif', p, 'uid', 0), ('sif', p, 'gid', 0)]
        parent, name = os.path.split(path)
        # An existing parent by the inode checked above; a new one by path
        # (it was made in this run, under checked directories).
        pinode = parts[-2][1] if len(parts) > 1 else None
        pref = pinode.ino if pinode is not None else (
            parent if len(parts) > 1 else 2)
        if parent_mode is not None:
            requests += [('sif', pref, 'mode', 0o40000 | parent_mode),
                         ('sif', pref, 'uid', 0), ('sif', pref, 'gid', 0)]
        requests.append(('cd', pref))
        if parts[-1][1] is not None:
            requests.append(('rm', name))
        requests += [('write', data, name),
                     ('sif', name, 'mode', 0o100000 | mode),
                     ('sif', name, 'uid', uid),
                     ('sif', name, 'gid', gid)]
        _out, errors, _t = self.debugfs(requests, write=True, what=path)
        if errors:
            self._fail(path, '; '.join(errors))

    def is_dir(self, path):
        prefixes = self._prefixes(path)
        inodes = self._query(path, prefixes)[0]
        return all(i is not None and i.kind == 'dir' for i in inodes)


def inject_key(fs, key):
    """Append ``key`` to /root/.ssh/authorized_keys (0600, dir 0700, 0:0).

    The existing file is kept byte for byte, whatever its encoding.
    """
    path = '/root/.ssh/authorized_keys'
    key = key.strip() if isinstance(key, str) else key
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise exception.InjectionFailed(
            instance=fs.instance, what='SSH key into %s' % path,
            reason="the key is not one line of printable ASCII")
    current = fs.read(path) or b''
    wanted = key.encode('ascii')
    if wanted in (line.strip() for line in current.splitlines()):
        LOG.debug("Instance %s: key already in %s", fs.instance, path)
        return False
    if current and not current.endswith(b'\n'):
        current += b'\n'
    fs.write(path, current + (KEY_MARKER + '\n' + key + '\n').encode(),
             mode=0o600, dir_mode=0o700, parent_mode=0o700)
    return True


def inject_hostname(fs, hostname):
    short = hostname.split('.')[0] if isinstance(hostname, str) else None
    if short is None or not _HOSTNAME.fullmatch(short):
        raise exception.InjectionFailed(instance=fs.instance,
                                        what='hostname into /etc/hostname',
                                        reason="%.80r is not a valid hostname"
                                        % (hostname,))
    fs.write('/etc/hostname', (short + '\n').encode(), mode=0o644)


def hash_password(password):
    """SHA-512 crypt ($6$), as /etc/shadow wants it."""
    # openssl reads the password from stdin: it never shows in ps.
    p = subprocess.run(['openssl', 'passwd', '-6', '-stdin'],
                       input=password.encode('utf-8') + b'\n',
                       capture_output=True, check=True)
    hashed = p.stdout.decode('ascii', 'replace').strip()
    if not _SHA512_CRYPT.fullmatch(hashed):
        raise ValueError("openssl gave an unexpected hash")
    return hashed


def inject_password(fs, password, user='root'):
    path = '/etc/shadow'
    # openssl reads one line: a newline would cut the password short.
    if not isinstance(password, str) or not password or \
            not password.isprintable() or len(password) > 1024:
        raise exception.InjectionFailed(
            instance=fs.instance, what='password into %s' % path,
            reason="the password must be one line of printable characters")
    content = fs.read(path)
    if content is None:
        raise exception.InjectionFailed(instance=fs.instance,
                                        what='password',
                                        reason="the image has no /etc/shadow")
    mode, uid, gid = fs.stat(path)
    lines, found = [], False
    name = user.encode('ascii')
    for line in content.splitlines():
        fields = line.split(b':')
        if fields[0] == name and len(fields) > 2:
            try:
                fields[1] = hash_password(password).encode('ascii')
            except (OSError, ValueError, subprocess.CalledProcessError) as e:
                raise exception.InjectionFailed(
                    instance=fs.instance, what='password into %s' % path,
                    reason="cannot hash it: %s" % e)
            line, found = b':'.join(fields), True
        lines.append(line)
    if not found:
        raise exception.InjectionFailed(instance=fs.instance,
                                        what='password',
                                        reason="no %s in /etc/shadow" % user)
    fs.write(path, b'\n'.join(lines) + b'\n', mode=mode & 0o7777,
             uid=uid, gid=gid)


def inject_user_data(fs, user_data, instance_id, hostname):
    """cloud-init's NoCloud seed, which cloud-init images read at boot."""
    base = '/var/lib/cloud/seed/nocloud'
    if isinstance(user_data, str):
        user_data = user_data.encode('utf-8')
    # The guest route's layer carries the same bytes.
    fs.write(base + '/meta-data', layer.nocloud_meta_data(instance_id,
                                                          hostname),
             mode=0o600)
    fs.write(base + '/user-data', user_data, mode=0o600)


def arrange_relabel(fs):
    """SELinux guests relabel on the next boot when /.autorelabel exists."""
    if fs.is_dir('/etc/selinux'):
        fs.write('/.autorelabel', b'', mode=0o644)
        return True
    return False


def inject_files(fs, files):
    """nova's injected files: [(path, bytes)], each a regular file 0644.

    Paths are checked by GuestFS.write like every other write (absolute,
    plain names, no symbolic link on the way).
    """
    for path, content in files:
        if isinstance(content, str):
            content = content.encode('utf-8')
        fs.write(path, content, mode=0o644)
