"""Libvirt domain XML for direct kernel boot of an AMI triplet.

The XML is built with lxml elements, never by string formatting: values come
from image properties and users, and must not be able to change the
document's structure.
"""

import dataclasses
import fnmatch
import shlex

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


def _param_name(param):
    return param.split('=', 1)[0]


def build_cmdline(default, os_command_line=None, boot_params=(),
                  allowed=(), instance='?'):
    """Kernel command line: the image's or the default, plus user params.

    ``os_command_line`` (an image property) replaces the default as nova
    does. Per-instance ``boot_params`` come from users, so each must match
    the operator's allow-list by name (shell patterns); the denied ones are
    named in the error so the user can see what to drop.
    """
    base = os_command_line if os_command_line else default
    params = []
    for item in boot_params:
        params.extend(shlex.split(item) if isinstance(item, str) else item)
    denied = [p for p in params
              if not any(fnmatch.fnmatchcase(_param_name(p), pat)
                         for pat in allowed)]
    if denied:
        raise exception.BootParameterDenied(instance=instance,
                                            params=', '.join(denied))
    for p in params:
        # A parameter value cannot carry whitespace or quotes into the
        # line: shlex already split on whitespace; quotes would let a
        # value span words when the kernel parses it.
        if any(c in p for c in '"\'\n\r\t'):
            raise exception.BootParameterDenied(instance=instance, params=p)
    return ' '.join([base.strip()] + params)


def _sub(parent, tag, text=None, **attrs):
    el = etree.SubElement(parent, tag, {k.rstrip('_'): str(v)
                                        for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'


def build_domain_xml(spec):
    """Return the domain XML (str) for a DomainSpec."""
    nsmap = {'qemu': QEMU_NS} if (spec.network.kind == 'user'
                                  and spec.network.hostfwd
                                  and not spec.network.passt) else None
    dom = etree.Element('domain', {'type': spec.virt_type}, nsmap=nsmap)
    _sub(dom, 'name', spec.name)
    _sub(dom, 'uuid', spec.uuid)
    if spec.metadata:
        md = _sub(dom, 'metadata')
        amd = etree.SubElement(
            md, '{https://opendev.org/nova-amiboot}instance',
            nsmap={'amiboot': 'https://opendev.org/nova-amiboot'})
        for k, v in sorted(spec.metadata.items()):
            _sub(amd, '{https://opendev.org/nova-amiboot}' + k, v)
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
        raise ValueError("unknown network kind %r" % net.kind)

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
