"""The embedded default's guest networks: user-mode, none, a bridge."""

import shutil
import socket
import uuid as uuid_mod

from nova_amiboot import domain
from nova_amiboot import exception
from nova_amiboot.privileged import net as priv_net


def free_port():
    """A free TCP port on 127.0.0.1 for the guest's forwarded SSH."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def parse_network(spec, instance='?'):
    """``--network``: ('user'|'none', None) or ('bridge', NAME).

    Checked before any work, so a bad one changes nothing.
    """
    if spec in ('user', 'none'):
        return spec, None
    if isinstance(spec, str) and spec.startswith('bridge:'):
        bridge = spec.split(':', 1)[1]
        try:
            priv_net.check_name(bridge)
        except exception.InvalidInterfaceName as e:
            raise exception.InvalidInput(
                reason="Instance %s: --network: %s" % (instance, e.message))
        return 'bridge', bridge
    raise exception.InvalidInput(
        reason="Instance %s: --network %s: use user, none or bridge:NAME"
               % (instance, domain.shown(spec)))


def guest_network(spec, inst_uuid, created, conn, netns=None):
    """The guest's network; ``created`` gets the tap we made, if any."""
    kind, bridge = parse_network(spec)
    mac = '52:54:00:%02x:%02x:%02x' % tuple(uuid_mod.UUID(
        inst_uuid).bytes[:3])
    if kind == 'none':
        return domain.Network('none'), {'kind': 'none'}
    if kind == 'user':
        port = free_port()
        passt = _has_passt(conn)
        return (domain.Network('user', hostfwd=((port, 22),), mac=mac,
                               passt=passt),
                {'kind': 'user', 'ssh_port': port, 'mac': mac,
                 'backend': 'passt' if passt else 'slirp'})
    tap = 'tap' + inst_uuid.replace('-', '')[:11]
    priv_net.ensure_bridge(bridge, netns=netns)
    if priv_net.add_tap(tap, bridge, netns=netns):
        created.append(tap)
    return (domain.Network('bridge', bridge=bridge, tap=tap, mac=mac),
            {'kind': 'bridge', 'bridge': bridge, 'tap': tap,
             'mac': mac})


def _has_passt(conn):
    # libvirt's passt backend (with portForward) came in 9.2; Debian
    # 12's libvirt 9.0 lacks it, and there QEMU's own user-mode netdev
    # forwards the port instead.
    return (conn.getLibVersion() >= 9002000
            and shutil.which('passt') is not None)
