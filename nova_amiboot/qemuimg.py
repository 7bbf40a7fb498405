"""``qemu-img info``: one way to run it and one way to read its answer.

qemu-img parses the image's header, which may be a tenant's or a guest's:
it runs in the sandbox (sandbox.py), never probing (``-f`` is always
given), its output bounded; the JSON is read by oslo.utils'
``QemuImgInfo``.
"""

from oslo_utils import imageutils
from oslo_utils import units

from nova_amiboot import sandbox

# qemu-img's JSON for one image is a few KiB; snapshots add ~200 bytes each.
OUT_LIMIT = 1 * units.Mi


def parse(text):
    """A ``QemuImgInfo`` of qemu-img's JSON ``text``; ValueError if bad."""
    try:
        info = imageutils.QemuImgInfo(text, format='json')
    except (AttributeError, TypeError) as e:
        raise ValueError("qemu-img info: not an image description: %s" % e)
    if not isinstance(info.virtual_size, int) or info.file_format is None:
        raise ValueError("qemu-img info: not an image description")
    return info


def data_file(info):
    """The external data file a qcow2 ``info`` names, or None."""
    specific = info.format_specific or {}
    return (specific.get('data') or {}).get('data-file')


def info(path, fmt, image=None, conf=None, force_share=False,
         out_limit=OUT_LIMIT, **limit_args):
    """``qemu-img info`` of ``path`` read as ``fmt``, in the sandbox.

    ``force_share``: ``-U``, for a disk a guest's QEMU may hold open.
    ``limit_args``: the sandbox's limits (timeout, cpu, memory_mb, ...).
    Raises the sandbox's errors (CommandFailed, ...) and ValueError when
    the answer is cut short or is not an image description.
    """
    cmd = ['qemu-img', 'info'] + (['-U'] if force_share else []) + [
        '-f', fmt, '--output=json', path]
    res = sandbox.run(cmd, image or path, conf, files=[path],
                      out_limit=out_limit, **limit_args)
    return result(res)


def result(res):
    """The ``QemuImgInfo`` of a sandbox Result of ``qemu-img info``."""
    if res.truncated:
        raise ValueError("qemu-img info: output over %d bytes"
                         % len(res.out))
    return parse(res.text)
