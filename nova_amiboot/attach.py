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
import os

from oslo_concurrency import lockutils
from oslo_concurrency import processutils
from oslo_log import log as logging
import psutil

from nova_amiboot import disk as disk_mod
from nova_amiboot import exception
from nova_amiboot import e2fs
from nova_amiboot import meta
from nova_amiboot.privileged import nbd as priv_nbd
from nova_amiboot import sandbox
from nova_amiboot import utils

LOG = logging.getLogger(__name__)


class Target(object):
    """A disk made visible to e2fsprogs; ``run`` runs one of them on it.

    ``method`` is how it was reached: 'nbd' (tools get the device from the
    privileged side), 'fuse' (a sandbox.Session serves the disk inside
    the tools' sandbox) or 'file' (a plain file, such as a raw base in
    the cache). Every tool runs in nova_amiboot.sandbox.
    """

    def __init__(self, path, method, timeout=None, session=None,
                 image=None, limits=None):
        self.path = path
        self.method = method
        # Seconds each tool may run on the (untrusted) filesystem; a crafted
        # one must not hang a spawn.
        self.timeout = timeout
        self.session = session
        # Named in errors (a limit that stopped a tool names the image).
        self.image = image or path
        self.limits = limits

    def _limits(self):
        if self.limits is None:
            return sandbox.Limits(timeout=self.timeout or
                                  sandbox.DEFAULT_TIMEOUT).as_dict()
        return self.limits.as_dict()

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
        kwargs['limits'] = self._limits()
        try:
            if self.method == 'nbd':
                return priv_nbd.run_e2fs(tool, self.path, list(args),
                                         **kwargs)
            return e2fs.run(tool, list(args), self.path, image=self.image,
                            session=self.session, **kwargs)
        # An error is one bounded line (as utils.execute makes it): the
        # stderr of a tool reading an untrusted filesystem can run on for
        # many lines.
        except processutils.ProcessExecutionError as e:
            raise exception.command_failed(
                cmd=tool, code=e.exit_code,
                stderr=utils.one_line(e.stderr or ''))
        except e2fs.Failed as e:
            raise exception.command_failed(cmd=tool, code=e.code,
                                           stderr=utils.one_line(e.stderr))
        except exception.ToolLimitExceeded as e:
            if self.method == 'nbd' and self.image != self.path:
                # The privileged side knows the device, not the image.
                raise exception.ToolLimitExceeded(
                    tool=tool, image=self.image,
                    limit=e.kwargs.get('limit', '?'),
                    value=e.kwargs.get('value', '?'))
            raise
        except FileNotFoundError:
            raise exception.ToolMissing(tool=tool)
        except ValueError as e:
            raise exception.E2fsRequestRefused(tool=tool, target=self.path,
                                               reason=str(e))


def choose_method(conf):
    method = conf.amiboot.attach_method
    if method == 'auto':
        # The FUSE route keeps every parser of the disk in the sandbox;
        # qemu-nbd must run as root for the kernel's device.
        return 'fuse' if os.path.exists('/dev/fuse') or not \
            os.path.exists('/sys/block/nbd0') else 'nbd'
    return method


def fuse_mounted(path):
    """True if ``path`` is a FUSE mount point (per psutil's mount table)."""
    path = os.path.realpath(path)
    # fstype is "fuse" or "fuse.<subtype>", as in /proc/self/mountinfo.
    return any(p.mountpoint == path and p.fstype.startswith('fuse')
               for p in psutil.disk_partitions(all=True))


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
    backing = backing or meta.recorded_backing(disk)
    if backing is None:
        raise exception.AttachFailed(
            path=disk, reason="its base is not recorded and was not given")
    return backing


@contextlib.contextmanager
def attached(disk, fmt, conf, method=None, backing=None, image=None):
    """Yield a Target for ``disk`` (format ``fmt``) and release it after.

    ``backing``: the raw base a qcow2 ``disk`` is opened over (default: the
    one recorded when it was made; HEADER: the header's, for disks no guest
    ever ran on). Whatever the header names is never opened otherwise.
    ``image``: what errors name (the image the disk was made from).
    """
    method = method or choose_method(conf)
    lim = sandbox.Limits.from_conf(conf)
    if os.path.exists(disk):
        backing = _stated_backing(disk, fmt, backing)
    if method == 'fuse':
        cm = _fuse(disk, fmt, conf.amiboot.attach_timeout, backing, image,
                   lim)
    elif method == 'nbd':
        cm = _nbd(disk, fmt, conf.amiboot.attach_timeout)
    else:
        raise ValueError(method)
    with cm as target:
        target.timeout = conf.amiboot.fs_tool_timeout
        target.limits = lim
        target.image = image or disk
        yield target


@contextlib.contextmanager
def _fuse(disk, fmt, timeout, backing=None, image=None, lim=None):
    """Serve ``disk`` in a sandbox (sandbox.Session); yield its Target.

    qemu-storage-daemon runs as the tool user in the sandbox and its FUSE
    export is mounted in the sandbox's own mount namespace: nothing of it
    is visible on the host, there is no run-time state on the host to
    trust later, and it dies with this process (bwrap --die-with-parent).
    """
    sess = sandbox.Session(disk, fmt, image or disk,
                           lim or sandbox.Limits(), timeout, backing=backing)
    try:
        sess.__enter__()
    except (ValueError, OSError) as e:
        raise exception.AttachFailed(path=disk, reason=str(e))
    except exception.CommandFailed as e:
        raise exception.AttachFailed(path=disk, reason=str(e))
    try:
        yield Target(sandbox.MOUNT, 'fuse', session=sess, image=image,
                     limits=lim)
    finally:
        sess.__exit__(None, None, None)
    # The daemon wrote everything to the page cache when it stopped; make
    # it durable before anyone boots from the disk.
    utils.fdatasync(disk)


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
    if not utils.poll(lambda: os.path.exists(pidfile), timeout, 0.05):
        raise exception.AttachFailed(path=device,
                                     reason="qemu-nbd did not connect")
