"""Options of the [local] group: read by the ``amiboot`` command only.

The embedded default (the local cloud, its store and its libvirt) reads
these; nova-compute never registers them. Each was in [amiboot] before and
is still read from there (deprecated).
"""

from oslo_config import cfg

local_group = cfg.OptGroup(
    'local',
    title='The amiboot command (the embedded default)',
    help="""
How the ``amiboot`` command boots instances on this host without OpenStack:
domain type, kernel command line, disk mode, flavors and boot waiting.
""")

local_opts = [
    cfg.IntOpt('image_cache_min_age_seconds',
               deprecated_group='amiboot',
               default=86400, min=0,
               help="""
A cached base file that no instance uses is removed by the cache clean-up
only when it has not been used for at least this many seconds.
"""),
    cfg.StrOpt('disk_mode',
               deprecated_group='amiboot',
               default='overlay',
               choices=[('overlay', 'qcow2 overlay backed by the raw base; '
                         'nothing is copied'),
                        ('copy', 'full raw copy of the base per instance, '
                         'like nova\'s Flat backend')],
               help="""
How the instance root disk is made from the cached AMI base.
"""),
    cfg.StrOpt('default_cmdline',
               deprecated_group='amiboot',
               default='root=/dev/vda console=tty0 console=ttyS0',
               help="""
Kernel command line used when the AMI has no ``os_command_line`` property.
"""),
    cfg.BoolOpt('enable_vnc',
                deprecated_group='amiboot',
                default=False,
                help="""
Give the guest a VNC display listening on 127.0.0.1.
"""),
    cfg.StrOpt('appliance_kernel_package',
               help="""
A Debian kernel package (``linux-image-*.deb``, e.g. of
``linux-image-cloud-amd64``) the appliance boots: ``amiboot image
from-disk`` reads XFS, btrfs and LVM roots in that VM's kernel, never the
host's. Its kernel and ARI are built once into the state directory. Unset:
such roots are refused with this hint (``--appliance-kernel-package``
gives one for a single command).
"""),
    cfg.StrOpt('virt_type',
               deprecated_group='amiboot',
               default='auto',
               choices=[('auto', 'kvm when libvirt offers it and a kernel '
                         'really boots under it (tested once per host, '
                         'remembered in the state dir), qemu otherwise'),
                        ('kvm', 'hardware virtualisation'),
                        ('qemu', 'software emulation (TCG)')],
               help="""
Libvirt domain type used by the ``amiboot`` command. ``qemu`` is software
emulation (TCG) for hosts without usable hardware virtualisation.
``amiboot doctor`` shows what ``auto`` picks and why.
"""),
    cfg.ListOpt('flavors',
                deprecated_group='amiboot',
                default=[],
                item_type=cfg.types.String(),
                help="""
Flavors of the ``amiboot`` command besides the built-in m1.tiny to m1.large,
each ``NAME:ROOT_GB:MEMORY_MB:VCPUS`` (for example ``lab.big:40:4096:2``).
A flavor here replaces a built-in one of the same name.
"""),
    cfg.StrOpt('ready_pattern',
               deprecated_group='amiboot',
               default=r'login: |AMIBOOT-REPORT-END',
               help="""
Regular expression that ``amiboot boot --wait`` looks for on the serial
console to call a guest up. The default matches a getty login prompt and the
report line of the project's test images.
"""),
    cfg.IntOpt('boot_timeout',
               deprecated_group='amiboot',
               default=300, min=1,
               help="""
Seconds ``amiboot boot --wait`` waits for the ready pattern.
"""),
]


def register_opts(conf):
    conf.register_group(cfg.OptGroup(local_group.name,
                                     title=local_group.title,
                                     help=local_group.help))
    conf.register_opts(local_opts, group=local_group.name)


def list_opts():
    return {local_group: local_opts}
