"""Root-only operations, through oslo.privsep with least capabilities.

Everything here runs in the privsep daemon. Each function does one narrow
thing and checks its arguments itself (a device must be /dev/nbdN, a tool
one of e2fsprogs'): never a generic "run as root".

The FUSE attach needs none of this: qemu-storage-daemon exports the disk as
a file owned by the caller. Only the nbd path (real compute hosts) does.
"""

from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

nbd_pctxt = priv_context.PrivContext(
    __name__,
    cfg_section='nova_amiboot_privileged',
    pypath=__name__ + '.nbd_pctxt',
    # SYS_ADMIN for the nbd ioctls; DAC_OVERRIDE to open /dev/nbdN (root
    # owned); CHOWN and FOWNER to hand the device to the sandboxed tool
    # user for one run; SETUID and SETGID to become that user (setpriv).
    capabilities=[caps.CAP_SYS_ADMIN, caps.CAP_DAC_OVERRIDE,
                  caps.CAP_CHOWN, caps.CAP_FOWNER, caps.CAP_SETUID,
                  caps.CAP_SETGID],
)

net_pctxt = priv_context.PrivContext(
    __name__,
    cfg_section='nova_amiboot_privileged_net',
    pypath=__name__ + '.net_pctxt',
    # Bridges and taps only.
    capabilities=[caps.CAP_NET_ADMIN],
)


def run_in_process():
    """Run the entrypoints in this process (it is root already).

    For the ``amiboot`` command and tests run as root: a privsep daemon
    would add a process and no separation.
    """
    for ctx in (nbd_pctxt, net_pctxt):
        ctx.set_client_mode(False)
