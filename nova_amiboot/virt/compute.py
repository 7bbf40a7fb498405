"""nova-compute-amiboot: nova-compute that can load nova-amiboot's driver.

nova loads ``'nova.virt.' + [DEFAULT] compute_driver``; a driver from
another distribution is not under nova.virt. This wrapper registers ours as
``nova.virt.amiboot`` and runs nova-compute's own main, so nova.conf says::

    [DEFAULT]
    compute_driver = amiboot.AmibootLibvirtDriver

and the service runs as ``nova-compute-amiboot --config-file ...`` (same
arguments as nova-compute).
"""

import sys

MODULE = 'nova.virt.amiboot'


def register():
    """Make nova_amiboot.virt.driver importable as nova.virt.amiboot."""
    from nova_amiboot.virt import driver
    sys.modules.setdefault(MODULE, driver)
    return driver


def main():
    # nova.cmd.compute chooses nova's concurrency mode (native threads or
    # eventlet) when it is imported: that must happen before nova_amiboot,
    # which imports oslo.privsep, is imported.
    from nova.cmd import compute
    register()
    return compute.main()


if __name__ == '__main__':
    sys.exit(main())
