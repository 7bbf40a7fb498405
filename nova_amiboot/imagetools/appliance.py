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
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from xml.etree import ElementTree as ET

from oslo_concurrency import lockutils
from oslo_log import log as logging

from nova_amiboot import exception
from nova_amiboot import guest
from nova_amiboot.imagetools import ari

LOG = logging.getLogger(__name__)

BEGIN = 'AMIBOOT-APPLIANCE-BEGIN'
END = 'AMIBOOT-APPLIANCE-END'
_LINE = re.compile(r'^AMIBOOT-APPLIANCE ([a-z]+)([0-9]{0,3}) '
                   r'([A-Za-z0-9+/=]{0,8192})\r?$')
_DEV = re.compile(r'^/dev/(vda[0-9]{0,3}|mapper/[A-Za-z0-9+_.-]{1,128})$')
_TYPE = re.compile(r'^[A-Za-z0-9_]{0,32}$')
_UUID = re.compile(r'^[A-Za-z0-9-]{0,64}$')
_KERNEL = re.compile(r'^vmlinuz-[A-Za-z0-9._+~-]{1,128}$')
_SUBVOL = re.compile(r'^[A-Za-z0-9@._+/-]{1,255}$')
_SIZE = re.compile(r'^[0-9]{1,20}$')
# An fstab line the appliance dropped: printable, bounded.
_FSTAB_LINE = re.compile(r'^[ -~\t]{1,512}$')
_RESULT = re.compile(r'^(ok|roots [0-9]{1,3}|copy|mount copy|mount boot|'
                     r'merge boot|fstab|mount transfer|transfer [A-Za-z0-9'
                     r'._+~-]{1,128}|unmount copy|type|mount base|'
                     r'mount snapshot|unmount snapshot)$')
# What the clean task may say it removed from a snapshot.
REMOVABLE = ('/root/.ssh/authorized_keys', '/etc/hostname',
             '/var/lib/cloud/seed/nocloud/meta-data',
             '/var/lib/cloud/seed/nocloud/user-data',
             '/var/lib/amiboot/provisioned')
MAX_DROPPED = 64
MAX_DEVICES = 128
MEMORY_MB = 768
TIMEOUT = 300


@dataclasses.dataclass
class Device:
    path: str
    fstype: str = ''
    uuid: str = ''
    mounted: bool = False
    size: int = 0
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


@dataclasses.dataclass
class Extracted:
    """What the appliance's extract task did (all from its console)."""
    result: str = ''
    fstype: str = ''
    uuid: str = ''
    subvol: str = ''
    size: int = 0
    boot: str = ''
    dropped: list = dataclasses.field(default_factory=list)
    removed: list = dataclasses.field(default_factory=list)


def _top(res, key, value, image):
    if key == 'result' and _RESULT.fullmatch(value):
        res.result = value
    elif key == 'fstype' and value in ('ext2', 'ext3', 'ext4', 'xfs',
                                       'btrfs'):
        res.fstype = value
    elif key == 'uuid' and _UUID.fullmatch(value):
        res.uuid = value
    elif key == 'subvol' and (value == '' or (
            _SUBVOL.fullmatch(value) and '..' not in value.split('/'))):
        res.subvol = value
    elif key == 'size' and _SIZE.fullmatch(value):
        res.size = int(value)
    elif key == 'boot' and value in ('kept', 'merged'):
        res.boot = value
    elif key == 'removed' and value in REMOVABLE:
        if value not in res.removed:
            res.removed.append(value)
    elif key == 'dropped' and _FSTAB_LINE.fullmatch(value) and \
            len(res.dropped) < MAX_DROPPED:
        res.dropped.append(value)
    else:
        _fail(image, "the appliance's answer has a %s value out of grammar"
              % key)


def parse(text, image, result=None):
    """The devices of an appliance console ``text``; refuses what is off.

    With ``result`` (an Extracted), the extract task's own lines fill it.
    """
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
        key, value = m.group(1), _text(m.group(3), image)
        if not m.group(2):
            if result is None:
                _fail(image, "the appliance's answer has a line out of "
                      "grammar")
            _top(result, key, value, image)
            continue
        n = int(m.group(2))
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
        elif key == 'size' and _SIZE.fullmatch(value):
            dev.size = int(value)
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
               virt_type='qemu', memory_mb=MEMORY_MB, task='probe',
               outputs=(), append=''):
    """The appliance's domain: the image read-only, no network.

    ``outputs``: raw files the appliance writes (vdb, vdc, ...); zeros and
    discards written to them become holes.
    """
    dom = ET.Element('domain', type=virt_type)
    ET.SubElement(dom, 'name').text = name
    ET.SubElement(dom, 'memory', unit='MiB').text = str(memory_mb)
    ET.SubElement(dom, 'vcpu').text = '1'
    os_ = ET.SubElement(dom, 'os')
    ET.SubElement(os_, 'type', arch='x86_64', machine='pc').text = 'hvm'
    ET.SubElement(os_, 'kernel').text = kernel
    ET.SubElement(os_, 'initrd').text = initrd
    ET.SubElement(os_, 'cmdline').text = (
        'console=ttyS0 amiboot.appliance=%s panic=-1 quiet%s'
        % (task, ' ' + append if append else ''))
    ET.SubElement(dom, 'on_reboot').text = 'destroy'
    ET.SubElement(dom, 'on_crash').text = 'destroy'
    devices = ET.SubElement(dom, 'devices')
    d = ET.SubElement(devices, 'disk', type='file', device='disk')
    ET.SubElement(d, 'driver', name='qemu', type=disk_format)
    ET.SubElement(d, 'source', file=disk)
    ET.SubElement(d, 'target', dev='vda', bus='virtio')
    ET.SubElement(d, 'readonly')
    for i, path in enumerate(outputs):
        d = ET.SubElement(devices, 'disk', type='file', device='disk')
        ET.SubElement(d, 'driver', name='qemu', type='raw', cache='none',
                      io='native', discard='unmap', detect_zeroes='unmap')
        ET.SubElement(d, 'source', file=path)
        ET.SubElement(d, 'target', dev='vd' + 'bcdefg'[i], bus='virtio')
    serial = ET.SubElement(devices, 'serial', type='file')
    ET.SubElement(serial, 'source', path=log)
    ET.SubElement(serial, 'target', port='0')
    ET.SubElement(devices, 'memballoon', model='none')
    return ET.tostring(dom, encoding='unicode')


def _check_source(disk, disk_format, image):
    if disk_format not in ('raw', 'qcow2'):
        _fail(image, "the appliance reads raw or qcow2, not %s" % disk_format)


def _boot(kernel, initrd, disk, disk_format, image, work, virt_type,
          timeout, host, task='probe', outputs=(), append=''):
    """Boot the appliance once; return its console text.

    The domain is always removed; its log goes with ``work``'s scratch.
    """
    scratch = tempfile.mkdtemp(prefix='amiboot-appliance-', dir=work)
    # QEMU (its own user) writes the log and reads the kernel and ARI.
    os.chmod(scratch, 0o755)
    log = os.path.join(scratch, 'console.log')
    name = 'amiboot-appliance-%s' % uuid.uuid4().hex[:12]
    own = host is None
    host = host or guest.Host()
    try:
        host.define_and_start(domain_xml(name, kernel, initrd, disk,
                                         disk_format, log, virt_type,
                                         task=task, outputs=outputs,
                                         append=append))
        try:
            return guest.wait_for_console(host, name, log,
                                          lambda t: END in t, timeout)
        except exception.GuestError as e:
            _fail(image, "the appliance did not read the disk: %s"
                  % e.kwargs.get('reason', e))
        finally:
            host.destroy(name)
    finally:
        if own:
            host.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _describe(devices):
    return ', '.join('%s %s%s' % (d.path, d.fstype or '?',
                                  ' (root)' if d.root else '')
                     for d in devices)


def probe(kernel, initrd, disk, disk_format, image=None, work=None,
          virt_type='qemu', timeout=TIMEOUT, host=None):
    """Boot the appliance on ``disk``; return its list of Devices.

    ``disk``/``disk_format``: the image, inspected already (no backing
    file). The domain is always removed; nothing is left in ``work``.
    """
    image = image or disk
    _check_source(disk, disk_format, image)
    text = _boot(kernel, initrd, disk, disk_format, image, work, virt_type,
                 timeout, host)
    devices = parse(text, image)
    LOG.info("Image %(image)s, as the appliance read it: %(devs)s",
             {'image': image, 'devs': _describe(devices)})
    return devices


# What the appliance mounts (read-only) to look for a root.
MOUNTABLE = ('ext2', 'ext3', 'ext4', 'xfs', 'btrfs')
# What is refused by name when no root was found, and how it is called.
UNREADABLE = {'crypto_LUKS': 'LUKS-encrypted', 'zfs_member': 'ZFS',
              'linux_raid_member': 'a RAID member',
              'LVM2_member': 'an LVM physical volume whose volume group '
                             'is not whole on this disk'}


def extract(kernel, initrd, disk, disk_format, output, transfer,
            image=None, work=None, virt_type='qemu', timeout=TIMEOUT,
            host=None):
    """Copy the image's root into ``output`` in the appliance.

    ``output``: a raw file as large as the source disk (sparse), written
    by the appliance and truncated here to the size it reports.
    ``transfer``: a raw file with an empty ext4 filesystem made here; the
    appliance puts the root's kernels (boot/), their modules (modules/)
    and os-release in it, for the host to read from user space.
    Returns (devices, Extracted).
    """
    image = image or disk
    _check_source(disk, disk_format, image)
    text = _boot(kernel, initrd, disk, disk_format, image, work, virt_type,
                 timeout, host, task='extract', outputs=(output, transfer))
    res = Extracted()
    devices = parse(text, image, res)
    LOG.info("Image %(image)s, as the appliance read it: %(devs)s",
             {'image': image, 'devs': _describe(devices)})
    if res.result.startswith('roots '):
        find_root(devices, image)      # names what it found, or not
    if res.result != 'ok':
        _fail(image, "the appliance could not copy its root: %s failed"
              % (res.result or 'the task'))
    if not res.fstype or not res.uuid or res.size <= 0:
        _fail(image, "the appliance did not say what it copied")
    if res.size > os.path.getsize(output):
        _fail(image, "the appliance reports a root larger than its disk")
    with open(output, 'r+b') as f:
        f.truncate(res.size)
    return devices, res


def find_root(devices, image):
    """The device holding the operating system (refused if none or many)."""
    roots = [d for d in devices if d.root or d.subvolumes]
    unreadable = [d for d in devices if d.fstype in UNREADABLE]
    if not roots and unreadable:
        _fail(image, "no Linux root filesystem found; %s cannot be read: "
              "LUKS, ZFS, RAID and a root spread over several disks cannot "
              "become an AMI" % ', '.join(
                  '%s (%s)' % (d.path, UNREADABLE[d.fstype])
                  for d in unreadable))
    if not roots:
        def what(d):
            if d.fstype in MOUNTABLE and not d.mounted:
                return '%s (%s: did not mount, damaged or spread over ' \
                    'several disks)' % (d.path, d.fstype)
            return '%s (%s)' % (d.path, d.fstype or 'unknown')
        _fail(image, "no Linux root filesystem found (looked for "
              "/etc/os-release and an init on %s)" % (
                  ', '.join(what(d) for d in devices) or 'no device'))
    count = sum(max(1, len(d.subvolumes)) if not d.root else
                1 + len(d.subvolumes) for d in roots)
    if count > 1:
        _fail(image, "several root filesystems: %s" % ', '.join(
            d.path + ''.join(' subvolume %s' % s for s in d.subvolumes)
            for d in roots))
    return roots[0]


def clean(kernel, initrd, base, snapshot, image, work=None,
          virt_type='qemu', timeout=TIMEOUT, host=None, subvol=''):
    """Take the provisioning's traces out of an XFS or btrfs snapshot.

    ``snapshot``: the flattened raw root, written in place (then trimmed,
    btrfs shrunk, and truncated here to the size reported); ``base``: the
    AMI it was made from, attached read-only to compare with; ``subvol``:
    the root subvolume of a btrfs AMI (its ``rootflags=subvol=``). Returns
    the Extracted (``removed``: what was taken out).
    """
    if subvol and (not _SUBVOL.fullmatch(subvol) or
                   '..' in subvol.split('/')):
        _fail(image, "root subvolume %r out of grammar" % subvol)
    text = _boot(kernel, initrd, base, 'raw', image, work, virt_type,
                 timeout, host, task='clean', outputs=(snapshot,),
                 append='amiboot.subvol=%s' % subvol if subvol else '')
    res = Extracted()
    parse(text, image, res)
    if res.result != 'ok':
        _fail(image, "the appliance could not clean the snapshot: %s failed"
              % (res.result or 'the task'))
    if res.size <= 0 or res.size > os.path.getsize(snapshot):
        _fail(image, "the appliance reports a snapshot size out of range")
    with open(snapshot, 'r+b') as f:
        f.truncate(res.size)
    return res


@dataclasses.dataclass
class Kit:
    """The appliance's kernel and ARI (readable by QEMU's user).

    And where and how to boot it: a libvirt connection (None: a new one)
    and the domain type.
    """
    kernel: str
    initrd: str
    virt_type: str = 'qemu'
    host: object = None


def prepare(kernel_package, cache_dir):
    """The Kit for a Debian kernel package, built once into ``cache_dir``.

    Its key is the package's and the ARI builder's content: a new package
    or a new builder makes a new kit.
    """
    if not kernel_package or not os.path.isfile(kernel_package):
        raise exception.InvalidInput(
            reason="appliance kernel package %s: no such file"
                   % kernel_package)
    h = hashlib.sha256()
    for path in (kernel_package, ari.__file__):
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    out = os.path.join(cache_dir, 'kit-' + h.hexdigest()[:16])
    kit = Kit(os.path.join(out, 'vmlinuz'), os.path.join(out, 'appliance.img'))
    with lockutils.lock('appliance-kit', lock_path=cache_dir, external=True):
        if os.path.exists(kit.initrd):
            return kit
        tmp = tempfile.mkdtemp(prefix='kit-', dir=cache_dir)
        try:
            pkg = os.path.join(tmp, 'pkg')
            ari.unpack_kernel_package(kernel_package, pkg)
            shutil.copyfile(ari.find_kernel_image(pkg),
                            os.path.join(tmp, 'vmlinuz'))
            ari.build_appliance(os.path.join(tmp, 'appliance.img'),
                                modules_dir=ari.find_modules_dir(pkg))
            shutil.rmtree(pkg)
            for name in ('vmlinuz', 'appliance.img'):
                os.chmod(os.path.join(tmp, name), 0o644)
            os.chmod(tmp, 0o755)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    LOG.info("Appliance kit for %(pkg)s built in %(dir)s",
             {'pkg': kernel_package, 'dir': out})
    return kit
