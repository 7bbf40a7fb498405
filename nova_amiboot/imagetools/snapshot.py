"""A stopped instance's disk becomes a new AMI.

The overlay is flattened into a bare raw filesystem (``qemu-img convert``
from the format libvirt runs the disk with, never a probe: in copy mode the
guest owns every byte of a raw disk, headers included), the per-instance
injections are taken out again unless asked to keep them (the SSH key lines
that nova-amiboot marked, the hostname, the NoCloud seed, the guest-mode
provisioning stamp), and the
filesystem is shrunk with its free blocks zeroed like any new AMI. The
snapshot keeps the source AMI's kernel, ramdisk and properties
(``os_command_line`` included): it shares their AKI and ARI.
"""

import os
import re
import shutil

from lxml import etree
from oslo_log import log as logging

from nova_amiboot import disk as disk_mod
from nova_amiboot.imagetools import appliance
from nova_amiboot.imagetools import diskimage
from nova_amiboot.local import config as local_config
from nova_amiboot import exception
from nova_amiboot import inject
from nova_amiboot import safety
from nova_amiboot import sandbox

LOG = logging.getLogger(__name__)

SEED = '/var/lib/cloud/seed/nocloud'
# Where the ARI keeps the digest of the provisioning layer it applied
# (guest mode): an instance of the snapshot applies its own.
STAMP = '/var/lib/amiboot/provisioned'


def _disk_of(cloud, inst):
    """(path, format) of the instance's root disk, per its domain."""
    dom = cloud.host.lookup(inst.domain_name)
    if dom is None:
        raise exception.InvalidInput(
            reason="instance %s has no libvirt domain" % inst.name)
    if dom.isActive():
        raise exception.InvalidInput(
            reason="instance %s is %s; stop it first ('amiboot stop %s')"
                   % (inst.name, inst.state, inst.name))
    tree = etree.fromstring(dom.XMLDesc(0).encode())
    for disk in tree.findall('./devices/disk'):
        target = disk.find('target')
        if target is not None and target.get('dev') == 'vda':
            return disk.find('source').get('file'), disk.find(
                'driver').get('type')
    raise exception.InvalidInput(
        reason="instance %s has no root disk vda" % inst.name)


def remove_injected(fs, base_fs, work):
    """Undo key, hostname and seed injection; return what was removed."""
    removed = []
    keys = fs.read_text('/root/.ssh/authorized_keys', work)
    if keys is not None and inject.KEY_MARKER in keys:
        lines, skip = [], False
        for line in keys.splitlines():
            if line.strip() == inject.KEY_MARKER:
                skip = True         # the marker and the key after it
                continue
            if skip:
                skip = False
                continue
            lines.append(line)
        fs.write('/root/.ssh/authorized_keys',
                 ''.join(line + '\n' for line in lines).encode(),
                 mode=0o600)
        removed.append('/root/.ssh/authorized_keys')
    original = base_fs.read_text('/etc/hostname', work)
    current = fs.read_text('/etc/hostname', work)
    if current is not None and current != original:
        if original is None:
            fs.remove('/etc/hostname')
        else:
            fs.write('/etc/hostname', original.encode(), mode=0o644)
        removed.append('/etc/hostname')
    seed = ['%s/%s' % (SEED, name) for name in ('meta-data', 'user-data')]
    for path in seed + [STAMP]:
        if fs.kind(path) == 'file' and base_fs.kind(path) is None:
            fs.remove(path)
            removed.append(path)
    return removed


def _label(path):
    out = sandbox.run(['dumpe2fs', '-h', path], path, files=[path]).text
    m = re.search(r'^Filesystem volume name:\s+(\S*)', out, re.M)
    label = m.group(1) if m else ''
    return None if label in ('', '<none>') else label


def _root_subvolume(properties):
    """The btrfs subvolume an AMI's os_command_line boots from, or ''."""
    cmdline = (properties or {}).get('os_command_line') or ''
    for word in cmdline.split():
        if word.startswith('rootflags='):
            for opt in word[len('rootflags='):].split(','):
                if opt.startswith('subvol='):
                    return opt[len('subvol='):]
    return ''


def _fstype(path, image):
    out = sandbox.run(['blkid', '-p', '-o', 'value', '-s', 'TYPE', path],
                      image, files=[path], ok_codes=(0, 2)).text
    return out.strip()


def snapshot(cloud, instance, name, keep_injected=False, appliance_kit=None):
    """Make AMI ``name`` of stopped ``instance``; return (meta, removed).

    An ext2/3/4 root is cleaned and shrunk here from user space; an XFS or
    btrfs one in the appliance VM (``appliance_kit``), its AMI attached
    read-only beside it to compare with.
    """
    local_config.check_name('image', name)
    inst = cloud.get(instance)
    for meta in cloud.store.list():
        if meta.name == name:
            raise exception.ImageExists(name=name, id=meta.id)
    disk, fmt = _disk_of(cloud, inst)
    if fmt not in ('qcow2', 'raw'):
        raise exception.InvalidInput(
            reason="instance %s: disk format %s" % (inst.name, fmt))
    source = cloud.store.get_meta(inst.image_id)
    # The raw base in the cache (an AMI imported as qcow2 is raw there).
    base = cloud.cache.fetch(source.id, 'ami').path
    work = diskimage.work_dir(os.path.join(cloud.state_dir, 'tmp'))
    try:
        root = os.path.join(work, 'root.img')
        # The guest's QEMU owned the disk and may have rewritten its
        # header: the format is libvirt's, the backing the source AMI's
        # base (whatever the header names), a data file refused; in the
        # sandbox only the disk and that base exist.
        disk_mod.check_header(disk, fmt, inst.name)
        os.close(os.open(root, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        lim = sandbox.Limits.from_conf(
            cloud.conf, timeout=cloud.conf.amiboot.image_convert_timeout,
            timeout_name='[amiboot] image_convert_timeout')
        with sandbox.Run(instance, lim) as r:
            r.execute(['qemu-img', 'convert', '-q', '-O', 'raw',
                       disk_mod.sandboxed_filename(r, disk, fmt, base),
                       r.file(root, write=True)])
        label = instance + ' snapshot'
        fstype = _fstype(root, label)
        removed = []
        if fstype in ('xfs', 'btrfs'):
            if not keep_injected:
                if appliance_kit is None:
                    raise exception.InvalidInput(
                        reason="instance %s: its root is %s, cleaned only in "
                               "the appliance VM: give --appliance-kernel-"
                               "package or set [local] appliance_kernel_"
                               "package (or --keep-injected)"
                               % (inst.name, fstype))
                os.chmod(work, 0o711)   # QEMU (its own user) opens root
                res = appliance.clean(
                    appliance_kit.kernel, appliance_kit.initrd, base, root,
                    label, work=work, virt_type=appliance_kit.virt_type,
                    timeout=cloud.conf.amiboot.image_convert_timeout,
                    host=appliance_kit.host,
                    subvol=_root_subvolume(source.properties))
                removed = res.removed
        else:
            diskimage.check_fs(root, label, cloud.conf)
            if not keep_injected:
                fs = diskimage.ImageFS(root, label, cloud.conf)
                base_fs = diskimage.ImageFS(base, source.name, cloud.conf)
                removed = remove_injected(fs, base_fs, work)
            diskimage.finish_fs(root, _label(root), label, cloud.conf)
        safety.inspect(root, 'ami', name, cloud.conf)
        props = dict(source.properties)
        props.update(snapshot_of=inst.name, base_image_ref=source.id)
        meta = cloud.store.add(name, root, 'ami', props,
                               progress=cloud.progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    LOG.info("Instance %(inst)s saved as image %(name)s (%(id)s)",
             {'inst': inst.name, 'name': name, 'id': meta.id})
    return meta, removed
