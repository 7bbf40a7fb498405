"""Linux bridges and tap devices through pyroute2, with CAP_NET_ADMIN.

Every call takes ``netns``: None is the host's namespace, a name is one
made with ``ip netns add`` (the tests use their own).
"""

import contextlib
import re

from pyroute2 import IPRoute
from pyroute2 import NetNS

from nova_amiboot import exception
import nova_amiboot.privileged

# Linux takes up to 15 bytes and no '/', ':' or whitespace; fullmatch, so a
# trailing newline does not pass as it did with '$'. '.' and '..' are not
# names.
_NAME = re.compile(r'[A-Za-z0-9_.-]{1,15}')


def check_name(name):
    """Raise InvalidInterfaceName unless ``name`` is a plain ifname.

    The root side calls this on every argument itself; callers may call it
    first to refuse bad input before doing any work.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or \
            name in ('.', '..'):
        shown = (name.encode('unicode_escape').decode('ascii')[:40]
                 if isinstance(name, str) else repr(name)[:40])
        raise exception.InvalidInterfaceName(name=shown)


_check = check_name


@contextlib.contextmanager
def _ipr(netns):
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr, name):
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


@nova_amiboot.privileged.net_pctxt.entrypoint
def ensure_bridge(bridge, netns=None):
    """Create ``bridge`` unless it exists; bring it up. Returns created."""
    _check(bridge)
    with _ipr(netns) as ipr:
        created = False
        if _index(ipr, bridge) is None:
            ipr.link('add', ifname=bridge, kind='bridge')
            created = True
        ipr.link('set', index=_index(ipr, bridge), state='up')
        return created


@nova_amiboot.privileged.net_pctxt.entrypoint
def add_tap(tap, bridge, mac=None, netns=None):
    """A persistent tap enslaved to ``bridge``, up. Returns created."""
    _check(tap)
    _check(bridge)
    with _ipr(netns) as ipr:
        master = _index(ipr, bridge)
        if master is None:
            raise exception.InvalidInput(reason="no bridge %s" % bridge)
        created = False
        if _index(ipr, tap) is None:
            ipr.link('add', ifname=tap, kind='tuntap', mode='tap')
            created = True
        ipr.link('set', index=_index(ipr, tap), master=master, state='up')
        return created


@nova_amiboot.privileged.net_pctxt.entrypoint
def delete_link(name, netns=None):
    """Remove an interface; a missing one is fine. Returns removed."""
    _check(name)
    with _ipr(netns) as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        ipr.link('del', index=idx)
        return True


@nova_amiboot.privileged.net_pctxt.entrypoint
def link_info(name, netns=None):
    """{'kind', 'master', 'state'} of an interface, or None."""
    _check(name)
    with _ipr(netns) as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return None
        link = ipr.get_links(idx)[0]
        linkinfo = link.get_attr('IFLA_LINKINFO')
        master = link.get_attr('IFLA_MASTER')
        master_name = (ipr.get_links(master)[0].get_attr('IFLA_IFNAME')
                       if master else None)
        return {'kind': linkinfo.get_attr('IFLA_INFO_KIND')
                if linkinfo else None,
                'master': master_name,
                'state': link.get_attr('IFLA_OPERSTATE'),
                'up': bool(link['flags'] & 1)}
