"""e2fsprogs on an attached disk: fixed options, structured debugfs requests.

Both attach routes run e2fsprogs through this module: the nbd route inside
the privsep daemon (as root, nova_amiboot.privileged.nbd.run_e2fs), the
FUSE/file route in the calling process (attach.Target.run). So the same
checks apply on both, and the root side applies them itself.

- A tool's options come from a fixed table (OPTIONS); nothing else reaches
  its command line, which ends with the target the caller does not choose
  here.
- debugfs never gets a script string from the caller: it gets a list of
  requests, (op, arg, ...) tuples with typed arguments, and the script is
  built here, one bounded line per request. debugfs reads its script in
  8191-byte lines, so an over-long line would be split into two commands;
  every line built here is far shorter (MAX_LINE) and holds no newline.
- Names and paths follow one positive grammar (NAME): ASCII letters,
  digits and ``._@+:-``, not starting with ``-``, never ``.`` or ``..``.
  debugfs's parser gives no other character a meaning we rely on.
- Data to write travels as bytes in the request; the side that runs
  debugfs stages it in a private directory of its own. No host path comes
  from the caller.
- Output is bounded: the run is stopped when stdout passes ``out_limit``
  (a guest file can be as large as ext4 allows), and the caller is told.
- Every tool runs in nova_amiboot.sandbox: as an unprivileged user, in
  namespaces holding only the target (a descriptor root opened; the
  debugfs data as memory files), under memory, CPU, file size and
  wall-clock limits. Root never runs a parser on the guest's bytes.
"""

import os
import re
import shutil

from oslo_utils import units

from nova_amiboot import exception
from nova_amiboot import sandbox

MiB = units.Mi

MAX_NAME = 255
MAX_PATH = 1024
# debugfs reads 8191 bytes per line; stay well under it.
MAX_LINE = 4096
MAX_REQUESTS = 512
MAX_WRITE = 16 * MiB
MAX_OUT = 64 * MiB
DEFAULT_OUT = 4 * MiB
MAX_ERR = 1 * MiB

NAME = re.compile(r'[A-Za-z0-9._@+:][A-Za-z0-9._@+:-]{0,254}')
_SIZE = re.compile(r'[1-9][0-9]{0,15}[KMGs]?')
_STAGE = re.compile(r'/[A-Za-z0-9_/.-]{1,512}')
# Tools that write to the target with these options.
_WRITES = {('e2fsck', '-fp'), ('resize2fs', '-f'), ('debugfs', '-w')}

# tool -> the option lists it may get, exactly.
OPTIONS = {
    'blkid': {('-p', '-o', 'value', '-s', 'TYPE')},
    'e2fsck': {('-fp',), ('-fn',)},
    # resize2fs -f [size]: the size follows the device (see argv()).
    'resize2fs': {('-f',)},
    'debugfs': {(), ('-w',)},
    # The superblock only (read-only; for checks and tests).
    'dumpe2fs': {('-h',)},
}

_PATH, _NAMEARG, _REF, _DATA, _FIELD, _UINT = range(6)
# op -> argument types. _REF: an absolute path, a single name (relative to
# the current directory) or an inode number.
OPS = {
    'imap': (_REF,),
    'idump': (_REF,),
    'cat': (_REF,),
    'cd': (_REF,),
    'mkdir': (_PATH,),
    'rm': (_NAMEARG,),
    'write': (_DATA, _NAMEARG),
    'sif': (_REF, _FIELD, _UINT),
}
# set_inode_field fields injection sets, with their ranges.
FIELDS = {'mode': 0o177777, 'uid': 2 ** 32 - 1, 'gid': 2 ** 32 - 1}
# What a write run may carry in total.
MAX_WRITE_TOTAL = 4 * MAX_WRITE


class RequestRefused(ValueError):
    """A request, option or argument outside the grammar."""


def check_name(name):
    if (not isinstance(name, str) or name in ('.', '..')
            or not NAME.fullmatch(name)):
        raise RequestRefused("%r is not a plain file name" % (name,))
    return name


def check_path(path):
    """Split an absolute, normalised path of plain names; return names."""
    if (not isinstance(path, str) or not path.startswith('/')
            or len(path) > MAX_PATH or path == '/'):
        raise RequestRefused("%r is not an absolute file path" % (path,))
    names = path[1:].split('/')
    for name in names:
        check_name(name)
    return names


def _ref(value):
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value < 2 ** 32:
            raise RequestRefused("inode %r out of range" % value)
        return '<%d>' % value
    if isinstance(value, str) and value.startswith('/'):
        check_path(value)
        return value
    return check_name(value)


def _arg(kind, value, data_file):
    if kind == _PATH:
        check_path(value)
        return value
    if kind == _NAMEARG:
        return check_name(value)
    if kind == _REF:
        return _ref(value)
    if kind == _FIELD:
        if value not in FIELDS:
            raise RequestRefused("inode field %r not allowed" % (value,))
        return value
    if kind == _DATA:
        return data_file(value)
    raise AssertionError(kind)


def build_script(requests, stage):
    """The debugfs script (bytes) for ``requests``; data files in ``stage``.

    ``stage`` is a directory private to the side that runs debugfs, or
    a function that keeps the data and returns the path debugfs reads it
    from.
    """
    if not isinstance(requests, (list, tuple)) or not requests:
        raise RequestRefused("debugfs requests must be a non-empty list")
    if len(requests) > MAX_REQUESTS:
        raise RequestRefused("too many debugfs requests (%d)"
                             % len(requests))
    if not callable(stage) and not _STAGE.fullmatch(stage):
        raise RequestRefused("unexpected staging directory %r" % stage)
    written = [0]

    def data_file(data):
        if not isinstance(data, bytes) or len(data) > MAX_WRITE:
            raise RequestRefused("file data must be bytes of at most %d"
                                 % MAX_WRITE)
        written[0] += len(data)
        if written[0] > MAX_WRITE_TOTAL:
            raise RequestRefused("too much data in one debugfs run")
        if callable(stage):
            path = stage(data)
            if not _STAGE.fullmatch(path):
                raise RequestRefused("unexpected staging path %r" % path)
            return path
        path = os.path.join(stage, str(len(os.listdir(stage))))
        with open(path, 'xb') as f:
            f.write(data)
        return path

    lines = []
    for req in requests:
        if (not isinstance(req, (list, tuple)) or not req
                or req[0] not in OPS):
            raise RequestRefused("unknown debugfs request %.80r" % (req,))
        kinds = OPS[req[0]]
        if len(req) != len(kinds) + 1:
            raise RequestRefused("debugfs %s takes %d argument(s)"
                                 % (req[0], len(kinds)))
        words = [req[0]]
        for kind, value in zip(kinds, req[1:]):
            if kind == _UINT:
                if (not isinstance(value, int) or isinstance(value, bool)
                        or not 0 <= value <= FIELDS[req[2]]):
                    raise RequestRefused("value %r out of range for %s"
                                         % (value, req[2]))
                words.append('0%o' % value if req[2] == 'mode'
                             else '%d' % value)
            else:
                words.append(_arg(kind, value, data_file))
        line = ' '.join(words)
        # Cannot happen with the grammar above; kept as the last word.
        if len(line) > MAX_LINE or '\n' in line or '\0' in line:
            raise RequestRefused("debugfs line too long or not one line")
        lines.append(line + '\n')
    return ''.join(lines).encode('ascii')


def argv(tool, options, target, size=None):
    """The command line: ``tool``, options from OPTIONS, ``target``."""
    if tool not in OPTIONS:
        raise RequestRefused("tool %r not allowed" % (tool,))
    if not isinstance(options, (list, tuple)) or \
            not all(isinstance(o, str) for o in options) or \
            tuple(options) not in OPTIONS[tool]:
        raise RequestRefused("options %.200r not allowed for %s"
                             % (options, tool))
    cmd = [tool] + list(options)
    if tool == 'debugfs':
        cmd += ['-f', '-']
    cmd.append(target)
    if size is not None:
        if tool != 'resize2fs' or not isinstance(size, str) or \
                not _SIZE.fullmatch(size):
            raise RequestRefused("size %.40r not allowed" % (size,))
        cmd.append(size)
    return cmd


def _check_codes(ok_codes):
    codes = list(ok_codes)
    if not codes or len(codes) > 8 or any(
            not isinstance(c, int) or isinstance(c, bool)
            or not 0 <= c <= 255 for c in codes):
        raise RequestRefused("bad exit codes %.80r" % (ok_codes,))
    return codes


class Failed(Exception):
    """The tool failed; ``code`` is its exit status (None: timed out)."""

    def __init__(self, cmd, code, stderr):
        super().__init__("%s failed (exit code %s): %s"
                         % (cmd, code, stderr.strip()))
        self.cmd, self.code, self.stderr = cmd, code, stderr


def run(tool, options, target, requests=None, ok_codes=(0,), size=None,
        out_limit=DEFAULT_OUT, limits=None, image=None, session=None):
    """Run ``tool`` on ``target``; return (stdout bytes, stderr, truncated).

    ``truncated``: stdout passed ``out_limit`` bytes, the tool was stopped
    and stdout holds its first ``out_limit`` bytes. Raises RequestRefused
    for anything outside the grammar, Failed for an exit code not in
    ``ok_codes``; the sandbox's ToolLimitExceeded when a limit stopped it.
    ``limits``: a dict of sandbox.Limits values (default: its defaults).
    ``session``: a sandbox.Session serving the disk (the FUSE route);
    ``target`` is then ignored.
    """
    cmd = argv(tool, options, target, size)
    codes = _check_codes(ok_codes)
    if not isinstance(out_limit, int) or not 0 < out_limit <= MAX_OUT:
        raise RequestRefused("output limit %r out of range" % (out_limit,))
    if (tool == 'debugfs') != (requests is not None):
        raise RequestRefused("requests go with debugfs only")
    if shutil.which(tool) is None:
        raise FileNotFoundError("%s is not installed" % tool)
    lim = sandbox.limits(limits)
    image = image or target
    write = any((tool, o) in _WRITES for o in options)
    memfds = []

    def stage(data):
        fd = os.memfd_create('amiboot-data', os.MFD_CLOEXEC)
        memfds.append(fd)
        os.write(fd, data) if data else None
        os.lseek(fd, 0, os.SEEK_SET)
        return '/proc/self/fd/%d' % fd

    try:
        script = build_script(requests, stage) if tool == 'debugfs' \
            else None
        if session is not None:
            cmd[-1 if size is None else -2] = sandbox.MOUNT
            res = session.execute(cmd, stdin=script, out_limit=out_limit,
                                  ok_codes=range(256), pass_fds=memfds,
                                  limit_ok=codes)
        else:
            with sandbox.Run(image, lim) as r:
                cmd[-1 if size is None else -2] = r.file(target,
                                                         write=write)
                for fd in memfds:
                    r.fd(fd)
                res = r.execute(cmd, stdin=script, out_limit=out_limit,
                                ok_codes=range(256), limit_ok=codes)
    except exception.CommandFailed as e:
        # Killed by a signal (the sandbox) or a failure of the sandbox.
        raise Failed(tool, e.kwargs.get('code'), e.kwargs.get('stderr', ''))
    except OSError as e:
        # The target could not be opened to hand it over.
        raise Failed(tool, None, "%s: %s" % (target, e.strerror))
    finally:
        for fd in memfds:
            os.close(fd)
    if not res.truncated and res.code not in codes:
        raise Failed(tool, res.code, res.err)
    return res.out, res.err, res.truncated
