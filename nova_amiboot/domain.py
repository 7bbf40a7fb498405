"""Libvirt domain XML for direct kernel boot of an AMI triplet.

The XML is built with lxml elements, never by string formatting: values come
from image properties and users, and must not be able to change the
document's structure.
"""

import dataclasses
import fnmatch
import re

from lxml import etree
from oslo_log import log as logging

from nova_amiboot import exception

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Network:
    """How the guest's virtio NIC is connected.

    kind: 'user' (QEMU user-mode networking), 'bridge' or 'none'.
    hostfwd: for 'user', (host_port, guest_port) pairs forwarded from
    127.0.0.1 on the host.
    passt: forward through libvirt's passt backend (libvirt >= 9.2 with
    passt installed) instead of QEMU's own user-mode netdev.
    """
    kind: str = 'user'
    bridge: str = None
    tap: str = None
    mac: str = None
    hostfwd: tuple = ()
    passt: bool = False


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who made a domain: the state directory and the instance's uuid.

    Written into the domain's <metadata>; the embedded route acts only on
    domains whose mark is its own, so a second state directory (or any
    other libvirt user) with a domain of the same name is never touched.
    """
    state_dir: str
    instance: str


@dataclasses.dataclass
class DomainSpec:
    name: str
    uuid: str
    memory_mb: int
    vcpus: int
    kernel: str
    initrd: str
    cmdline: str
    disk_path: str
    console_log: str
    disk_format: str = 'qcow2'
    virt_type: str = 'kvm'
    network: Network = dataclasses.field(default_factory=Network)
    vnc: bool = False
    metadata: dict = dataclasses.field(default_factory=dict)
    owner: Owner = None
    # The raw base under a qcow2 overlay, stated in the XML so that libvirt
    # neither probes the chain nor relabels the shared base (see below).
    backing_file: str = None
    backing_format: str = 'raw'


# --- the kernel command line ---------------------------------------------
#
# Per-instance parameters come from users (the CLI, instance metadata, user
# data) and go to a kernel that splits its command line on its own idea of
# whitespace (space, \t, \n, \v, \f, \r and, in its Latin-1 ctype, 0xA0),
# honours double quotes (a quoted value may hold spaces, so one "parameter"
# can carry another) and stops at NUL. Initramfs and init scripts then
# split /proc/cmdline again, often in a shell. So a parameter is accepted
# only when it is made of the printable-ASCII characters below, which
# include none of those separators, no quotes, no backslash and nothing a
# shell would expand; everything else is refused, not repaired.
#
# Splitting rule, chosen on purpose: a string of parameters is split on the
# ASCII space only, with no quote or escape processing (shlex removed
# quotes and backslashes and so let 'console="ttyS0 init=/bin/sh"' through
# as one word), and every resulting token must match the grammar. A list
# item is one token and is never split. The tokens that pass are joined
# with single spaces: the checked strings are exactly what reaches the
# domain XML.
#
# One '=' at most: the kernel, dracut and systemd all cut a parameter at its
# first '=', but a second one only invites readers that cut elsewhere.
PARAM_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}')
PARAM_VALUE = re.compile(r'[A-Za-z0-9_.,:/+@%~-]{0,255}')
# x86 COMMAND_LINE_SIZE is 2048 bytes with the final NUL; the kernel cuts
# a longer line silently, which could drop the last parameters.
MAX_CMDLINE = 2047


def shown(text, limit=60):
    """``text`` for an error message: escaped (one line), bounded."""
    if not isinstance(text, str):
        text = repr(text)
    shown = text.encode('unicode_escape').decode('ascii')
    return shown if len(shown) <= limit else shown[:limit] + '...'


def split_params(item):
    """Tokens of one boot-parameter item (str: split on ' ' only)."""
    if isinstance(item, str):
        return [t for t in item.split(' ') if t]
    if isinstance(item, (list, tuple)):
        return list(item)
    return [item]


def param_name(token, instance='?'):
    """The validated name of one parameter token, or InvalidBootParameter.

    The whole token is checked: name and value each against their
    character set; the kernel's own rule splits at the first '='.
    """
    if not isinstance(token, str):
        raise exception.InvalidBootParameter(
            instance=instance, param=shown(token), reason="not text")
    name, sep, value = token.partition('=')
    if not PARAM_NAME.fullmatch(name):
        raise exception.InvalidBootParameter(
            instance=instance, param=shown(token),
            reason="a name is a letter or digit then up to 63 letters, "
                   "digits, '_', '.' or '-'")
    if sep and not PARAM_VALUE.fullmatch(value):
        raise exception.InvalidBootParameter(
            instance=instance, param=shown(token),
            reason="a value is at most 255 of the characters "
                   "A-Z a-z 0-9 _ . , : / + @ % ~ - (no spaces, quotes, "
                   "backslashes, control characters or second '=')")
    return name


def _kernel_name(name):
    # The kernel treats '-' and '_' in parameter names as the same
    # character (parameq()), so the allow-list does too.
    return name.replace('-', '_')


def _allowed(name, allowed):
    name = _kernel_name(name)
    return any(fnmatch.fnmatchcase(name, _kernel_name(pat))
               for pat in allowed)


def _check_line(line, what, instance, image):
    """The base line must be text lxml can write and the kernel takes."""
    if not isinstance(line, str):
        raise exception.InvalidCommandLine(
            instance=instance, image=image,
            reason="%s is not text" % what)
    try:
        # lxml decides what XML can hold (no NUL, no control characters
        # other than tab and newlines, no surrogates).
        etree.Element('cmdline').text = line
    except ValueError:
        raise exception.InvalidCommandLine(
            instance=instance, image=image,
            reason="%s %s holds characters XML cannot carry (NUL or "
                   "control characters)" % (what, shown(line)))


def build_cmdline(default, os_command_line=None, boot_params=(),
                  allowed=(), instance='?', image='?'):
    """Kernel command line: the image's or the default, plus user params.

    ``os_command_line`` (an image property) replaces the default as nova
    does; it is the image owner's and only has to be writable as XML.
    Per-instance ``boot_params`` come from users: each item is split on
    ASCII spaces, every token must match the parameter grammar above and
    its name the operator's allow-list (shell patterns); the refused ones
    are named in the error so the user can see what to drop. Raises
    before any disk work is done, with the instance (and image) named.
    """
    if os_command_line:
        base, what = os_command_line, "os_command_line"
    else:
        base, what = default, "the default kernel command line"
    _check_line(base, what, instance, image)
    if len(base.strip().encode('utf-8')) > MAX_CMDLINE:
        raise exception.InvalidCommandLine(
            instance=instance, image=image,
            reason="%s is over the kernel's limit of %d bytes"
                   % (what, MAX_CMDLINE))
    params = []
    for item in boot_params:
        params.extend(split_params(item))
    names = [param_name(p, instance) for p in params]
    denied = [p for p, n in zip(params, names) if not _allowed(n, allowed)]
    if denied:
        raise exception.BootParameterDenied(instance=instance,
                                            params=', '.join(denied))
    line = ' '.join([base.strip()] + params)
    size = len(line.encode('utf-8'))
    if size > MAX_CMDLINE:
        raise exception.InvalidBootParameter(
            instance=instance, param=shown(' '.join(params)),
            reason="the kernel command line would be %d bytes, over the "
                   "kernel's limit of %d" % (size, MAX_CMDLINE))
    return line


def _sub(parent, tag, text=None, **attrs):
    el = etree.SubElement(parent, tag, {k.rstrip('_'): str(v)
                                        for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'
AMIBOOT_NS = 'https://opendev.org/nova-amiboot'
OWNER_NS = 'https://opendev.org/nova-amiboot/owner'


def _owner_element(owner):
    el = etree.Element('{%s}owner' % OWNER_NS, nsmap={'owner': OWNER_NS})
    el.set('state-dir', owner.state_dir)
    el.set('instance', owner.instance)
    return el


def parse_owner(text):
    """The Owner in a metadata element (as libvirt returns it), or None."""
    if not text:
        return None
    try:
        el = etree.fromstring(text.encode('utf-8'),
                              etree.XMLParser(resolve_entities=False,
                                              no_network=True))
    except etree.XMLSyntaxError:
        return None
    # libvirt's metadata API, asked for OWNER_NS, returns the element
    # without its namespace; a whole domain document keeps it.
    if el.tag not in ('owner', '{%s}owner' % OWNER_NS):
        el = el.find('.//{%s}owner' % OWNER_NS)
    if el is None or not el.get('state-dir') or not el.get('instance'):
        return None
    return Owner(el.get('state-dir'), el.get('instance'))


def set_owner(xml, owner, instance='?'):
    """``xml`` (a domain) with ``owner``'s mark in its <metadata>."""
    try:
        dom = etree.fromstring(xml.encode('utf-8'),
                               etree.XMLParser(resolve_entities=False,
                                               no_network=True))
        md = dom.find('metadata')
        if md is None:
            md = etree.Element('metadata')
            uuid_el = dom.find('uuid')
            anchor = uuid_el if uuid_el is not None else dom.find('name')
            anchor.addnext(md)
        for old in md.findall('{%s}owner' % OWNER_NS):
            md.remove(old)
        md.append(_owner_element(owner))
    except (ValueError, etree.LxmlError) as e:
        raise exception.InvalidDomain(instance=instance, reason=str(e))
    return etree.tostring(dom, pretty_print=True, encoding='unicode')


def _backing_store(disk, backing_file, backing_format):
    # The raw base is shared by every instance made from the image.
    # libvirt's DAC driver would chown each image of the chain to the
    # QEMU user while the guest runs (the base became libvirt-qemu 0644:
    # writable by any guest's QEMU). relabel='no' leaves it root-owned
    # 0644, which QEMU can read and not write; only the instance's own
    # overlay is relabelled. The chain is stated, not probed, and ends
    # here (the empty backingStore).
    for old in disk.findall('backingStore'):
        disk.remove(old)
    store = etree.Element('backingStore', type='file')
    _sub(store, 'format', type=backing_format)
    src = _sub(store, 'source', file=backing_file)
    _sub(src, 'seclabel', model='dac', relabel='no')
    _sub(store, 'backingStore')
    disk.find('source').addnext(store)


def add_backing_store(xml, disk_path, backing_file, backing_format='raw',
                      instance='?'):
    """``xml`` with the shared base of disk ``disk_path`` left unlabelled.

    For domain XML written by someone else (nova's): the same
    <backingStore> that build_domain_xml() writes for its own domains.
    """
    try:
        dom = etree.fromstring(xml.encode('utf-8'),
                               etree.XMLParser(resolve_entities=False,
                                               no_network=True))
        for disk in dom.iterfind('devices/disk'):
            src = disk.find('source')
            if src is not None and src.get('file') == disk_path:
                _backing_store(disk, backing_file, backing_format)
                break
        else:
            raise ValueError("no disk %s" % shown(disk_path))
    except (ValueError, etree.LxmlError) as e:
        raise exception.InvalidDomain(instance=instance, reason=str(e))
    return etree.tostring(dom, pretty_print=True, encoding='unicode')


def build_domain_xml(spec):
    """Return the domain XML (str) for a DomainSpec.

    A value lxml cannot write (NUL, control characters) or an unknown
    network kind is an InvalidDomain naming the instance.
    """
    try:
        return _build_domain_xml(spec)
    except ValueError as e:
        raise exception.InvalidDomain(instance=spec.name, reason=str(e))


def _build_domain_xml(spec):
    nsmap = {'qemu': QEMU_NS} if (spec.network.kind == 'user'
                                  and spec.network.hostfwd
                                  and not spec.network.passt) else None
    dom = etree.Element('domain', {'type': spec.virt_type}, nsmap=nsmap)
    _sub(dom, 'name', spec.name)
    _sub(dom, 'uuid', spec.uuid)
    if spec.metadata or spec.owner:
        md = _sub(dom, 'metadata')
    if spec.metadata:
        amd = etree.SubElement(md, '{%s}instance' % AMIBOOT_NS,
                               nsmap={'amiboot': AMIBOOT_NS})
        for k, v in sorted(spec.metadata.items()):
            _sub(amd, '{%s}%s' % (AMIBOOT_NS, k), v)
    if spec.owner:
        md.append(_owner_element(spec.owner))
    _sub(dom, 'memory', spec.memory_mb * 1024, unit='KiB')
    _sub(dom, 'vcpu', spec.vcpus)
    os_el = _sub(dom, 'os')
    _sub(os_el, 'type', 'hvm', arch='x86_64', machine='pc')
    _sub(os_el, 'kernel', spec.kernel)
    _sub(os_el, 'initrd', spec.initrd)
    _sub(os_el, 'cmdline', spec.cmdline)
    features = _sub(dom, 'features')
    # ACPI: the guest powers off on request and sees PCI hotplug.
    _sub(features, 'acpi')
    _sub(features, 'apic')
    _sub(dom, 'clock', offset='utc')
    _sub(dom, 'on_poweroff', 'destroy')
    _sub(dom, 'on_reboot', 'restart')
    _sub(dom, 'on_crash', 'destroy')

    dev = _sub(dom, 'devices')
    disk = _sub(dev, 'disk', type='file', device='disk')
    _sub(disk, 'driver', name='qemu', type=spec.disk_format, cache='none',
         discard='unmap')
    _sub(disk, 'source', file=spec.disk_path)
    if spec.backing_file:
        _backing_store(disk, spec.backing_file, spec.backing_format)
    _sub(disk, 'target', dev='vda', bus='virtio')

    net = spec.network
    if net.kind == 'bridge':
        iface = _sub(dev, 'interface', type='ethernet')
        _sub(iface, 'target', dev=net.tap, managed='no')
        if net.mac:
            _sub(iface, 'mac', address=net.mac)
        _sub(iface, 'model', type='virtio')
    elif net.kind == 'user' and (net.passt or not net.hostfwd):
        iface = _sub(dev, 'interface', type='user')
        if net.passt:
            _sub(iface, 'backend', type='passt')
        if net.mac:
            _sub(iface, 'mac', address=net.mac)
        _sub(iface, 'model', type='virtio')
        for host_port, guest_port in net.hostfwd:
            fwd = _sub(iface, 'portForward', proto='tcp',
                       address='127.0.0.1')
            _sub(fwd, 'range', start=host_port, to=guest_port)
    elif net.kind != 'none' and net.kind != 'user':
        raise ValueError("unknown network kind %s" % shown(net.kind))

    serial = _sub(dev, 'serial', type='pty')
    _sub(serial, 'log', file=spec.console_log, append='on')
    _sub(serial, 'target', port=0)
    console = _sub(dev, 'console', type='pty')
    _sub(console, 'target', type='serial', port=0)
    _sub(dev, 'memballoon', model='virtio')
    if spec.vnc:
        graphics = _sub(dev, 'graphics', type='vnc', autoport='yes',
                        listen='127.0.0.1')
        _sub(graphics, 'listen', type='address', address='127.0.0.1')
        _sub(dev, 'video').append(etree.Element('model', type='virtio'))

    if nsmap:
        # Debian 12's libvirt (9.0) has no passt backend, so port
        # forwarding uses QEMU's own user-mode netdev with hostfwd,
        # passed through libvirt's qemu namespace.
        fwd = ''.join(',hostfwd=tcp:127.0.0.1:%d-:%d' % (h, g)
                      for h, g in net.hostfwd)
        mac = net.mac or '52:54:00:12:34:56'
        cl = etree.SubElement(dom, '{%s}commandline' % QEMU_NS)
        # A fixed high slot: libvirt assigns its own devices from slot 2 up
        # and does not know about this one.
        for arg in ('-netdev', 'user,id=amibootnet0' + fwd,
                    '-device', 'virtio-net-pci,netdev=amibootnet0,mac=%s,'
                    'bus=pci.0,addr=0x1e' % mac):
            etree.SubElement(cl, '{%s}arg' % QEMU_NS, value=arg)
    return etree.tostring(dom, pretty_print=True, encoding='unicode')
