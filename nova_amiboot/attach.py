"""Reach an instance disk from the host without a kernel filesystem mount.

Two ways, same result: a *target* path that e2fsprogs can open as a block
device or a plain file holding the guest filesystem.

- nbd: ``qemu-nbd -c /dev/nbdN`` (root, through nova_amiboot.privileged), on
  compute hosts with the nbd module.
- fuse: ``qemu-storage-daemon`` exports the disk as a regular file through
  FUSE (QEMU's ``--export type=fuse``). No kernel block device, no root.

Neither mounts the guest filesystem in the host kernel. Both are context
managers that always release what they took: the daemon is stopped, the
FUSE mount gone, the nbd device disconnected, even when the body fails.
"""

import contextlib
import glob
import json
import os
import shutil
import signal
import time

from oslo_concurrency import lockutils
from oslo_concurrency import processutils
from oslo_log import log as logging

from nova_amiboot import disk as disk_mod
from nova_amiboot import exception
from nova_amiboot.privileged import e2fs
from nova_amiboot.privileged import nbd as priv_nbd
from nova_amiboot import utils

LOG = logging.getLogger(__name__)


class Target(object):
    """A disk made visible to e2fsprogs; ``run`` runs one of them on it.

    ``method`` is how it was reached: 'nbd' (tools run privileged), 'fuse'
    or 'file' (a plain file, such as a raw base in the cache).
    """

    def __init__(self, path, method, timeout=None):
        self.path = path
        self.method = method
        # Seconds each tool may run on the (untrusted) filesystem; a crafted
        # one must not hang a spawn.
        self.timeout = timeout

    def run(self, tool, args, ok_codes=(0,), size=None):
        """Run e2fsprogs' ``tool`` with ``args`` (see e2fs.OPTIONS).

        Returns (stdout, stderr) as text.
        """
        out, err, _truncated = self._e2fs(tool, args, ok_codes=ok_codes,
                                          size=size)
        return out.decode('utf-8', 'replace'), err

    def debugfs(self, requests, write=False, out_limit=e2fs.DEFAULT_OUT):
        """Run debugfs with a script built from ``requests`` (e2fs.OPS).

        Returns (stdout bytes, stderr, truncated).
        """
        return self._e2fs('debugfs', ['-w'] if write else [],
                          requests=list(requests), out_limit=out_limit)

    def _e2fs(self, tool, args, **kwargs):
        # Both routes build the command line and the debugfs script with
        # the same code (e2fs); on nbd it runs in the privsep daemon,
        # which checks everything again itself.
        try:
            if self.method == 'nbd':
                return priv_nbd.run_e2fs(tool, self.path, list(args),
                                         **kwargs)
            return e2fs.run(tool, list(args), self.path, **kwargs)
        # An error is one bounded line (as utils.execute makes it): the
        # stderr of a tool reading an untrusted filesystem can run on for
        # many lines.
        except processutils.ProcessExecutionError as e:
            raise exception.CommandFailed(
                cmd=tool, code=e.exit_code,
                stderr=utils.one_line(e.stderr or ''))
        except e2fs.Failed as e:
            raise exception.CommandFailed(cmd=tool, code=e.code,
                                          stderr=utils.one_line(e.stderr))
        except FileNotFoundError:
            raise exception.ToolMissing(tool=tool)
        except ValueError as e:
            raise exception.E2fsRequestRefused(tool=tool, target=self.path,
                                               reason=str(e))


def choose_method(conf):
    method = conf.amiboot.attach_method
    if method == 'auto':
        return 'nbd' if os.path.exists('/sys/block/nbd0') else 'fuse'
    return method


def fuse_mounted(path):
    """True if ``path`` is a FUSE mount point (per /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    with open('/proc/self/mountinfo') as f:
        for line in f:
            fields = line.split()
            sep = fields.index('-')
            mnt = fields[4].encode().decode('unicode_escape')
            if mnt == path and fields[sep + 1].startswith('fuse'):
                return True
    return False


# backing= for a disk that no guest ever ran on (tests, tools that made it
# themselves): its header's backing file is taken as it is.
HEADER = object()


def _stated_backing(disk, fmt, backing):
    """The raw base the qcow2 ``disk`` is opened over (None: no backing).

    A disk a guest's QEMU has owned may have a rewritten header: its
    backing is the one given, or the one recorded when we made the
    overlay, never the header's; a header naming a data file is refused.
    """
    if fmt != 'qcow2':
        return None
    if backing is HEADER:
        return disk_mod.header_backing(disk)
    disk_mod.check_header(disk, fmt)
    backing = backing or disk_mod.recorded_backing(disk)
    if backing is None:
        raise exception.AttachFailed(
            path=disk, reason="its base is not recorded and was not given")
    return backing


@contextlib.contextmanager
def attached(disk, fmt, conf, method=None, backing=None):
    """Yield a Target for ``disk`` (format ``fmt``) and release it after.

    ``backing``: the raw base a qcow2 ``disk`` is opened over (default: the
    one recorded when it was made; HEADER: the header's, for disks no guest
    ever ran on). Whatever the header names is never opened otherwise.
    """
    method = method or choose_method(conf)
    if os.path.exists(disk):
        backing = _stated_backing(disk, fmt, backing)
    if method == 'fuse':
        cm = _fuse(disk, fmt, conf.amiboot.attach_timeout, backing)
    elif method == 'nbd':
        cm = _nbd(disk, fmt, conf.amiboot.attach_timeout)
    else:
        raise ValueError(method)
    with cm as target:
        target.timeout = conf.amiboot.fs_tool_timeout
        yield target


_EXPORT_PREFIX = 'amiboot-export-'


def _release_stale_export(workdir):
    """Stop the daemon and drop the mount of a dead spawn's export."""
    mnt = os.path.join(workdir, 'disk')
    try:
        with open(os.path.join(workdir, 'pid')) as f:
            pid = int(f.read().strip())
        with open('/proc/%d/comm' % pid) as f:
            # comm is cut at 15 characters.
            ours = f.read().strip() == 'qemu-storage-daemon'[:15]
    except (OSError, ValueError):
        ours = False
    if ours:
        _stop_daemon(pid, mnt, 10)
    elif fuse_mounted(mnt):
        utils.execute('fusermount3', '-u', '-z', mnt)


def reap_stale_exports():
    """Release FUSE exports whose spawn was killed (no finally ran)."""
    return utils.reap_stale_tempdirs(_EXPORT_PREFIX, _release_stale_export)


@contextlib.contextmanager
def _fuse(disk, fmt, timeout, backing=None):
    reap_stale_exports()
    workdir = utils.owned_tempdir(_EXPORT_PREFIX)
    mnt = os.path.join(workdir, 'disk')
    pidfile = os.path.join(workdir, 'pid')
    open(mnt, 'w').close()
    pid = None
    try:
        # --daemonize returns only once the export is set up (or failed),
        # so there is no mount to poll for.
        try:
            # On every spawn's path: see execute_quick.
            utils.execute_quick(
                'qemu-storage-daemon',
                # e2fsprogs fsync often; each would be a qcow2 flush and an
                # fdatasync of the disk. Ignore them and sync once at the
                # end (below).
                '--blockdev', 'driver=file,node-name=file0,'
                'cache.no-flush=on,filename=%s' % _qemu_opt(disk),
                '--blockdev', _format_node(fmt, backing),
                '--export', 'type=fuse,id=exp0,node-name=fmt0,'
                'mountpoint=%s,writable=on' % _qemu_opt(mnt),
                '--pidfile', pidfile, '--daemonize',
                timeout=timeout)
        except exception.CommandFailed as e:
            raise exception.AttachFailed(path=disk, reason=str(e))
        with open(pidfile) as f:
            pid = int(f.read().strip())
        if not fuse_mounted(mnt):
            raise exception.AttachFailed(path=disk,
                                         reason="FUSE export did not appear")
        yield Target(mnt, 'fuse')
    finally:
        if pid:
            _stop_daemon(pid, mnt, timeout)
        else:
            # A start that timed out or failed midway may still have left
            # a daemon (and its pidfile) behind.
            _release_stale_export(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    # The daemon wrote everything to the page cache when it stopped; make
    # it durable before anyone boots from the disk.
    utils.fdatasync(disk)


def _format_node(fmt, backing):
    """The format node's --blockdev (JSON): the chain stated, for qcow2."""
    node = {'driver': fmt, 'node-name': 'fmt0', 'file': 'file0'}
    if fmt == 'qcow2':
        node['backing'] = disk_mod.backing_node(backing)
    return json.dumps(node)


def _qemu_opt(value):
    # QEMU's option syntax escapes a comma by doubling it.
    return value.replace(',', ',,')


def _stop_daemon(pid, mnt, timeout):
    """SIGTERM qemu-storage-daemon: it flushes, unmounts and exits."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    if _alive(pid):
        LOG.warning("qemu-storage-daemon %d ignored SIGTERM; killing it", pid)
        os.kill(pid, signal.SIGKILL)
    if fuse_mounted(mnt):
        utils.execute('fusermount3', '-u', '-z', mnt)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone (reap it).
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def _free_nbd_devices():
    for sysdir in sorted(glob.glob('/sys/block/nbd*'),
                         key=lambda p: int(p[len('/sys/block/nbd'):])):
        if not os.path.exists(os.path.join(sysdir, 'pid')):
            yield '/dev/' + os.path.basename(sysdir)


@contextlib.contextmanager
def _nbd(disk, fmt, timeout):
    for device in _free_nbd_devices():
        # Two spawns must not pick the same device (LP#1207422): take the
        # device's lock, then look again.
        with lockutils.lock('amiboot-' + os.path.basename(device),
                            external=True,
                            lock_path=_nbd_lock_path()):
            if os.path.exists('/sys/block/%s/pid'
                              % os.path.basename(device)):
                continue
            try:
                priv_nbd.connect(device, disk, fmt)
            except processutils.ProcessExecutionError as e:
                LOG.debug("qemu-nbd on %s failed: %s", device, e.stderr)
                continue
            try:
                _wait_for_nbd(device, timeout)
                yield Target(device, 'nbd')
            finally:
                priv_nbd.disconnect(device)
            return
    raise exception.AttachFailed(path=disk, reason="no free nbd device")


def _nbd_lock_path():
    return os.environ.get('AMIBOOT_LOCK_PATH', '/var/lock')


def _wait_for_nbd(device, timeout):
    pidfile = '/sys/block/%s/pid' % os.path.basename(device)
    deadline = time.monotonic() + timeout
    while not os.path.exists(pidfile):
        if time.monotonic() > deadline:
            raise exception.AttachFailed(path=device,
                                         reason="qemu-nbd did not connect")
        time.sleep(0.05)
