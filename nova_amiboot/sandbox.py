"""The one runner for every host tool that reads untrusted bytes.

e2fsprogs (debugfs, e2fsck, resize2fs, dumpe2fs, tune2fs), blkid, sfdisk,
qemu-img, qemu-storage-daemon, modinfo and the module decompressors parse
what a tenant wrote: an image, or an instance disk a guest's QEMU could
have written. Each run here is

- an unprivileged user: ``[amiboot] tool_user`` when the caller is root
  (setpriv switches to it before anything else runs), otherwise the
  caller's own user (nova-compute's); never root, never the QEMU user;
- bubblewrap (``bwrap``): new user, mount, pid, network, ipc, uts and
  cgroup namespaces, a root of its own holding /usr read-only, an empty
  /tmp, and only the files the run needs: each handed over as a
  descriptor root opened (``/proc/self/fd/N`` inside; the tool user gets
  write access to a file only for the run it writes in), and at most one
  private output directory; no network, a new session, killed with its
  parent;
- prlimit: address space (``[amiboot] tool_memory_mb``; QEMU's
  multi-threaded tools twice that: thread stacks and malloc arenas
  reserve address space they never touch), CPU time and the size of any
  file it writes;
- a wall-clock limit (``[amiboot] fs_tool_timeout`` for filesystem
  tools): the whole sandbox is killed when it is over.

A limit that stops a tool is ToolLimitExceeded, one line naming the image
and the limit. A qcow2 disk is served by qemu-storage-daemon inside a
Session: its FUSE export is mounted in the sandbox's own mount namespace
(never visible on the host) and each tool enters that sandbox's
namespaces (nsenter, as the tool user, capabilities dropped).

Why bubblewrap and prlimit: both ship in Debian (``bubblewrap``,
util-linux), need no daemon and no root (systemd-run needs a running
systemd; compute hosts and CI containers often have none), start in a
few milliseconds, and rlimits hold for every process of the tool.
"""

import collections
import errno
import fcntl
import json
import os
import pwd
import re
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time

from oslo_utils import units

from nova_amiboot import exception
from nova_amiboot import utils

MiB = units.Mi
# Every tool this project runs on untrusted bytes; utils.execute refuses
# them (they must come here).
TOOLS = frozenset({
    'debugfs', 'e2fsck', 'resize2fs', 'dumpe2fs', 'tune2fs', 'blkid',
    'sfdisk', 'qemu-img', 'qemu-storage-daemon', 'modinfo', 'xz', 'zstd',
    'gzip', 'xfs_db', 'btrfs'})
QEMU_TOOLS = frozenset({'qemu-img', 'qemu-storage-daemon'})
DEFAULT_USER = 'amiboot-tool'
DEFAULT_MEMORY_MB = 512
DEFAULT_TIMEOUT = 600
MAX_OUT = 256 * MiB
MAX_ERR = 1 * MiB
# What the sandbox sees of the host: programs and their libraries only.
_RO_SYSTEM = ('/usr', '/etc/ld.so.cache', '/etc/ld.so.conf',
              '/etc/ld.so.conf.d', '/etc/alternatives')
_USR_LINKS = ('bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32')
# linux/fs.h: set a block device read-only (root only).
_BLKROSET = 0x125d
_HELD_FD = re.compile(r'/proc/self/fd/([0-9]{1,9})')
_ENV = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL': 'C',
        'PAGER': '__none__', 'DEBUGFS_PAGER': '__none__',
        # Few malloc arenas: each reserves 64 MiB of address space.
        'MALLOC_ARENA_MAX': '2'}


class Limits(object):
    """What one run may use. ``file_size`` in bytes, the rest as named."""

    def __init__(self, timeout=DEFAULT_TIMEOUT, memory_mb=DEFAULT_MEMORY_MB,
                 file_size=None, cpu=None, user=DEFAULT_USER,
                 timeout_name='[amiboot] fs_tool_timeout'):
        self.timeout = int(timeout)
        self.memory_mb = int(memory_mb)
        # Nothing a tool writes here is larger than the largest disk.
        self.file_size = int(file_size or 1024 ** 4)
        self.cpu = int(cpu or self.timeout)
        self.user = user
        self.timeout_name = timeout_name

    @classmethod
    def from_conf(cls, conf, **kwargs):
        a = conf.amiboot
        values = {'timeout': a.fs_tool_timeout,
                  'memory_mb': a.tool_memory_mb, 'user': a.tool_user,
                  'file_size': a.max_image_virtual_size_gb * units.Gi}
        values.update(kwargs)
        return cls(**values)

    def as_dict(self):
        return {'timeout': self.timeout, 'memory_mb': self.memory_mb,
                'file_size': self.file_size, 'cpu': self.cpu,
                'user': self.user, 'timeout_name': self.timeout_name}

    def memory_for(self, tool):
        return self.memory_mb * (2 if tool in QEMU_TOOLS else 1)

    def prlimit(self, tool):
        mem = self.memory_for(tool) * MiB
        # CPU: SIGXCPU at the soft limit (named in the error), SIGKILL a
        # little later at the hard one for a tool that ignores it.
        return ['prlimit', '--as=%d' % mem,
                '--cpu=%d:%d' % (self.cpu, self.cpu + 5),
                '--fsize=%d' % self.file_size, '--core=0', '--']


def limits(conf=None, **kwargs):
    if isinstance(conf, Limits):
        return conf
    if isinstance(conf, dict):
        values = dict(conf)
        values.update(kwargs)
        return Limits(**values)
    if conf is None:
        return Limits(**kwargs)
    return Limits.from_conf(conf, **kwargs)


# --- figures for tests and the README -------------------------------------

_STATS_LOCK = threading.Lock()
_STATS = collections.defaultdict(lambda: {'runs': 0, 'peak_rss': 0,
                                          'longest': 0.0})


def _record(tool, rss, elapsed):
    with _STATS_LOCK:
        s = _STATS[tool]
        s['runs'] += 1
        s['peak_rss'] = max(s['peak_rss'], rss)
        s['longest'] = max(s['longest'], elapsed)


def stats():
    """{tool: {'runs', 'peak_rss' (bytes), 'longest' (s)}} so far."""
    with _STATS_LOCK:
        return {k: dict(v) for k, v in _STATS.items()}


def reset_stats():
    with _STATS_LOCK:
        _STATS.clear()


# --- who runs the tools ---------------------------------------------------

def _identity(user):
    """(setpriv prefix, uid, gid) for a run by the current process."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise exception.SandboxUnavailable(
            reason="the tool user %s does not exist (tools/setup-host.sh "
                   "creates it; [amiboot] tool_user names it)" % user)
    if pw.pw_uid == 0:
        raise exception.SandboxUnavailable(
            reason="the tool user %s is root" % user)
    return (['setpriv', '--reuid=%d' % pw.pw_uid, '--regid=%d' % pw.pw_gid,
             '--clear-groups', '--'], pw.pw_uid, pw.pw_gid)


def check_host():
    """None if the sandbox can run here, else the reason (a sentence)."""
    for tool in ('bwrap', 'prlimit', 'setpriv', 'nsenter'):
        if shutil.which(tool) is None:
            return "%s is not installed (Debian: bubblewrap, util-linux)" \
                % tool
    try:
        run(['true'], image='sandbox check', limits=Limits(timeout=30))
    except exception.AmibootException as e:
        return str(e)
    return None


def _bwrap(extra=()):
    cmd = ['bwrap', '--unshare-all', '--die-with-parent', '--new-session',
           '--cap-drop', 'ALL']
    for path in _RO_SYSTEM:
        if os.path.exists(path):
            cmd += ['--ro-bind', path, path]
    for name in _USR_LINKS:
        if os.path.islink('/' + name) and os.path.exists('/usr/' + name):
            cmd += ['--symlink', 'usr/' + name, '/' + name]
        elif os.path.isdir('/' + name) and not os.path.islink('/' + name):
            cmd += ['--ro-bind', '/' + name, '/' + name]
    cmd += ['--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp',
            '--chdir', '/tmp']
    cmd += list(extra)
    return cmd


class Run(object):
    """The files one run gets; build argv with file(), fd(), outdir()."""

    def __init__(self, image, limits_):
        self.image = image
        self.limits = limits_
        self.fds = []
        self._owned = []          # fds we opened (closed after)
        self._granted = []        # (fd, uid, gid) to give back
        self._readonly = []       # block devices set read-only for the run
        self._binds = []
        self.setpriv, self.uid, self.gid = _identity(limits_.user)

    def fd(self, fd):
        """The sandbox's path of an open descriptor (inherited)."""
        self.fds.append(fd)
        return '/proc/self/fd/%d' % fd

    def file(self, path, write=False):
        """The sandbox's path of host file ``path`` (opened here).

        ``write``: the tool user may write it during the run (it is
        handed back to its owner afterwards). Links are not followed.
        ``/proc/self/fd/N`` names a descriptor this process holds (a file
        opened once, checked, then used by several runs: nothing can swap
        it in between): it is handed over as it is.
        """
        flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | \
            os.O_CLOEXEC
        held = _HELD_FD.fullmatch(path) if isinstance(path, str) else None
        try:
            if held:
                fd = os.dup(int(held.group(1)))
                os.set_inheritable(fd, False)
            else:
                fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise exception.UnsafeImage(
                    image=self.image, reason="%s is a symbolic link" % path)
            raise
        self._owned.append(fd)
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            if not write:
                # The tool user gets the device node for the run; read-only
                # is the block layer's (BLKROSET, which only root can
                # undo), not the descriptor's: a reopen for writing fails.
                fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 1))
                self._readonly.append(fd)
            self._grant(fd, st)
        elif write and stat.S_ISREG(st.st_mode):
            self._grant(fd, st)
        elif os.geteuid() == 0 and st.st_uid != self.uid and \
                not st.st_mode & stat.S_IROTH:
            # Tools open /proc/self/fd/N anew, as the tool user: a file it
            # cannot read would look empty or missing to it (blkid says
            # "nothing found"), never an error. Make that loud.
            raise exception.SandboxUnavailable(
                reason="%s (for %s) is not readable by the tool user"
                % (path, self.image))
        return self.fd(fd)

    def file_named(self, path, name):
        """The sandbox's path /tmp/``name`` of host file ``path`` (read).

        For tools that judge a file by its name (modinfo wants a module
        suffix): a link inside the sandbox to the descriptor opened here.
        """
        if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]{0,200}', name):
            raise ValueError("not a plain file name: %.80r" % (name,))
        src = self.file(path)
        self._binds += ['--symlink', src, '/tmp/' + name]
        return '/tmp/' + name

    def _grant(self, fd, st):
        if os.geteuid() != 0 or (st.st_uid, st.st_gid) == (self.uid,
                                                           self.gid):
            return
        self._granted.append((fd, st.st_uid, st.st_gid, st.st_mode))
        os.fchown(fd, self.uid, self.gid)
        if stat.S_ISBLK(st.st_mode):
            os.fchmod(fd, 0o600)
        else:
            os.fchmod(fd, (st.st_mode & 0o7777) | 0o600)

    def outdir(self, path, write=True):
        """The sandbox's path of host directory ``path``: /proc/self/fd/N.

        Handed over as a descriptor (no bind mount: bwrap would resolve the
        host path as the tool user, through directories only root may
        enter). Tools name files in it as ``/proc/self/fd/N/<name>``.
        ``write``: the tool user owns it for the run (a private directory
        root made for this run); what the tool writes there is the tool
        user's. Read-only, the tool user must be able to enter it.
        """
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                     os.O_CLOEXEC)
        self._owned.append(fd)
        if write:
            self._grant(fd, os.fstat(fd))
        return self.fd(fd)

    def close(self):
        for fd in self._readonly:
            try:
                fcntl.ioctl(fd, _BLKROSET, struct.pack('i', 0))
            except OSError:
                pass
        self._readonly = []
        for fd, uid, gid, mode in reversed(self._granted):
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode & 0o7777)
            except OSError:
                pass
        self._granted = []
        for fd in self._owned:
            os.close(fd)
        self._owned = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def argv(self, cmd, info_fd=None):
        tool = os.path.basename(cmd[0])
        info = ['--info-fd', str(info_fd)] if info_fd is not None else []
        return (self.setpriv + _bwrap(self._binds + info) + ['--'] +
                self.limits.prlimit(tool) + [str(c) for c in cmd])

    def execute(self, cmd, stdin=None, out_limit=MAX_OUT, ok_codes=(0,),
                limit_ok=None):
        # bwrap reports the sandbox's child on this pipe once it is set up:
        # whether the sandbox came up is that fact, never the tool's words.
        info_r, info_w = os.pipe()
        try:
            return execute_argv(self.argv(cmd, info_w), cmd, self.image,
                                self.limits, stdin=stdin, out_limit=out_limit,
                                ok_codes=ok_codes,
                                pass_fds=self.fds + [info_w],
                                limit_ok=limit_ok, info=(info_r, info_w))
        finally:
            for fd in (info_r, info_w):
                try:
                    os.close(fd)
                except OSError:
                    pass


class Result(object):
    def __init__(self, out, err, code, truncated, peak_rss, elapsed):
        self.out, self.err, self.code = out, err, code
        self.truncated = truncated
        self.peak_rss, self.elapsed = peak_rss, elapsed

    @property
    def text(self):
        return self.out.decode('utf-8', 'replace')


def run(cmd, image, conf=None, files=(), write=(), stdin=None,
        out_limit=MAX_OUT, ok_codes=(0,), outdir=None, **limit_args):
    """Run ``cmd`` in a one-off sandbox; return a Result.

    ``files``/``write``: host paths in ``cmd`` the tool reads / writes;
    they are replaced by the sandbox's paths of their descriptors.
    ``outdir``: a private directory the tool writes in; ``cmd``'s
    arguments naming it or a path in it are rewritten to match.
    """
    lim = limits(conf, **limit_args)
    with Run(image, lim) as r:
        mapping = {}
        for path in files:
            mapping[path] = r.file(path)
        for path in write:
            mapping[path] = r.file(path, write=True)
        cmd = [mapping.get(c, c) if isinstance(c, str) else c for c in cmd]
        if outdir:
            cmd = in_dir(cmd, outdir, r.outdir(outdir))
        return r.execute(cmd, stdin=stdin, out_limit=out_limit,
                         ok_codes=ok_codes)


def in_dir(words, host_dir, sandbox_dir):
    """``words`` with ``host_dir`` (or a path in it) as the sandbox sees it.

    Each word that is the directory, or starts with it and a slash, or
    holds such a path after an ``=`` (``of=DIR/x``).
    """
    host_dir = host_dir.rstrip('/')

    def one(w):
        if not isinstance(w, str):
            return w
        head, eq, tail = w.rpartition('=') if '=' in w else ('', '', w)
        if tail == host_dir or tail.startswith(host_dir + '/'):
            return head + eq + sandbox_dir + tail[len(host_dir):]
        return w
    return [one(w) for w in words]


def _name(cmd):
    name = ' '.join(str(c) for c in cmd[:2] if not str(c).startswith(
        '/proc/self/fd'))
    return name


def execute_argv(argv, cmd, image, lim, stdin=None, out_limit=MAX_OUT,
                 ok_codes=(0,), pass_fds=(), limit_ok=None, info=None):
    """Run the full ``argv`` (sandbox and ``cmd``); judge the outcome.

    ``limit_ok``: the exit codes that mean success, when ``ok_codes``
    admits more (the caller judges them itself). ``info``: (read, write)
    ends of bwrap's --info-fd pipe; without it the sandbox is up already
    (a Session).
    """
    tool = os.path.basename(str(cmd[0]))
    if shutil.which('bwrap') is None:
        raise exception.SandboxUnavailable(
            reason="bwrap is not installed (Debian package bubblewrap)")
    out, err, code, truncated, rss, elapsed, timed_out, cpu = _bounded(
        argv, stdin, out_limit, lim.timeout, pass_fds, tool=tool)
    _record(tool, rss, elapsed)
    err_text = err.decode('utf-8', 'replace')
    started = True
    if info:
        os.set_blocking(info[0], False)
        try:
            started = b'child-pid' in os.read(info[0], 65536)
        except BlockingIOError:
            started = False
    if timed_out:
        raise exception.ToolLimitExceeded(
            tool=tool, image=image, limit='wall-clock',
            value='%s = %d s' % (lim.timeout_name, lim.timeout))
    ok = ok_codes if limit_ok is None else limit_ok
    # Truncated: the kill was ours (the output bound), not a limit's; the
    # peak RSS then may even be the forked parent's.
    limit = None if truncated else _limit_hit(
        code, code in ok, err_text + '\n' + out[-4096:].decode(
            'utf-8', 'replace'), rss, cpu, lim, tool)
    if limit:
        raise exception.ToolLimitExceeded(tool=tool, image=image,
                                          limit=limit[0], value=limit[1])
    if not started:
        raise exception.SandboxUnavailable(reason=_one_line(err_text))
    if code in (126, 127) and shutil.which(tool) is None:
        raise exception.ToolMissing(tool=tool)
    if not truncated and code not in ok_codes:
        raise exception.command_failed(cmd=_name(cmd), code=code,
                                       stderr=_one_line(err_text or out))
    return Result(out, err_text, code, truncated, rss, elapsed)


def _signal_of(code):
    if code is None:
        return None
    if code < 0:
        return -code
    if code > 128:
        return code - 128
    return None


def _limit_hit(code, ok, err_text, rss, cpu, lim, tool):
    """(limit, value) if a limit stopped the tool, from facts.

    The signal that ended it (with the CPU time it used, for SIGXCPU) or a
    kill with its resident size near the limit; the tool's own words only
    on a line it begins itself, and only if it failed: an image's file
    names (which e2fsck and debugfs print) can say anything.
    """
    if code == 0 or code is None:
        return None
    sig = _signal_of(code)
    if sig == signal.SIGXCPU and cpu >= lim.cpu - 1:
        return 'CPU time', '%d s' % lim.cpu
    if sig == signal.SIGXFSZ:
        return 'file size', '%d bytes' % lim.file_size
    # Lines the tool begins itself: its name (its error reports) or
    # e2fsprogs' "Error ..." reports; an image's names come quoted inside
    # a line (e2fsck prints them escaped), never at its start.
    said = [] if ok else [line for line in err_text.splitlines()
                          if line.startswith((tool + ': ', 'Error '))]
    says = exception.tool_says('\n'.join(said))
    if exception.FILE_SIZE in says:
        return 'file size', '%d bytes' % lim.file_size
    if exception.MEMORY in says or (
            sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL,
                    signal.SIGBUS)
            and rss > lim.memory_for(tool) * MiB // 2):
        return 'memory', '[amiboot] tool_memory_mb = %d MiB (address ' \
            'space%s)' % (lim.memory_mb, ', twice for QEMU'
                          if tool in QEMU_TOOLS else '')
    return None


def _one_line(text, limit=500):
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit] + ' ...'


def _bounded(argv, stdin, out_limit, timeout, pass_fds=(), tool=None):
    """Run ``argv``; at most ``out_limit`` bytes of stdout are kept.

    Returns (out, err, code, truncated, peak RSS bytes, seconds,
    timed_out, CPU seconds). The run is its own process group, killed
    whole when the time is over or the output limit passed (the sandbox
    dies with it).
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(_ENV), close_fds=True,
                            pass_fds=tuple(pass_fds),
                            start_new_session=True, restore_signals=True)
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin or b'')
    truncated = timed_out = False
    deadline = t0 + timeout
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
                timed_out = True
                break
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
                break
        if timed_out or truncated:
            _killpg(proc.pid)
        code, rss, cpu = _wait(proc, max(1.0, deadline - time.monotonic()))
        if code is None:
            timed_out = True
            _killpg(proc.pid)
            code, rss, cpu = _wait(proc, 30)
    finally:
        sel.close()
        if proc.returncode is None:
            _killpg(proc.pid)
            _wait(proc, 30)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    return (bytes(out), bytes(err), code, truncated, rss,
            time.monotonic() - t0, timed_out, cpu)


def _killpg(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc, timeout):
    """(exit code, peak RSS bytes, CPU seconds) or (None, 0, 0)."""
    def reaped():
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            proc.returncode = proc.returncode if proc.returncode is not \
                None else -1
            return proc.returncode, 0, 0.0
        if not pid:
            return None
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        # ru_maxrss: KiB, the largest of the process and every
        # descendant it waited for (the tool, inside the sandbox);
        # the CPU time likewise summed over them.
        return code, ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime

    return (utils.poll(reaped, timeout, 0.001,
                       until=lambda done: done is not None)
            or (None, 0, 0.0))


# --- a qcow2 (or raw) disk served inside a sandbox -------------------------

_SESSION_SCRIPT = r'''
: > /tmp/disk || exit 1
qemu-storage-daemon "$@" --pidfile /tmp/qsd.pid --daemonize || exit 1
echo ready
read _eof
kill -TERM "$(cat /tmp/qsd.pid)"
i=0
while kill -0 "$(cat /tmp/qsd.pid)" 2>/dev/null && [ $i -lt 3000 ]; do
    sleep 0.01; i=$((i + 1))
done
'''
MOUNT = '/tmp/disk'


class Session(object):
    """qemu-storage-daemon serving ``disk`` inside a sandbox; run tools.

    The disk appears to tools as MOUNT (a FUSE export mounted in the
    sandbox's own mount namespace). ``run`` enters the sandbox's
    namespaces for each tool. Leaving the block stops the daemon (it
    flushes), then the sandbox; nothing of it outlives the block or its
    process.
    """

    def __init__(self, disk, fmt, image, lim, attach_timeout=30,
                 backing=None):
        # backing: the raw base a qcow2 disk is opened over, as the caller
        # states it (recorded or given; never the header's), or None.
        self.disk, self.fmt, self.image = disk, fmt, image
        self.backing = backing
        self.limits = lim
        self.attach_timeout = attach_timeout
        self.proc = None
        self.pid = None

    def _blockdevs(self, r):
        backing = self.backing if self.fmt == 'qcow2' else None
        disk = r.file(self.disk, write=True)
        file0 = {'driver': 'file', 'node-name': 'file0', 'filename': disk,
                 # e2fsprogs fsync often; each would be a qcow2 flush and
                 # an fdatasync. Synced once at the end instead.
                 'cache': {'no-flush': True}}
        devs = [file0]
        fmt = {'driver': self.fmt, 'node-name': 'fmt0', 'file': 'file0'}
        if self.fmt == 'qcow2':
            if backing:
                devs.append({'driver': 'file', 'node-name': 'base0',
                             'filename': r.file(backing),
                             'read-only': True})
                devs.append({'driver': 'raw', 'node-name': 'base1',
                             'file': 'base0', 'read-only': True})
                fmt['backing'] = 'base1'
            else:
                fmt['backing'] = None
        devs.append(fmt)
        args = []
        for d in devs:
            args += ['--blockdev', json.dumps(d, sort_keys=True)]
        args += ['--export', 'type=fuse,id=exp0,node-name=fmt0,'
                 'mountpoint=%s,writable=on,allow-other=off' % MOUNT]
        return args

    def __enter__(self):
        r = self.run_files = Run(self.image, self.limits)
        try:
            args = self._blockdevs(r)
            # Only the daemon may mount (FUSE, in its own namespaces): it
            # is root of the sandbox's user namespace, the host's tool
            # user outside. Tools entering later drop every capability.
            extra = r._binds + ['--uid', '0', '--gid', '0',
                                '--cap-add', 'CAP_SYS_ADMIN',
                                '--dev-bind', '/dev/fuse', '/dev/fuse']
            bw = _bwrap(extra)
            bw.remove('--cap-drop')
            bw.remove('ALL')
            info_r, info_w = os.pipe()
            argv = (r.setpriv + bw + ['--info-fd', str(info_w), '--'] +
                    self.limits.prlimit('qemu-storage-daemon') +
                    ['sh', '-c', _SESSION_SCRIPT, 'amiboot-session'] + args)
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=dict(_ENV), close_fds=True,
                pass_fds=tuple(r.fds) + (info_w,), start_new_session=True)
            os.close(info_w)
            self._wait_ready(info_r)
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self, info_r):
        deadline = time.monotonic() + self.attach_timeout
        info = b''
        sel = selectors.DefaultSelector()
        sel.register(info_r, selectors.EVENT_READ)
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = b''
        try:
            while b'\n' not in ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise exception.AttachFailed(
                        path=self.disk, reason="qemu-storage-daemon did not "
                        "export it within %d s" % self.attach_timeout)
                events = sel.select(left)
                for key, _ev in events:
                    chunk = os.read(key.fd, 4096)
                    if key.fd == info_r:
                        if not chunk:
                            sel.unregister(info_r)
                        info += chunk
                        continue
                    if not chunk:
                        err = self.proc.stderr.read(MAX_ERR)
                        self.proc.wait()
                        self.proc.stderr.close()
                        raise exception.AttachFailed(
                            path=self.disk, reason=_one_line(
                                err.decode('utf-8', 'replace')) or
                            "the sandbox exited")
                    ready += chunk
            while info_r in [k.fd for k in sel.get_map().values()] and \
                    b'}' not in info:
                chunk = os.read(info_r, 4096)
                if not chunk:
                    break
                info += chunk
        finally:
            sel.close()
            os.close(info_r)
        self.pid = int(json.loads(info.decode())['child-pid'])

    def argv(self, cmd):
        tool = os.path.basename(cmd[0])
        ns = ['nsenter', '-t', str(self.pid), '--user', '--mount', '--net',
              '--ipc', '--uts', '--pid', '--preserve-credentials', '--']
        drop = ['setpriv', '--bounding-set=-all', '--inh-caps=-all',
                '--no-new-privs', '--']
        return (self.run_files.setpriv + ns + drop +
                self.limits.prlimit(tool) + [str(c) for c in cmd])

    def execute(self, cmd, stdin=None, out_limit=MAX_OUT, ok_codes=(0,),
                pass_fds=(), limit_ok=None):
        if self.proc is None or self.proc.poll() is not None:
            raise exception.AttachFailed(path=self.disk,
                                         reason="its sandbox is gone")
        return execute_argv(self.argv(cmd), cmd, self.image, self.limits,
                            stdin=stdin, out_limit=out_limit,
                            ok_codes=ok_codes, pass_fds=pass_fds,
                            limit_ok=limit_ok)

    def _stop(self):
        proc = self.proc
        if proc is not None:
            try:
                # End of input: the script stops the daemon, which
                # flushes and unmounts; then the sandbox ends.
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(self.attach_timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid)
                proc.wait()
            for f in (proc.stdout, proc.stderr):
                if f and not f.closed:
                    f.close()
        self.proc = None
        if getattr(self, 'run_files', None):
            self.run_files.close()

    def __exit__(self, *exc):
        self._stop()
