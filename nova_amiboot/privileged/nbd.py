"""qemu-nbd connect/disconnect and e2fsprogs on /dev/nbdN, as root."""

import re
import tempfile

from oslo_concurrency import processutils

import nova_amiboot.privileged

_DEVICE = re.compile(r'^/dev/nbd[0-9]+$')
_TOOLS = {'e2fsck', 'resize2fs', 'debugfs', 'blkid'}
_DEBUGFS_COMMANDS = {'cd', 'mkdir', 'write', 'rm', 'sif', 'cat', 'stat'}
# Injection stages host files in a directory made by inject.staging_dir().
_STAGED = re.compile(r'^%s/amiboot-inject-[A-Za-z0-9_]+/[a-z0-9]+$'
                     % re.escape(tempfile.gettempdir()))


def _check_device(device):
    if not _DEVICE.match(device):
        raise ValueError("not an nbd device: %r" % device)


def _check_debugfs_script(script):
    # A root debugfs could read or write any host file: allow only the
    # commands injection uses, and host reads only from the staging area.
    for line in (script or '').splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] not in _DEBUGFS_COMMANDS:
            raise ValueError("debugfs command %r not allowed" % words[0])
        if words[0] == 'write' and not _STAGED.match(words[1].strip('"')):
            raise ValueError("debugfs may not read %r" % words[1])


@nova_amiboot.privileged.nbd_pctxt.entrypoint
def connect(device, path, fmt):
    _check_device(device)
    if fmt not in ('qcow2', 'raw'):
        raise ValueError("unsupported format %r" % fmt)
    # -f: never probe the format of a guest disk.
    processutils.execute('qemu-nbd', '-c', device, '-f', fmt,
                         '--cache=writeback', '--', path)


@nova_amiboot.privileged.nbd_pctxt.entrypoint
def disconnect(device):
    _check_device(device)
    processutils.execute('qemu-nbd', '-d', device)


@nova_amiboot.privileged.nbd_pctxt.entrypoint
def run_e2fs(tool, device, args, ok_codes=(0,), process_input=None):
    """Run one of e2fsprogs' tools on an nbd device; return (out, err)."""
    _check_device(device)
    if tool not in _TOOLS:
        raise ValueError("tool %r not allowed" % tool)
    if any(not isinstance(a, str) or a.startswith('/') for a in args):
        raise ValueError("arguments may not name paths")
    if tool == 'debugfs':
        _check_debugfs_script(process_input)
    return processutils.execute(tool, *args, device,
                                check_exit_code=list(ok_codes),
                                process_input=process_input)
