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
"""

import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time

MiB = 1024 * 1024

MAX_NAME = 255
MAX_PATH = 1024
# debugfs reads 8191 bytes per line; stay well under it.
MAX_LINE = 4096
MAX_REQUESTS = 512
MAX_WRITE = 16 * MiB
MAX_OUT = 64 * MiB
DEFAULT_OUT = 4 * MiB
MAX_ERR = 1 * MiB
# Every tool runs under a time limit, generous for a large resize.
TIMEOUTS = {'blkid': 120, 'debugfs': 600, 'dumpe2fs': 120,
            'e2fsck': 3600, 'resize2fs': 3600}

NAME = re.compile(r'[A-Za-z0-9._@+:][A-Za-z0-9._@+:-]{0,254}')
_SIZE = re.compile(r'[1-9][0-9]{0,15}[KMGs]?')
_STAGE = re.compile(r'/[A-Za-z0-9_/.-]{1,512}')

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

    ``stage`` is a directory private to the side that runs debugfs.
    """
    if not isinstance(requests, (list, tuple)) or not requests:
        raise RequestRefused("debugfs requests must be a non-empty list")
    if len(requests) > MAX_REQUESTS:
        raise RequestRefused("too many debugfs requests (%d)"
                             % len(requests))
    if not _STAGE.fullmatch(stage):
        raise RequestRefused("unexpected staging directory %r" % stage)
    written = [0]

    def data_file(data):
        if not isinstance(data, bytes) or len(data) > MAX_WRITE:
            raise RequestRefused("file data must be bytes of at most %d"
                                 % MAX_WRITE)
        written[0] += len(data)
        if written[0] > MAX_WRITE_TOTAL:
            raise RequestRefused("too much data in one debugfs run")
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
        out_limit=DEFAULT_OUT):
    """Run ``tool`` on ``target``; return (stdout bytes, stderr, truncated).

    ``truncated``: stdout passed ``out_limit`` bytes, the tool was stopped
    and stdout holds its first ``out_limit`` bytes. Raises RequestRefused
    for anything outside the grammar, Failed for an exit code not in
    ``ok_codes`` (or a timeout).
    """
    cmd = argv(tool, options, target, size)
    codes = _check_codes(ok_codes)
    if not isinstance(out_limit, int) or not 0 < out_limit <= MAX_OUT:
        raise RequestRefused("output limit %r out of range" % (out_limit,))
    if (tool == 'debugfs') != (requests is not None):
        raise RequestRefused("requests go with debugfs only")
    if shutil.which(tool) is None:
        raise FileNotFoundError("%s is not installed" % tool)
    stage = None
    try:
        script = None
        if tool == 'debugfs':
            stage = tempfile.mkdtemp(prefix='amiboot-e2fs-')
            script = build_script(requests, stage)
        out, err, code, truncated = _bounded(cmd, script, out_limit,
                                             TIMEOUTS[tool])
    finally:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
    err = err.decode('utf-8', 'replace')
    if not truncated and code not in codes:
        raise Failed(tool, code, err)
    return out, err, truncated


def _bounded(cmd, stdin, out_limit, timeout):
    """Run ``cmd`` reading at most ``out_limit`` bytes of stdout."""
    # C locale: debugfs prints only ASCII (isprint) in its dumps.
    env = {'PATH': os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin'),
           'LC_ALL': 'C', 'PAGER': '__none__', 'DEBUGFS_PAGER': '__none__'}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, close_fds=True)
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin or b'')
    truncated = False
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    try:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise Failed(cmd[0], None, "timed out after %ds" % timeout)
            for key, _ev in sel.select(min(left, 5)):
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(key.fd, pending[:65536])
                    except BrokenPipeError:
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = key.data
                room = (out_limit if buf is out else MAX_ERR) - len(buf)
                buf += chunk[:max(0, room)]
                if buf is out and len(chunk) > room:
                    truncated = True
            if truncated:
                # Stop it: the rest of a huge guest file is never read.
                proc.kill()
                break
        code = proc.wait()
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    return bytes(out), bytes(err), code, truncated
