"""The appliance: a VM that reads an image's disk in its own kernel.

XFS, btrfs and LVM cannot be read from user space on the host, and the
host kernel never mounts a tenant's filesystem. As libguestfs does, the
project boots a small VM instead: a distribution kernel (Debian's cloud
kernel) and the appliance ARI (``ari.build_appliance``: the project's ARI
with the device mapper, every filesystem module, blkid and lvm), the
image's disk attached read-only as its only disk, no network. Its fixed
program (``ari.APPLIANCE_SCRIPT``) reports on the serial console; a hostile
filesystem can only crash or hang that VM, which is destroyed after a
time limit.

``probe`` says, for the disk, each partition and each logical volume:
the device, its filesystem type and UUID, whether it mounted, whether it
holds an operating system (``/etc/os-release`` and an init; for btrfs,
which subvolumes do), its PRETTY_NAME and the kernels at its top (a
``/boot`` partition). What it reports is parsed with positive grammars
and bounds: the VM's answers are the image's words.
"""

import base64
import binascii
import dataclasses
import os
import re
import shutil
import tempfile
import uuid
from xml.etree import ElementTree as ET

from oslo_log import log as logging

from nova_amiboot import exception
from nova_amiboot import guest

LOG = logging.getLogger(__name__)

BEGIN = 'AMIBOOT-APPLIANCE-BEGIN'
END = 'AMIBOOT-APPLIANCE-END'
_LINE = re.compile(r'^AMIBOOT-APPLIANCE ([a-z]+)([0-9]{1,3}) '
                   r'([A-Za-z0-9+/=]{0,8192})\r?$')
_DEV = re.compile(r'^/dev/(vda[0-9]{0,3}|mapper/[A-Za-z0-9+_.-]{1,128})$')
_TYPE = re.compile(r'^[A-Za-z0-9_]{0,32}$')
_UUID = re.compile(r'^[A-Za-z0-9-]{0,64}$')
_KERNEL = re.compile(r'^vmlinuz-[A-Za-z0-9._+~-]{1,128}$')
_SUBVOL = re.compile(r'^[A-Za-z0-9@._+/-]{1,255}$')
MAX_DEVICES = 128
MEMORY_MB = 768
TIMEOUT = 300


@dataclasses.dataclass
class Device:
    path: str
    fstype: str = ''
    uuid: str = ''
    mounted: bool = False
    root: bool = False
    os_name: str = ''
    subvolumes: list = dataclasses.field(default_factory=list)
    kernels: list = dataclasses.field(default_factory=list)

    @property
    def partition(self):
        m = re.match(r'^/dev/vda([0-9]+)$', self.path)
        return int(m.group(1)) if m else None


def _fail(image, reason):
    raise exception.InvalidImage(image=image, reason=reason)


def _text(value, image):
    try:
        return base64.b64decode(value, validate=True).decode('utf-8')
    except (binascii.Error, UnicodeDecodeError):
        _fail(image, "the appliance's answer is not base64 text")


def parse(text, image):
    """The devices of an appliance console ``text``; refuses what is off."""
    if BEGIN not in text or END not in text:
        _fail(image, "the appliance did not finish reading the disk")
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    devices = {}
    for line in body.splitlines():
        if not line.startswith('AMIBOOT-APPLIANCE '):
            continue        # the kernel's own lines
        m = _LINE.match(line)
        if not m:
            _fail(image, "the appliance's answer has a line out of grammar")
        key, n = m.group(1), int(m.group(2))
        value = _text(m.group(3), image)
        if key == 'dev':
            if not _DEV.fullmatch(value) or len(devices) >= MAX_DEVICES:
                _fail(image, "the appliance names a device out of grammar")
            devices[n] = Device(value)
            continue
        dev = devices.get(n)
        if dev is None:
            _fail(image, "the appliance's answer names no device first")
        if key == 'type' and _TYPE.fullmatch(value):
            dev.fstype = value
        elif key == 'uuid' and _UUID.fullmatch(value):
            dev.uuid = value
        elif key == 'mount' and value in ('ok', 'failed'):
            dev.mounted = value == 'ok'
        elif key == 'root' and value == '/':
            dev.root = True
        elif key == 'os':
            m = re.fullmatch(r'PRETTY_NAME="?([ -~]{0,128}?)"?', value)
            dev.os_name = m.group(1) if m else ''
        elif key == 'subvol' and _SUBVOL.fullmatch(value) and \
                '..' not in value.split('/'):
            dev.subvolumes.append(value)
        elif key == 'kernels':
            names = value.split()
            if not all(_KERNEL.fullmatch(k) for k in names):
                _fail(image, "the appliance names a kernel out of grammar")
            dev.kernels = sorted(names)
        else:
            _fail(image, "the appliance's answer has a %s value out of "
                  "grammar" % key)
    return [devices[n] for n in sorted(devices)]


def domain_xml(name, kernel, initrd, disk, disk_format, log,
               virt_type='qemu', memory_mb=MEMORY_MB):
    """The appliance's domain: the image read-only, no network."""
    dom = ET.Element('domain', type=virt_type)
    ET.SubElement(dom, 'name').text = name
    ET.SubElement(dom, 'memory', unit='MiB').text = str(memory_mb)
    ET.SubElement(dom, 'vcpu').text = '1'
    os_ = ET.SubElement(dom, 'os')
    ET.SubElement(os_, 'type', arch='x86_64', machine='pc').text = 'hvm'
    ET.SubElement(os_, 'kernel').text = kernel
    ET.SubElement(os_, 'initrd').text = initrd
    ET.SubElement(os_, 'cmdline').text = (
        'console=ttyS0 amiboot.appliance=probe panic=-1 quiet')
    ET.SubElement(dom, 'on_reboot').text = 'destroy'
    ET.SubElement(dom, 'on_crash').text = 'destroy'
    devices = ET.SubElement(dom, 'devices')
    d = ET.SubElement(devices, 'disk', type='file', device='disk')
    ET.SubElement(d, 'driver', name='qemu', type=disk_format)
    ET.SubElement(d, 'source', file=disk)
    ET.SubElement(d, 'target', dev='vda', bus='virtio')
    ET.SubElement(d, 'readonly')
    serial = ET.SubElement(devices, 'serial', type='file')
    ET.SubElement(serial, 'source', path=log)
    ET.SubElement(serial, 'target', port='0')
    ET.SubElement(devices, 'memballoon', model='none')
    return ET.tostring(dom, encoding='unicode')


def probe(kernel, initrd, disk, disk_format, image=None, work=None,
          virt_type='qemu', timeout=TIMEOUT, host=None):
    """Boot the appliance on ``disk``; return its list of Devices.

    ``disk``/``disk_format``: the image, inspected already (no backing
    file). The domain is always removed; nothing is left in ``work``.
    """
    image = image or disk
    if disk_format not in ('raw', 'qcow2'):
        _fail(image, "the appliance reads raw or qcow2, not %s" % disk_format)
    scratch = tempfile.mkdtemp(prefix='amiboot-appliance-', dir=work)
    # QEMU (its own user) writes the log and reads the kernel and ARI.
    os.chmod(scratch, 0o755)
    log = os.path.join(scratch, 'console.log')
    name = 'amiboot-appliance-%s' % uuid.uuid4().hex[:12]
    own = host is None
    host = host or guest.Host()
    try:
        host.define_and_start(domain_xml(name, kernel, initrd, disk,
                                         disk_format, log, virt_type))
        try:
            text = guest.wait_for_console(host, name, log,
                                          lambda t: END in t, timeout)
        except exception.GuestError as e:
            _fail(image, "the appliance did not read the disk: %s"
                  % e.kwargs.get('reason', e))
        finally:
            host.destroy(name)
        devices = parse(text, image)
    finally:
        if own:
            host.close()
        shutil.rmtree(scratch, ignore_errors=True)
    LOG.info("Image %(image)s, as the appliance read it: %(devs)s",
             {'image': image, 'devs': ', '.join(
                 '%s %s%s' % (d.path, d.fstype or '?',
                              ' (root)' if d.root else '')
                 for d in devices)})
    return devices


def find_root(devices, image):
    """The device holding the operating system (refused if none or many)."""
    roots = [d for d in devices if d.root or d.subvolumes]
    if not roots:
        _fail(image, "no Linux root filesystem found (looked for "
              "/etc/os-release and an init on %s)" % (', '.join(
                  '%s (%s)' % (d.path, d.fstype or 'unknown')
                  for d in devices) or 'no device'))
    if len(roots) > 1:
        _fail(image, "several root filesystems: %s"
              % ', '.join(d.path for d in roots))
    return roots[0]
