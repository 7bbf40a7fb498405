"""The instance root disk: a qcow2 overlay over the raw base, or a copy."""

import errno
import json
import os
import shutil

from oslo_log import log as logging
from oslo_utils.imageutils import format_inspector

from nova_amiboot import exception
from nova_amiboot import meta
from nova_amiboot import qemuimg
from nova_amiboot import sandbox

LOG = logging.getLogger(__name__)


def create(base, path, size, mode='overlay', instance='?', image='?',
           cluster_size=None):
    """Make the instance disk at ``path`` with ``size`` bytes.

    Returns the disk format ('qcow2' or 'raw'). Refuses a size smaller than
    the base (the AMI's filesystem would not fit). Nothing is left at
    ``path`` on failure. ``cluster_size``: of the overlay (qemu-img's
    default when None).
    """
    needed = os.path.getsize(base)
    if size < needed:
        raise exception.FlavorDiskTooSmall(instance=instance, flavor=size,
                                           needed=needed, image=image)
    if os.path.exists(path):
        raise exception.AmibootException(
            "Instance %s: disk %s exists already" % (instance, path))
    try:
        if mode == 'overlay':
            # -F raw: the backing format is stated, never probed; -u: the
            # base is not opened (its size is not needed, ours is given).
            opts = 'backing_file=%s,backing_fmt=raw' % base
            if cluster_size:
                opts += ',cluster_size=%d' % int(cluster_size)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644))
            sandbox.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-u',
                         '-o', opts, path, str(size)], image,
                        write=[path], timeout=120)
            meta.record_backing(path, base)
            return 'qcow2'
        # Parity with nova's Flat backend: a full raw copy, then grown.
        shutil.copyfile(base, path)
        sandbox.run(['qemu-img', 'resize', '-q', '-f', 'raw', path,
                     str(size)], image, write=[path], timeout=120,
                    file_size=size + 1)
        return 'raw'
    except BaseException as e:
        if os.path.exists(path):
            os.unlink(path)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or \
                isinstance(e, exception.ToolOutOfSpace):
            raise exception.DiskFull(path=os.path.dirname(path),
                                     action="creating the disk of %s"
                                     % instance)
        raise


def header_backing(path):
    """The backing file the qcow2 header of ``path`` names, or None.

    Only for disks no guest ever ran on: the header is the guest's to
    rewrite otherwise. Read by qemu-img in the sandbox (it never opens the
    backing for info); a relative name is taken from the disk's directory.
    """
    name = qemuimg.info(path, 'qcow2', force_share=True,
                        timeout=60).backing_file
    if not name:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(
        os.path.abspath(path)), name))


def check_header(path, fmt, instance='?'):
    """Refuse a disk whose qcow2 header reaches past the disk itself.

    A guest's QEMU owns its disk while it runs and can rewrite the header:
    an external data file (CVE-2024-32498) would be read, or resized, as
    the host file it names; unknown incompatible features are refused too.
    The backing file is not judged here: every opener states it (spec()).
    """
    if fmt != 'qcow2':
        return
    try:
        inspector = format_inspector.QcowInspector.from_file(path)
        inspector.check_data_file()
        inspector.check_unknown_features()
    except (format_inspector.SafetyViolation,
            format_inspector.ImageFormatError) as e:
        raise exception.UnsafeInstanceDisk(instance=instance, path=path,
                                           reason=str(e))


def spec(path, fmt, backing=None):
    """QEMU's JSON block spec for a disk a guest may have written.

    Every driver is named (nothing is probed) and the chain is stated: the
    qcow2 overlay's backing is the raw file ``backing`` (the recorded base)
    or none at all; whatever the header names is never opened.
    """
    node = {'driver': fmt, 'file': {'driver': 'file', 'filename': path}}
    if fmt == 'qcow2':
        node['backing'] = backing_node(backing)
    return node


def backing_node(backing):
    """QEMU's node for the raw base ``backing`` (None: no backing)."""
    if backing is None:
        return None
    return {'driver': 'raw', 'read-only': True,
            'file': {'driver': 'file', 'filename': backing}}


def json_filename(path, fmt, backing=None):
    """``json:`` filename of spec() for qemu-img."""
    return 'json:' + json.dumps(spec(path, fmt, backing))


def sandboxed_filename(run, path, fmt, backing=None, write=False):
    """json_filename() for a tool of sandbox.Run ``run``.

    The sandbox holds only the disk and its stated base, handed over as
    descriptors: whatever else a header names cannot even be opened.
    """
    return json_filename(run.file(path, write=write), fmt,
                         run.file(backing) if backing else None)
