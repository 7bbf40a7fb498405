"""Options of the [amiboot] group: what acts in nova and in the command.

Options that only the ``amiboot`` command reads are in its own group
(``nova_amiboot.conf.local``), registered by the command: nova's sample
configuration shows only what acts in nova.
"""

from oslo_config import cfg

amiboot_group = cfg.OptGroup(
    'amiboot',
    title='AMI boot method options',
    help="""
Options of nova-amiboot: how AMI/AKI/ARI triplets are cached on the host,
how instance disks are prepared (overlay, filesystem growth, injection) and
which kernel command line the guest boots with.
""")

cache_opts = [
    cfg.IntOpt('max_image_virtual_size_gb',
               default=1024, min=1,
               help="""
Largest virtual size, in GiB, that an image part (AKI, ARI or AMI) may claim.
A larger one is refused before anything is written to the cache, so that a
crafted image header cannot make the host create a huge disk.
"""),
    cfg.IntOpt('qemu_img_cpu_seconds',
               default=30, min=1,
               help="""
CPU time limit, in seconds, for each ``qemu-img info`` run on an untrusted
image. Crafted images have made qemu-img spin (CVE-2015-5162).
"""),
    cfg.IntOpt('qemu_img_address_space_mb',
               default=1024, min=64,
               help="""
Address-space limit, in MiB, for each ``qemu-img info`` run on an untrusted
image.
"""),
]

disk_opts = [
    cfg.IntOpt('overlay_cluster_size',
               default=16384,
               choices=[2 ** n for n in range(12, 22)],
               help="""
qcow2 cluster size, in bytes, of the instance disks made in overlay mode (and
of the grown templates they are copied from). What an instance disk holds of
its own is counted in clusters: growing the filesystem and injecting a key
touch metadata blocks all over the disk, and each touched block costs a whole
cluster. At 16 KiB an instance over a 4 GiB AMI grown to 20 GiB holds about
3.4 MiB (6.1 MiB at qemu-img's default of 64 KiB). QEMU caches the L2 tables of
disks up to 64 GiB whole at 16 KiB (32 MiB cache); raise it for larger root
disks with heavy random writes.
"""),
    cfg.StrOpt('attach_method',
               default='auto',
               choices=[('auto', 'fuse when /dev/fuse exists, else nbd'),
                        ('nbd', 'qemu-nbd on a /dev/nbdN device (qemu-nbd '
                         'runs as root)'),
                        ('fuse', 'qemu-storage-daemon FUSE export of the '
                         'disk as a regular file, inside the sandbox of '
                         'the tools (no kernel block device, no root)')],
               help="""
How the instance disk is reached while its filesystem is grown and files are
injected. Either way the filesystem is edited from user space (e2fsprogs, in
the sandbox); it is not mounted in the host kernel. With fuse nothing that
parses the disk runs as root; with nbd, qemu-nbd does (on files the
privileged side opened and checked).
"""),
    cfg.BoolOpt('grow_filesystem',
                default=True,
                help="""
Grow an ext2/3/4 root filesystem to the whole root disk of the flavor.
"""),
    cfg.IntOpt('attach_timeout',
               default=30, min=1,
               help="""
Seconds to wait for qemu-nbd or qemu-storage-daemon to expose the disk.
"""),
    cfg.IntOpt('fs_tool_timeout',
               default=600, min=1,
               help="""
Seconds of wall-clock time each run of a filesystem tool (e2fsck, resize2fs,
debugfs, dumpe2fs, tune2fs, blkid, sfdisk, modinfo) may take on untrusted
bytes (an image or an instance disk) before its sandbox is killed and the
spawn fails; it is also the tool's CPU-time limit. A crafted filesystem must
not hold the base lock and a CPU for long.
"""),
    cfg.IntOpt('image_convert_timeout',
               default=3600, min=1,
               help="""
Seconds of wall-clock time a ``qemu-img convert``, ``create`` or ``resize``
of an image may take (converting a large qcow2 image takes a while).
"""),
    cfg.IntOpt('tool_memory_mb',
               default=512, min=64,
               help="""
Address-space limit, in MiB, of each host tool that reads untrusted bytes
(e2fsprogs, blkid, sfdisk, modinfo, decompressors); QEMU's tools
(qemu-img, qemu-storage-daemon) get twice this, their threads reserve address
space they never touch. A tool over it fails and the spawn fails with an
error naming the image and this limit. 512 MiB is ample for AMI-sized
filesystems; a crafted directory index can make e2fsck allocate gigabytes.
"""),
    cfg.StrOpt('tool_user',
               default='amiboot-tool',
               help="""
The unprivileged system user that host tools reading untrusted bytes run as,
inside a bubblewrap sandbox, when the calling service runs as root (when it
does not, the tools run as the service's own user). Neither root nor the QEMU
user: a tool compromised by a crafted image must not reach host files or
running guests. tools/setup-host.sh and the devstack plugin create it.
"""),
]

provision_opts = [
    cfg.StrOpt('provision',
               default='auto',
               choices=[('auto', 'guest when the image declares it (property '
                         'amiboot_provision=guest on the AMI or its ARI), '
                         'else host'),
                        ('host', 'always on the host: the filesystem is '
                         'grown and written from user space (e2fsprogs, in '
                         'the sandbox); ext2/3/4 only'),
                        ('guest', 'always in the guest: an image that does '
                         'not declare it is refused')],
               help="""
Where first-boot provisioning (growing the root filesystem, SSH key,
hostname, password, NoCloud seed, injected files) is done. ``host`` is the
route of earlier releases: the instance disk is attached to the host and its
ext2/3/4 filesystem edited from user space. ``guest``: the host attaches
nothing and runs no filesystem tool on the instance disk; the instance's
private ramdisk copy is its ARI followed by a small per-instance archive
(nova_amiboot.layer, format v1) that the ARI's /init applies after mounting
the root read-write and before switch_root, with the kernel's own
filesystem code (ext4, XFS and btrfs). Only an ARI that carries that /init
(built by ``amiboot image build-ari`` or ``from-disk`` of this release) can
do it, which is why the image has to declare it; the ARI's bytes are never
inspected. Both routes honour it: the ``amiboot`` command and nova's
driver (spawn, rebuild, evacuate, unshelve and rescue write the full layer;
the finish of a resize or cold migration writes one that only grows the
root, which the ARI does at every boot).
"""),
]

inject_opts = [
    cfg.BoolOpt('inject_key',
                default=True,
                help="""
Append the instance's SSH public key to /root/.ssh/authorized_keys in the
guest filesystem.
"""),
    cfg.BoolOpt('inject_password',
                default=False,
                help="""
Write the admin password, hashed with SHA-512 crypt, into /etc/shadow
(nova: the password given at server create or rebuild). Off by default, as
in nova.
"""),
    cfg.BoolOpt('inject_files',
                default=False,
                help="""
Write the files given at server create or rebuild (nova's injected files,
API microversions up to 2.56) into the guest filesystem, with the same
checks as every other write: absolute plain paths, no symbolic link on the
way. Off by default, as in nova.
"""),
    cfg.BoolOpt('inject_hostname',
                default=True,
                help="""
Write the instance's hostname into /etc/hostname.
"""),
]

boot_opts = [
    cfg.ListOpt('allowed_boot_params',
                default=['quiet', 'debug', 'loglevel', 'console',
                         'earlyprintk', 'panic', 'ignore_loglevel',
                         'net.ifnames', 'biosdevname', 'ipv6.disable',
                         'nomodeset', 'mitigations', 'elevator',
                         'transparent_hugepage', 'tsc', 'clocksource',
                         'no_timer_check', 'amiboot.*'],
                help="""
Names of kernel parameters that a user may add per instance (instance
metadata, user data or the CLI). Shell-style patterns are allowed
(``amiboot.*``). A parameter whose name is not matched is refused with an
error naming it; ``init=``, ``rdinit=`` and ``rd.break`` are never in the
default list because they hand the guest's first process to the requester.
"""),
]


ALL_OPTS = (cache_opts + disk_opts + provision_opts + inject_opts +
            boot_opts)


def register_opts(conf):
    # A group object holds per-option state (overrides): each ConfigOpts
    # gets its own, so that one configuration never leaks into another.
    conf.register_group(cfg.OptGroup(amiboot_group.name,
                                     title=amiboot_group.title,
                                     help=amiboot_group.help))
    conf.register_opts(ALL_OPTS, group=amiboot_group.name)


def list_opts():
    return {amiboot_group: ALL_OPTS}
