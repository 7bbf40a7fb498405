"""qemu-nbd connect/disconnect and e2fsprogs on /dev/nbdN, as root.

These run in the privsep daemon and trust nothing from the caller:

- a device is ``/dev/nbdN``, nothing else;
- the disk to connect is an instance disk, ``<instances>/<dir>/disk``,
  where ``<instances>`` is the instances path of the configuration read on
  this side (nova's ``instances_path``), ``<dir>`` an instance uuid or a
  base check's scratch directory; no symlink anywhere, a regular file with
  one link, opened here without following links and handed to qemu-nbd as
  that open file; a qcow2 disk's backing file is pinned to a raw base in
  ``<instances>/_base``, checked the same way, and may have no data file;
- e2fsprogs get options from a fixed table and debugfs a script built here
  from structured requests (nova_amiboot.e2fs).
"""

import json
import os
import re
import stat
import subprocess

from oslo_concurrency import processutils

from nova_amiboot import exception
import nova_amiboot.privileged
from nova_amiboot import e2fs
from nova_amiboot import meta
from nova_amiboot import qemuimg
from nova_amiboot import sandbox
from nova_amiboot import utils

_DEVICE = re.compile(r'/dev/nbd[0-9]{1,4}')
# Nova's and amiboot's instance directories are named by uuid; the base
# check (grow.base_facts) attaches a scratch overlay in a directory made
# by tempfile.mkdtemp(prefix='amiboot-check-').
_INSTANCE_DIR = re.compile(
    r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
    r'|amiboot-check-[a-z0-9_]{1,64}')
# Bases are named by the sha1 of the image id (as nova names them); a base
# being fetched is checked (grow.base_facts) under its temporary name.
_BASE_NAME = re.compile(r'[0-9a-f]{40}(?:\.part-[0-9]{1,10})?')
# The base directory: nova's [image_cache] subdirectory_name (default
# _base), directly under the instances path, a plain name.
_BASE_DIR = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}')
# Devices this process connected: only those are disconnected or handed
# to a tool.
_CONNECTED = set()
_DISK_NAME = 'disk'

# For the amiboot command only, which runs these functions in its own
# (root) process: there is no other side to distrust, and no nova config.
_local_instances_path = None


def set_local_instances_path(path):
    """The instances path when running in-process (the amiboot command).

    Not an entrypoint: in a privsep daemon this setting never arrives, and
    the daemon uses its own configuration.
    """
    global _local_instances_path
    _local_instances_path = path


def _instances_path():
    if _local_instances_path:
        path = _local_instances_path
    else:
        try:
            # The daemon was started with nova-compute's config files.
            import nova.conf
        except ImportError:
            raise ValueError("no instances path is configured")
        path = nova.conf.CONF.instances_path
    real = os.path.realpath(path)
    if not os.path.isabs(real) or not os.path.isdir(real):
        raise ValueError("instances path %r is not a directory" % path)
    return real


def _check_device(device):
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError("not an nbd device: %.80r" % (device,))


def _open_nofollow(path):
    """Open ``path`` read-only without following a link in any part."""
    fd = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = path.strip('/').split('/')
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            if not last:
                flags |= os.O_DIRECTORY
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                raise ValueError("%s: %s (symbolic links are refused)"
                                 % (path, e.strerror))
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise ValueError("%s is not a regular file with one link" % path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_disk(path):
    """Return an fd of the instance disk ``path`` after the checks."""
    if not isinstance(path, str) or len(path) > 4096 or '\0' in path:
        raise ValueError("not a disk path: %.80r" % (path,))
    instances = _instances_path()
    parent, name = os.path.split(path)
    top, instance_dir = os.path.split(parent)
    if (os.path.normpath(path) != path or top != instances
            or name != _DISK_NAME
            or not _INSTANCE_DIR.fullmatch(instance_dir)):
        raise ValueError("%.200r is not an instance disk under %s"
                         % (path, instances))
    return _open_nofollow(path)


def _check_base(path):
    if not isinstance(path, str) or len(path) > 4096 or '\0' in path:
        raise ValueError("not a base path: %.80r" % (path,))
    instances = _instances_path()
    parent, name = os.path.split(path)
    top, base_dir = os.path.split(parent)
    if (os.path.normpath(path) != path or top != instances
            or not _BASE_DIR.fullmatch(base_dir) or base_dir in ('.', '..')
            or not _BASE_NAME.fullmatch(name)):
        raise ValueError("backing file %.200r is not a base of %s"
                         % (path, instances))
    # No link anywhere on the way, a regular file with one link.
    return _open_nofollow(path)


def _check_connected(device):
    _check_device(device)
    if device not in _CONNECTED:
        raise ValueError("%s was not connected by this process" % device)


def _info(fd, fmt):
    # The header as qemu-img reads it from the file opened here, in the
    # sandbox (as the tool user, never root) under limits: a hostile
    # header can make qemu-img work hard.
    try:
        with sandbox.Run('instance disk', sandbox.Limits(
                timeout=60, cpu=30, memory_mb=512)) as r:
            res = r.execute(['qemu-img', 'info', '-f', fmt,
                             '--output=json', r.fd(fd)])
    except exception.AmibootException as e:
        raise ValueError("qemu-img info failed: %s" % e)
    # Read by oslo.utils; checked here, by root, whatever the caller did.
    return qemuimg.result(res)


def image_opts(disk_fd, fmt, backing_fd=None):
    """qemu-nbd's image: a ``json:`` spec of the open files.

    The files are named by /proc/self/fd/N (inherited), so what qemu-nbd
    opens is what was checked here; a qcow2 disk's backing is the checked
    base, or none, whatever its header says.
    """
    spec = {'driver': fmt,
            'file': {'driver': 'file',
                     'filename': '/proc/self/fd/%d' % disk_fd}}
    if fmt == 'qcow2':
        spec['backing'] = None if backing_fd is None else {
            'driver': 'raw',
            'file': {'driver': 'file',
                     'filename': '/proc/self/fd/%d' % backing_fd}}
    return 'json:' + json.dumps(spec, sort_keys=True)


def _qemu_nbd_connect(device, opts, fds):
    """The one call that needs the kernel's nbd device."""
    # -c forks a daemon that keeps the inherited files open.
    subprocess.run(['qemu-nbd', '-c', device, '--cache=writeback', '--',
                    opts], pass_fds=fds, check=True,
                   capture_output=True, timeout=120)
    pidfile = '/sys/block/%s/pid' % os.path.basename(device)
    # Up to 10 s (200 looks, 50 ms apart); a missing pidfile then fails
    # the open below.
    utils.poll(lambda: os.path.exists(pidfile), 10, 0.05)
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        check_served_files(pid, fds)
    except (OSError, ValueError) as e:
        processutils.execute('qemu-nbd', '-d', device)
        if isinstance(e, ValueError):
            raise
        raise processutils.ProcessExecutionError(
            cmd='qemu-nbd -c', description="%s did not connect: %s"
            % (device, e))


def check_served_files(pid, fds):
    """Refuse a qemu-nbd that holds files other than the checked ones.

    The header was checked before qemu-nbd read it; an external data file
    added in between would show here as another open file.
    """
    allowed = {(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds}
    fd_dir = '/proc/%d/fd' % pid
    others = []
    for name in os.listdir(fd_dir):
        path = os.path.join(fd_dir, name)
        try:
            st = os.stat(path)
            target = os.readlink(path)
        except OSError:
            continue
        # Unnamed temporary files (st_nlink 0) are QEMU's own.
        if (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)) and \
                (st.st_dev, st.st_ino) not in allowed and \
                st.st_nlink and not target.startswith('/dev/nbd'):
            others.append(target)
    if others:
        raise ValueError("qemu-nbd opened %s, not checked"
                         % ', '.join(sorted(others)))


@nova_amiboot.privileged.nbd_pctxt.entrypoint
def connect(device, path, fmt):
    _check_device(device)
    if fmt not in ('qcow2', 'raw'):
        raise ValueError("unsupported format %.20r" % (fmt,))
    fds = [_check_disk(path)]
    try:
        backing_fd = None
        if fmt == 'qcow2':
            info = _info(fds[0], 'qcow2')
            if qemuimg.data_file(info):
                raise ValueError("%s has an external data file" % path)
            # The base recorded when the overlay was made, where there is
            # one (the header is the guest's QEMU's to rewrite), else the
            # header's, which must still be a base of this host.
            backing = meta.recorded_backing(fds[0]) or \
                info.backing_file
            if backing:
                # Relative to the disk's directory, as QEMU reads it.
                backing = os.path.normpath(os.path.join(
                    os.path.dirname(path), backing))
                if info.backing_file_format not in (None, 'raw'):
                    raise ValueError("%s: backing file is not raw" % path)
                backing_fd = _check_base(backing)
                fds.append(backing_fd)
        try:
            _qemu_nbd_connect(device, image_opts(fds[0], fmt, backing_fd),
                              fds)
            _CONNECTED.add(device)
        except subprocess.CalledProcessError as e:
            raise processutils.ProcessExecutionError(
                exit_code=e.returncode, cmd='qemu-nbd -c',
                stderr=(e.stderr or b'').decode('utf-8', 'replace'))
    finally:
        for fd in fds:
            os.close(fd)


@nova_amiboot.privileged.nbd_pctxt.entrypoint
def disconnect(device):
    _check_connected(device)
    processutils.execute('qemu-nbd', '-d', device)
    _CONNECTED.discard(device)


@nova_amiboot.privileged.nbd_pctxt.entrypoint
def run_e2fs(tool, device, options, requests=None, ok_codes=(0,),
             size=None, out_limit=e2fs.DEFAULT_OUT, limits=None):
    """Run an e2fsprogs tool on an nbd device.

    Returns (stdout bytes, stderr, truncated); see e2fs.run. Options come
    from e2fs.OPTIONS; debugfs gets its script built here from
    ``requests``.
    """
    # The grammar first (RequestRefused), then the device: only one this
    # process connected (to an instance disk it checked) is handed over.
    e2fs.argv(tool, options, device, size)
    if requests is not None:
        e2fs.build_script(requests, lambda data: '/dev/null')
    _check_connected(device)
    try:
        # In the sandbox, as the tool user: the device is opened here and
        # handed over as a descriptor (e2fs.run).
        return e2fs.run(tool, options, device, requests=requests,
                        ok_codes=ok_codes, size=size, out_limit=out_limit,
                        limits=limits)
    except e2fs.Failed as e:
        raise processutils.ProcessExecutionError(
            exit_code=e.code, cmd=tool, stderr=e.stderr)
