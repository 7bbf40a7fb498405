"""amiboot image ...: the local image store, building and moving triplets."""

import os
import shutil

from osc_lib.cli import parseractions

from nova_amiboot.cli import common
from nova_amiboot import exception
from nova_amiboot.imagetools import ami as ami_mod
from nova_amiboot.imagetools import appliance
from nova_amiboot.imagetools import ari
from nova_amiboot.imagetools import diskimage
from nova_amiboot.imagetools import glance
from nova_amiboot.imagetools import snapshot
from nova_amiboot.local import hostcheck
from nova_amiboot import spawn

# What an ARI built by this project declares (spawn.provision_mode): its
# /init applies the per-instance provisioning layer.
BUILT_ARI_PROPERTIES = {spawn.PROVISION_PROPERTY: 'guest'}


def appliance_kit(cloud, a):
    """The appliance's Kit per --appliance-kernel-package or [local]."""
    deb = (a.appliance_kernel_package or
           cloud.conf.local.appliance_kernel_package)
    if not deb:
        return None
    kit = appliance.prepare(deb, os.path.join(cloud.state_dir,
                                              'appliance'))
    virt_type, why = hostcheck.choose_virt_type(
        cloud.conf.local.virt_type, cloud.host.conn, kit.kernel,
        cloud.state_dir)
    if virt_type is None:
        raise exception.InvalidInput(reason=why)
    kit.virt_type, kit.host = virt_type, cloud.host
    return kit


class ImportImage(common.ShowOne):
    """Check and store an AKI/ARI/AMI triplet."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='name of the AMI; kernel and ramdisk '
                       'become NAME-kernel and NAME-ramdisk')
        p.add_argument('--kernel', required=True, metavar='FILE',
                       help='the kernel (AKI), e.g. /boot/vmlinuz-*')
        p.add_argument('--ramdisk', required=True, metavar='FILE',
                       help='the initramfs (ARI), e.g. from build-ari')
        p.add_argument('--root', required=True, metavar='FILE',
                       help='the root filesystem (AMI)')
        p.add_argument('--root-format', choices=['ami', 'qcow2'],
                       default='ami',
                       help='the root file is a bare filesystem (ami, '
                       'default) or a qcow2 of one')
        p.add_argument('--property', metavar='KEY=VALUE',
                       action=parseractions.KeyValueAction,
                       help='image property, e.g. os_command_line=...; '
                       'repeatable')
        p.add_argument('--ramdisk-property', metavar='KEY=VALUE',
                       action=parseractions.KeyValueAction,
                       help='property of the ARI, e.g. amiboot_provision='
                       'guest for one from build-ari (its /init provisions '
                       'in the guest); repeatable')
        return p

    def take_action(self, a):
        meta = self.cloud.import_triplet(
            a.name, a.kernel, a.ramdisk, a.root, dict(a.property or {}),
            root_format=a.root_format,
            ramdisk_properties=dict(a.ramdisk_property or {}))
        return self.record(a, common.image_row(meta))


class ImageFromDisk(common.ShowOne):
    """Make an AMI triplet of a whole-disk image and import it.

    The source is a distribution's cloud image (raw or qcow2, MBR or GPT).
    An ext2/3/4 root is copied out without mounting; /etc/fstab names it
    by LABEL= and it is shrunk with its free blocks zeroed. An XFS, btrfs
    or LVM root is copied out in the appliance VM (its own kernel, the
    image read-only) and named by UUID=. Its newest kernel (or
    --kernel-version) becomes the AKI and an ARI is built from that
    kernel's own modules.
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('source', metavar='SRC',
                       help='whole-disk image file (raw or qcow2)')
        p.add_argument('name', help='name of the new AMI')
        p.add_argument('--kernel-version', metavar='VERSION',
                       help='use /boot/vmlinuz-VERSION (default: newest)')
        p.add_argument('--appliance-kernel-package', metavar='DEB',
                       help='Debian kernel package the appliance VM boots '
                       'to read XFS, btrfs and LVM roots (default: [local] '
                       'appliance_kernel_package)')
        p.add_argument('--label', default=diskimage.DEFAULT_LABEL,
                       help='filesystem label of the AMI, used as root='
                       'LABEL= (default: %(default)s)')
        p.add_argument('--append', action='append', metavar='PARAMS',
                       help='kernel parameters added to os_command_line, '
                       'e.g. net.ifnames=0; repeatable')
        p.add_argument('--property', metavar='KEY=VALUE',
                       action=parseractions.KeyValueAction,
                       help='extra image property; repeatable')
        return p

    def take_action(self, a):
        cloud = self.cloud
        props = dict(a.property or {})
        kit = appliance_kit(cloud, a)
        work = diskimage.work_dir(os.path.join(cloud.state_dir, 'tmp'))
        try:
            trip = diskimage.convert(a.source, a.source, work, cloud.conf,
                                     kernel_version=a.kernel_version,
                                     label=a.label,
                                     append=' '.join(a.append or ()),
                                     appliance_kit=kit)
            props.setdefault('os_command_line', trip.cmdline)
            # Its ARI is ours (build_ari): it provisions in the guest.
            meta = cloud.import_triplet(
                a.name, trip.kernel, trip.ramdisk, trip.root, props,
                ramdisk_properties=BUILT_ARI_PROPERTIES)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        row = common.image_row(meta)
        row.update(kernel_version=trip.kernel_version, os=trip.os_name,
                   root_partition=trip.root_partition,
                   fstab_dropped=trip.dropped_fstab)
        return self.record(a, row)


class SnapshotImage(common.ShowOne):
    """Save a stopped instance as a new AMI.

    The disk is flattened into a bare filesystem, shrunk, its free blocks
    zeroed; the SSH key and hostname injected at boot are taken out unless
    --keep-injected. The AMI shares the source's kernel, ramdisk and
    properties (os_command_line included).
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('instance', help='a stopped instance')
        p.add_argument('name', help='name of the new AMI')
        p.add_argument('--keep-injected', action='store_true',
                       help='keep the injected SSH key, hostname and '
                       'NoCloud seed')
        p.add_argument('--appliance-kernel-package', metavar='DEB',
                       help='Debian kernel package the appliance VM boots '
                       'to clean an XFS or btrfs root (default: [local] '
                       'appliance_kernel_package)')
        return p

    def take_action(self, a):
        meta, removed = snapshot.snapshot(
            self.cloud, a.instance, a.name, keep_injected=a.keep_injected,
            appliance_kit=appliance_kit(self.cloud, a))
        row = common.image_row(meta)
        row['removed'] = removed
        return self.record(a, row)


def _cloud_option(p):
    p.add_argument('--os-cloud', metavar='CLOUD',
                   default=os.environ.get('OS_CLOUD'),
                   help='cloud name in clouds.yaml (default: $OS_CLOUD)')


def _conn(a):
    if not a.os_cloud:
        raise exception.InvalidInput(
            reason="give --os-cloud CLOUD (or set OS_CLOUD)")
    return glance.connect(a.os_cloud)


class UploadImage(common.ShowOne):
    """Upload an AMI with its kernel and ramdisk to Glance.

    AKI (aki/aki), ARI (ari/ari), then the AMI (ami/ami) with kernel_id
    and ramdisk_id set to the Glance copies and its properties
    (os_command_line, hw_*) kept. Parts already in Glance with the same
    os_hash_value are reused, not uploaded twice.
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='local AMI name or ID')
        _cloud_option(p)
        return p

    def take_action(self, a):
        cloud = self.cloud
        meta = cloud.find_image(a.name)
        conn = _conn(a)
        try:
            with glance.glance_errors(a.name):
                res = glance.upload(conn, cloud.store, meta,
                                    progress=cloud.progress)
        finally:
            conn.close()
        return self.record(a, res)


class DownloadImage(common.ShowOne):
    """Download an AMI with its kernel and ramdisk from Glance."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('image', help='Glance AMI name or ID')
        p.add_argument('--name', help='local name (default: Glance\'s)')
        _cloud_option(p)
        return p

    def take_action(self, a):
        cloud = self.cloud
        conn = _conn(a)
        try:
            with glance.glance_errors(a.image):
                meta = glance.download(conn, cloud, a.image, name=a.name,
                                       progress=cloud.progress)
        finally:
            conn.close()
        return self.record(a, common.image_row(meta))


class ListImage(common.Lister):
    """List images."""

    def take_action(self, a):
        return self.rows(a, ('name', 'id', 'disk_format', 'size',
                             'kernel_id', 'ramdisk_id'),
                         [common.image_row(m)
                          for m in self.cloud.store.list()])


class ShowImage(common.ShowOne):
    """Show an image."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='image name or ID')
        return p

    def take_action(self, a):
        return self.record(a, common.image_row(self.cloud.find_image(a.name)))


class DeleteImage(common.ShowOne):
    """Delete an image, and its kernel and ramdisk unless shared.

    Refused while an instance uses it.
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='image name or ID')
        return p

    def take_action(self, a):
        return self.record(a, {'deleted': self.cloud.delete_image(a.name)})


class BuildAri(common.ShowOne):
    """Build an ARI for a cloud kernel.

    Loads its virtio modules in dependency order, mounts root= and
    switch_roots into init; applies the per-instance provisioning layer
    (grow ext4/XFS/btrfs, key, hostname, ...) when one follows it. Import
    it with --ramdisk-property amiboot_provision=guest to have instances
    provisioned in the guest.
    """

    needs_cloud = False

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument('--kernel-package', metavar='DEB',
                         help='a kernel .deb (unpacked, not installed)')
        src.add_argument('--modules-dir', metavar='DIR',
                         help='a lib/modules/VERSION directory')
        p.add_argument('--module', action='append', metavar='NAME',
                       help='module to load (repeatable; default: %s)'
                       % ', '.join(ari.DEFAULT_MODULES))
        p.add_argument('output', help='ARI file to write')
        return p

    def take_action(self, a):
        order = ari.build_ari(a.output, modules_dir=a.modules_dir,
                              kernel_package=a.kernel_package,
                              modules=a.module or ari.DEFAULT_MODULES)
        return self.record(a, {
            'output': a.output, 'modules': order,
            'ramdisk_properties': ' '.join(
                '%s=%s' % kv for kv in sorted(BUILT_ARI_PROPERTIES.items()))})


class BuildAmi(common.ShowOne):
    """Build an ext4, XFS or btrfs AMI from a directory tree (no mount)."""

    needs_cloud = False

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--from-dir', required=True, metavar='DIR',
                       help='the root directory tree')
        p.add_argument('--fs', default='ext4', choices=ami_mod.FSTYPES,
                       help='root filesystem (default: %(default)s; XFS '
                       'and btrfs are grown and keyed in the guest, by '
                       "the project's ARI)")
        p.add_argument('--label', default=None,
                       help='filesystem label (default: %s; XFS holds at '
                       'most %d bytes)' % (ami_mod.DEFAULT_LABEL,
                                           ami_mod.XFS_LABEL_MAX))
        p.add_argument('output', help='AMI file to write')
        return p

    def take_action(self, a):
        size = ami_mod.build_ami(a.from_dir, a.output, label=a.label,
                                 fstype=a.fs)
        return self.record(a, {'output': a.output, 'size': size,
                               'fs': a.fs})
