"""Format safety for untrusted image files (AMI, AKI and ARI alike).

Two independent looks at every file before it may enter the cache:

1. oslo.utils' format_inspector reads the headers itself and says what the
   content really is, so a qcow2 or VMDK uploaded as "raw" is caught
   (CVE-2024-40767), and runs its safety checks (backing files, data-file,
   VMDK descriptors: CVE-2022-47951, CVE-2024-32498).
2. ``qemu-img info`` with an explicit ``-f`` (never probing: CVE-2014-0134,
   CVE-2026-24708) under CPU and address-space limits (CVE-2015-5162), for
   the virtual size and a second opinion on backing and data files.

A kernel or ramdisk is not a disk image: QEMU reads it as a plain file. Its
only requirement is not to be a container format that a tool would follow
elsewhere; a bzImage's boot sector (0x55AA) makes the inspector say "gpt",
which is harmless for a kernel and accepted.
"""

import collections
import os

from oslo_log import log as logging
from oslo_utils.imageutils import format_inspector
from oslo_utils import units

from nova_amiboot import exception
from nova_amiboot import qemuimg

LOG = logging.getLogger(__name__)

# What each claimed disk_format may contain, as the inspector names it.
_ALLOWED_CONTENT = {
    'aki': {'raw', 'gpt'},
    'ari': {'raw'},
    'ami': {'raw'},
    'raw': {'raw'},
    'qcow2': {'qcow2'},
}


class Inspection(object):
    def __init__(self, fmt, virtual_size, actual_size):
        self.format = fmt
        self.virtual_size = virtual_size
        self.actual_size = actual_size


def _qemu_img_info(path, fmt, image, conf):
    cpu = conf.amiboot.qemu_img_cpu_seconds
    try:
        # In the sandbox, under its CPU and address-space limits (QEMU's
        # tools get twice memory_mb); the CPU limit does not stop a run
        # that waits (on I/O, a lock): a wall-clock limit does.
        return qemuimg.info(
            path, fmt, image, conf, cpu=cpu, timeout=2 * cpu + 30,
            memory_mb=max(32, conf.amiboot.qemu_img_address_space_mb // 2),
            timeout_name='2 x [amiboot] qemu_img_cpu_seconds + 30')
    except exception.CommandFailed as e:
        raise exception.UnsafeImage(image=image,
                                    reason="qemu-img info failed: %s" % e)


def _detect(path, claimed, image):
    """The content's format per format_inspector, if ``claimed`` admits it.

    Returns (inspector or None, detected format name).
    """
    if claimed not in _ALLOWED_CONTENT:
        raise exception.InvalidImage(
            image=image, reason="disk_format %s is not supported by the AMI "
            "boot method (use ami, aki, ari, raw or qcow2)" % claimed)
    try:
        inspector = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as e:
        raise exception.UnsafeImage(image=image,
                                    reason="ambiguous format: %s" % e)
    detected = str(inspector) if inspector else 'raw'
    if detected not in _ALLOWED_CONTENT[claimed]:
        if claimed == 'ami' and detected == 'gpt':
            detected = ("a whole disk with a partition table (an AMI is a "
                        "bare filesystem)")
        raise exception.ImageFormatMismatch(image=image, claimed=claimed,
                                            detected=detected)
    return inspector, detected


# Bases that passed recheck() in this process, by what identifies their
# bytes: the same file unchanged need not be read again. Any write to a
# file moves its ctime, which only root can set back, and only root
# writes in the cache.
_RECHECKED = collections.OrderedDict()
_RECHECKED_MAX = 512


def _identity(path, claimed):
    st = os.stat(path)
    return (path, claimed, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def recheck(path, claimed, image, touch=False):
    """Re-inspect a base already in the cache (headers only, in-process).

    The full check, qemu-img included, ran when the base was fetched; this
    catches a base that entered the cache under older rules
    (CVE-2024-40767) without a qemu-img run on every spawn. A base found
    good is not read again in this process until it changes. ``touch``:
    then set its times to now (the cache's mark of use), which is not a
    change of its bytes.
    """
    try:
        key = _identity(path, claimed)
    except OSError:
        key = None
    if key is None or key not in _RECHECKED:
        _detect(path, claimed, image)
    _RECHECKED.pop(key, None)
    if touch:
        os.utime(path)
        try:
            key = _identity(path, claimed)
        except OSError:
            key = None
    if key is not None:
        _RECHECKED[key] = True
        while len(_RECHECKED) > _RECHECKED_MAX:
            _RECHECKED.popitem(last=False)


def inspect(path, claimed, image, conf):
    """Check ``path`` claimed to be ``claimed``; return an Inspection.

    ``claimed`` is the image's disk_format (ami, aki, ari, raw or qcow2).
    Raises an UnsafeImage subclass naming ``image`` on any refusal.
    """
    inspector, detected = _detect(path, claimed, image)
    if claimed != 'aki':
        # The kernel's boot sector trips the MBR check although QEMU never
        # reads it as a disk (and 'aki' admits no container format);
        # every other part must pass every check.
        try:
            inspector.safety_check()
        except (format_inspector.SafetyCheckFailed,
                format_inspector.ImageFormatError) as e:
            raise exception.UnsafeImage(image=image, reason=str(e))

    qfmt = 'qcow2' if detected == 'qcow2' else 'raw'
    info = _qemu_img_info(path, qfmt, image, conf)
    if info.file_format != qfmt:
        raise exception.ImageFormatMismatch(image=image, claimed=qfmt,
                                            detected=info.file_format)
    if info.backing_file:
        raise exception.UnsafeImage(
            image=image, reason="it has a backing file (%s)"
            % info.backing_file)
    data_file = qemuimg.data_file(info)
    if data_file:
        raise exception.UnsafeImage(
            image=image, reason="it has an external data file (%s)"
            % data_file)
    limit = conf.amiboot.max_image_virtual_size_gb * units.Gi
    vsize = info.virtual_size
    if vsize > limit:
        raise exception.ImageTooLarge(image=image, size=vsize, limit=limit)
    LOG.debug("Image %(image)s at %(path)s: %(fmt)s, virtual size %(size)d",
              {'image': image, 'path': path, 'fmt': qfmt, 'size': vsize})
    return Inspection(qfmt, vsize, int(info.disk_size or 0))
