"""amiboot: AMI boot on one host without OpenStack (the embedded default).

A thin command line over nova_amiboot.embedded, built on cliff (the
framework of the ``openstack`` command): every listing and record takes
``-f table|json|value|yaml|csv`` and ``-c COLUMN``; ``amiboot complete``
prints a bash completion script.
"""

import argparse
import dataclasses
import json
import logging as std_logging
import os
import shutil
import sys
import time
import traceback

from cliff import app
from cliff import command
from cliff import commandmanager
from cliff import complete
from cliff import lister
from cliff import show
import libvirt
from lxml import etree
from oslo_config import cfg
from oslo_log import log as logging
import tqdm

from nova_amiboot import ami as ami_mod
from nova_amiboot import ari
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import diskimage
from nova_amiboot import embedded
from nova_amiboot import exception
from nova_amiboot import glance
from nova_amiboot import guest
from nova_amiboot import hostcheck
from nova_amiboot import privileged
from nova_amiboot import snapshot

DEFAULT_CONFIG = '/etc/amiboot/amiboot.conf'
ERRORS = (exception.AmibootException, libvirt.libvirtError, OSError)

BOOT_EPILOG = """\
flavors:
  --flavor NAME picks the root disk size, memory and vCPUs ('amiboot flavor
  list': m1.tiny to m1.large, plus [amiboot] flavors in the config file);
  or give all three of --root-gb, --memory-mb and --vcpus. The AMI's
  filesystem is grown to the root disk.

networks:
  user          QEMU user-mode networking; the guest's SSH port is forwarded
                from a free port on 127.0.0.1 ('amiboot ssh NAME')
  none          no network interface
  bridge:NAME   a tap on the Linux bridge NAME (created if missing)

user data:
  --user-data FILE is written as a cloud-init NoCloud seed into the guest
  (/var/lib/cloud/seed/nocloud). Its 'bootparams=' lines add kernel
  parameters, checked against [amiboot] allowed_boot_params like
  --boot-param.

before any disk work, boot checks that QEMU's user can reach the state
directory and picks the domain type ([amiboot] virt_type; 'amiboot doctor'
shows the host's verdict).
"""


def _flat(value, formatter):
    """Nested values as JSON text for table/value output."""
    if formatter in ('json', 'yaml') or not isinstance(value, (dict, list)):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ' '.join(value)
    return json.dumps(value, sort_keys=True)


def _image_row(meta):
    d = dataclasses.asdict(meta)
    d.update(d.pop('properties'))
    return d


def _instance_row(cloud, inst):
    d = dataclasses.asdict(inst)
    d['flavor'] = inst.flavor['name']
    d['ssh'] = ('127.0.0.1:%s' % inst.network['ssh_port']
                if inst.network.get('ssh_port') else '')
    # Only our own domain (owner mark), never one that shares the name or
    # the uuid (a foreign one shows as state 'foreign', no domain type).
    try:
        dom = cloud._domain(inst)
    except exception.DomainNotOwned:
        dom = None
    d['virt_type'] = (etree.fromstring(dom.XMLDesc(0).encode()).get('type')
                      if dom is not None else '')
    return d


def _properties(items):
    props = {}
    for item in items or ():
        k, sep, v = item.partition('=')
        if not sep:
            raise exception.InvalidInput(
                reason="--property %r is not KEY=VALUE" % item)
        props[k] = v
    return props


class TransferBar(object):
    """tqdm progress bars for copies, downloads and conversions.

    Called as ``bar(label, done, total)``; a new label starts a new bar.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.label = None
        self.bar = None

    def __call__(self, label, done, total):
        if label != self.label:
            self.close()
            self.label = label
            self.bar = tqdm.tqdm(total=total or None, desc=label[:40],
                                 unit='B', unit_scale=True,
                                 unit_divisor=1024, file=self.stream,
                                 leave=True, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.label = None


class Elapsed(object):
    """A spinner with elapsed seconds while waiting for a guest."""

    def __init__(self, label, stream=None):
        self.bar = tqdm.tqdm(desc=label, file=stream or sys.stderr,
                             bar_format='{desc}: {elapsed}', leave=True,
                             disable=None)

    def __call__(self, elapsed):
        self.bar.refresh()

    def done(self):
        self.bar.close()


# --- command bases -------------------------------------------------------

class _Base(object):
    """Errors as one line ``amiboot: error: ...``; --debug: a traceback."""

    needs_cloud = True

    @property
    def cloud(self):
        return self.app.get_cloud() if self.needs_cloud else None

    def run(self, parsed_args):
        try:
            return super().run(parsed_args) or 0
        except ERRORS as e:
            if self.app.options.debug:
                traceback.print_exc()
            msg = getattr(e, 'message', None) or str(e)
            print("amiboot: error: %s" % ' '.join(msg.split('\n')[:1]),
                  file=sys.stderr)
            return 1


class Command(_Base, command.Command):
    pass


class ShowOne(_Base, show.ShowOne):

    def record(self, parsed_args, data):
        cols = tuple(sorted(data))
        fmt = getattr(parsed_args, 'formatter', 'table')
        return cols, tuple(_flat(data[c], fmt) for c in cols)


class Lister(_Base, lister.Lister):

    def rows(self, parsed_args, columns, data):
        fmt = getattr(parsed_args, 'formatter', 'table')
        return columns, [tuple(_flat(r.get(c, ''), fmt) for c in columns)
                         for r in data]


# --- images ---------------------------------------------------------------

class ImageImport(ShowOne):
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
        p.add_argument('--property', action='append', metavar='KEY=VALUE',
                       help='image property, e.g. os_command_line=...; '
                       'repeatable')
        return p

    def take_action(self, a):
        meta = self.cloud.import_triplet(a.name, a.kernel, a.ramdisk, a.root,
                                         _properties(a.property),
                                         root_format=a.root_format)
        return self.record(a, _image_row(meta))


class ImageFromDisk(ShowOne):
    """Make an AMI triplet of a whole-disk image and import it.

    The source is a distribution's cloud image (raw or qcow2, MBR or GPT).
    Its Linux root filesystem (ext2/3/4) is copied out without mounting,
    its newest kernel (or --kernel-version) becomes the AKI, an ARI is built
    from that kernel's own modules, /etc/fstab names the root by LABEL=, and
    the filesystem is shrunk with its free blocks zeroed.
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('source', metavar='SRC',
                       help='whole-disk image file (raw or qcow2)')
        p.add_argument('name', help='name of the new AMI')
        p.add_argument('--kernel-version', metavar='VERSION',
                       help='use /boot/vmlinuz-VERSION (default: newest)')
        p.add_argument('--label', default=diskimage.DEFAULT_LABEL,
                       help='filesystem label of the AMI, used as root='
                       'LABEL= (default: %(default)s)')
        p.add_argument('--append', action='append', metavar='PARAMS',
                       help='kernel parameters added to os_command_line, '
                       'e.g. net.ifnames=0; repeatable')
        p.add_argument('--property', action='append', metavar='KEY=VALUE',
                       help='extra image property; repeatable')
        return p

    def take_action(self, a):
        cloud = self.cloud
        props = _properties(a.property)
        work = diskimage.work_dir(os.path.join(cloud.state_dir, 'tmp'))
        try:
            trip = diskimage.convert(a.source, a.source, work, cloud.conf,
                                     kernel_version=a.kernel_version,
                                     label=a.label,
                                     append=' '.join(a.append or ()))
            props.setdefault('os_command_line', trip.cmdline)
            meta = cloud.import_triplet(a.name, trip.kernel, trip.ramdisk,
                                        trip.root, props)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        row = _image_row(meta)
        row.update(kernel_version=trip.kernel_version, os=trip.os_name,
                   root_partition=trip.root_partition,
                   fstab_dropped=trip.dropped_fstab)
        return self.record(a, row)


class ImageSnapshot(ShowOne):
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
        return p

    def take_action(self, a):
        meta, removed = snapshot.snapshot(self.cloud, a.instance, a.name,
                                          keep_injected=a.keep_injected)
        row = _image_row(meta)
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


class ImageUpload(ShowOne):
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


class ImageDownload(ShowOne):
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
        return self.record(a, _image_row(meta))


class ImageList(Lister):
    """List images."""

    def take_action(self, a):
        return self.rows(a, ('name', 'id', 'disk_format', 'size',
                             'kernel_id', 'ramdisk_id'),
                         [_image_row(m) for m in self.cloud.store.list()])


class ImageShow(ShowOne):
    """Show an image."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='image name or ID')
        return p

    def take_action(self, a):
        return self.record(a, _image_row(self.cloud.find_image(a.name)))


class ImageDelete(ShowOne):
    """Delete an image, and its kernel and ramdisk unless shared.

    Refused while an instance uses it.
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='image name or ID')
        return p

    def take_action(self, a):
        return self.record(a, {'deleted': self.cloud.delete_image(a.name)})


class ImageBuildAri(ShowOne):
    """Build an ARI for a cloud kernel.

    Loads its virtio modules in dependency order, mounts root= and
    switch_roots into init.
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
        return self.record(a, {'output': a.output, 'modules': order})


class ImageBuildAmi(ShowOne):
    """Build an ext4 AMI from a directory tree (no mount)."""

    needs_cloud = False

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--from-dir', required=True, metavar='DIR',
                       help='the root directory tree')
        p.add_argument('--label', default='cloudimg-rootfs',
                       help='filesystem label (default: %(default)s)')
        p.add_argument('output', help='AMI file to write')
        return p

    def take_action(self, a):
        size = ami_mod.build_ami(a.from_dir, a.output, label=a.label)
        return self.record(a, {'output': a.output, 'size': size})


# --- instances ------------------------------------------------------------

def _flavor(cloud, a):
    custom = (a.root_gb, a.memory_mb, a.vcpus)
    if a.flavor and any(custom):
        raise exception.InvalidInput(
            reason="give --flavor or --root-gb/--memory-mb/--vcpus, not both")
    if any(custom):
        if not all(custom):
            raise exception.InvalidInput(
                reason="--root-gb, --memory-mb and --vcpus go together")
        return embedded.spawn.Flavor('custom', *custom)
    name = a.flavor or 'm1.tiny'
    table = embedded.flavors(cloud.conf)
    if name not in table:
        raise exception.FlavorNotFound(name=name)
    return table[name]


def preflight(cloud, image):
    """What a boot needs, checked before any disk work."""
    check = hostcheck.check_state_dir(cloud.state_dir)
    if check.status != 'OK':
        raise exception.InvalidInput(reason="%s; fix: %s" % (check.detail,
                                                             check.fix))
    chosen = cloud.virt_type_for(cloud.find_image(image))
    cloud.conf.set_override('virt_type', chosen, group='amiboot')
    return chosen


class Boot(ShowOne):
    """Boot an instance of an AMI."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.epilog = BOOT_EPILOG
        p.add_argument('name', help='instance name (letters, digits, '
                       '. _ -)')
        p.add_argument('--image', required=True,
                       help='AMI name or ID (amiboot image list)')
        p.add_argument('--flavor',
                       help='flavor name (default m1.tiny; amiboot flavor '
                       'list)')
        p.add_argument('--root-gb', type=int,
                       help='custom flavor: root disk in GiB')
        p.add_argument('--memory-mb', type=int,
                       help='custom flavor: memory in MiB')
        p.add_argument('--vcpus', type=int,
                       help='custom flavor: virtual CPUs')
        p.add_argument('--key-file', metavar='PUBKEY',
                       help='SSH public key injected into root\'s '
                       'authorized_keys')
        p.add_argument('--boot-param', action='append', metavar='PARAM',
                       help='kernel parameter, checked against [amiboot] '
                       'allowed_boot_params; repeatable')
        p.add_argument('--user-data', metavar='FILE',
                       help='user data for cloud-init (NoCloud seed)')
        p.add_argument('--network', default='user',
                       help='user (default), none or bridge:NAME')
        p.add_argument('--wait', action='store_true',
                       help='follow the console until the guest is up')
        p.add_argument('--timeout', type=int,
                       help='seconds for --wait (default: [amiboot] '
                       'boot_timeout)')
        return p

    def take_action(self, a):
        cloud = self.cloud
        user_data = None
        if a.user_data:
            if not os.path.isfile(a.user_data):
                raise exception.InvalidInput(
                    reason="user data file %s not found" % a.user_data)
            with open(a.user_data, 'rb') as f:
                user_data = f.read()
        flavor = _flavor(cloud, a)
        preflight(cloud, a.image)
        inst = cloud.boot(a.name, a.image, flavor, key_file=a.key_file,
                          boot_params=a.boot_param or (),
                          user_data=user_data, network=a.network)
        if a.wait:
            if cloud.progress:
                cloud.progress.close()
            progress = Elapsed('waiting for %s' % a.name)
            try:
                outcome = cloud.wait_ready(inst, timeout=a.timeout,
                                           progress=progress)
            finally:
                progress.done()
            row = _instance_row(cloud, cloud.get(a.name))
            row['wait'] = outcome
            return self.record(a, row)
        return self.record(a, _instance_row(cloud, inst))


class InstanceList(Lister):
    """List instances."""

    def take_action(self, a):
        cloud = self.cloud
        return self.rows(a, ('name', 'state', 'flavor', 'image_id', 'ssh',
                             'uuid'),
                         [_instance_row(cloud, i)
                          for i in cloud.list_instances()])


class _InstanceCommand(ShowOne):
    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='instance name or UUID')
        return p


class InstanceShow(_InstanceCommand):
    """Show an instance (virt_type: the domain type it runs with)."""

    def take_action(self, a):
        return self.record(a, _instance_row(self.cloud,
                                            self.cloud.get(a.name)))


class InstanceStop(_InstanceCommand):
    """Stop an instance (ACPI power button, then off after 30 s)."""

    def take_action(self, a):
        return self.record(a, _instance_row(self.cloud,
                                            self.cloud.stop(a.name)))


class InstanceStart(_InstanceCommand):
    """Start a stopped instance."""

    def take_action(self, a):
        return self.record(a, _instance_row(self.cloud,
                                            self.cloud.start(a.name)))


class InstanceDelete(_InstanceCommand):
    """Delete an instance (never a cached base)."""

    def take_action(self, a):
        return self.record(a, {'deleted': self.cloud.delete(a.name).name})


class Console(Command):
    """Print the saved serial console."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='instance name or UUID')
        p.add_argument('--follow', action='store_true',
                       help='keep printing until the guest stops')
        p.add_argument('--raw', action='store_true',
                       help="the guest's bytes as they are (terminal "
                            "escapes included); by default control "
                            "characters are escaped")
        return p

    def take_action(self, a):
        cloud = self.cloud
        inst = cloud.get(a.name)
        path = cloud.console_log(inst)
        # The guest wrote it: escape sequences could drive the terminal.
        show = (lambda t: t) if a.raw else guest.printable_console
        text = guest.read_console(path)
        sys.stdout.write(show(text))
        sys.stdout.flush()
        if a.follow:
            seen = len(text.encode('utf-8', 'replace'))
            while True:
                time.sleep(0.5)
                with open(path, 'rb') as f:
                    f.seek(seen)
                    chunk = f.read()
                seen += len(chunk)
                sys.stdout.write(show(chunk.decode('utf-8', 'replace')))
                sys.stdout.flush()
                if not chunk and not cloud.is_running(inst):
                    break


class Ssh(Command):
    """SSH into an instance (its forwarded port on 127.0.0.1)."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='instance name or UUID')
        p.add_argument('--user', default='root',
                       help='remote user (default: %(default)s)')
        p.add_argument('--identity', '-i', metavar='FILE',
                       help='private key (default: the boot key without '
                       '.pub, if it exists)')
        p.add_argument('command', nargs=argparse.REMAINDER,
                       help='remote command (after --)')
        return p

    def take_action(self, a):
        inst = self.cloud.get(a.name)
        port = inst.network.get('ssh_port')
        if not port:
            raise exception.InvalidInput(
                reason="instance %s has no forwarded SSH port (network %s)"
                       % (a.name, inst.network.get('kind')))
        argv = ['ssh', '-p', str(port), '-o', 'StrictHostKeyChecking=no',
                '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
                '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
        identity = a.identity
        if not identity and inst.key_file and inst.key_file.endswith('.pub'):
            candidate = inst.key_file[:-4]
            identity = candidate if os.path.exists(candidate) else None
        if identity:
            argv += ['-i', identity]
        # Everything after the host is the remote command; ssh parses no
        # options there.
        argv += ['%s@127.0.0.1' % a.user]
        cmd = list(a.command)
        if cmd and cmd[0] == '--':
            cmd = cmd[1:]
        self.app.get_cloud().close()
        os.execvp('ssh', argv + cmd)


class CacheList(Lister):
    """List cached bases (_base) and the instances using them."""

    def take_action(self, a):
        cloud = self.cloud
        rows = cloud.cache.list()
        names = {i.uuid: i.name for i in cloud.list_instances()}
        for r in rows:
            r['users'] = ' '.join(names.get(os.path.basename(u),
                                            os.path.basename(u))
                                  for u in r['users'])
        return self.rows(a, ('path', 'size', 'disk_usage', 'age', 'users'),
                         rows)


class CacheClean(ShowOne):
    """Remove cached bases that no instance uses."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--min-age', type=int, metavar='SECONDS',
                       help='only bases unused this long (default: '
                       '[amiboot] image_cache_min_age_seconds)')
        return p

    def take_action(self, a):
        return self.record(a, {'removed': self.cloud.cache.clean(
            min_age=a.min_age)})


class FlavorList(Lister):
    """List flavors."""

    def take_action(self, a):
        return self.rows(a, ('name', 'root_gb', 'memory_mb', 'vcpus'),
                         [dataclasses.asdict(f) for f in
                          embedded.flavors(self.app.conf).values()])

    needs_cloud = False


class Doctor(Lister):
    """Check this host's requirements: OK/FAIL and the fix for each."""

    needs_cloud = False

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--kernel', metavar='FILE',
                       help='kernel to test KVM with (default: an AKI of '
                       'the store, else the host\'s)')
        return p

    def take_action(self, a):
        state = self.app.state_dir()
        kernel = a.kernel
        if not kernel:
            store = os.path.join(state, 'images')
            for name in sorted(os.listdir(store)) if os.path.isdir(
                    store) else ():
                if name.endswith('.json'):
                    with open(os.path.join(store, name)) as f:
                        if json.load(f).get('disk_format') == 'aki':
                            kernel = os.path.join(store, name[:-5])
                            break
        os.makedirs(state, mode=0o755, exist_ok=True)
        checks = hostcheck.doctor(self.app.conf, self.app.options.connect,
                                  state, kernel)
        # KVM is optional (guests run with TCG without it): only a missing
        # requirement makes the exit status 1.
        self.app.doctor_failed = any(c.status == 'FAIL' and c.check != 'KVM'
                                     for c in checks)
        return self.rows(a, ('check', 'status', 'detail', 'fix'),
                         [dataclasses.asdict(c) for c in checks])


COMMANDS = {
    'image import': ImageImport,
    'image from-disk': ImageFromDisk,
    'image snapshot': ImageSnapshot,
    'image upload': ImageUpload,
    'image download': ImageDownload,
    'image list': ImageList,
    'image show': ImageShow,
    'image delete': ImageDelete,
    'image build-ari': ImageBuildAri,
    'image build-ami': ImageBuildAmi,
    'boot': Boot,
    'list': InstanceList,
    'show': InstanceShow,
    'stop': InstanceStop,
    'start': InstanceStart,
    'delete': InstanceDelete,
    'console': Console,
    'ssh': Ssh,
    'cache list': CacheList,
    'cache clean': CacheClean,
    'flavor list': FlavorList,
    'doctor': Doctor,
    'complete': complete.CompleteCommand,
}


def make_conf(config_file):
    conf = cfg.ConfigOpts()
    amiboot_conf.register_opts(conf)
    logging.register_options(conf)
    files = []
    if config_file:
        if not os.path.isfile(config_file):
            raise exception.InvalidInput(
                reason="config file %s not found" % config_file)
        files = [config_file]
    elif os.path.isfile(DEFAULT_CONFIG):
        files = [DEFAULT_CONFIG]
    conf([], project='amiboot', default_config_files=files)
    return conf


class AmibootApp(app.App):

    def __init__(self):
        manager = commandmanager.CommandManager('amiboot.cli')
        for name, cls in COMMANDS.items():
            manager.add_command(name, cls)
        super().__init__(
            description="Boot AMI triplets (kernel, ramdisk, root "
                        "filesystem) on this host's libvirt, without "
                        "OpenStack; turn whole-disk cloud images and "
                        "stopped instances into AMIs.",
            version='1.0', command_manager=manager,
            deferred_help=True)
        self.conf = None
        self._cloud = None
        self.doctor_failed = False

    def build_option_parser(self, description, version, argparse_kwargs=None):
        p = super().build_option_parser(description, version,
                                        argparse_kwargs)
        p.add_argument('--config-file', default=None, metavar='FILE',
                       help='oslo.config file with an [amiboot] section '
                       '(default %s if it exists)' % DEFAULT_CONFIG)
        p.add_argument('--state-dir', default=None, metavar='DIR',
                       help='images, cache and instances (default: %s)'
                       % embedded.default_state_dir())
        p.add_argument('--connect', default='qemu:///system', metavar='URI',
                       help='libvirt URI (default: %(default)s)')
        return p

    def configure_logging(self):
        # oslo.log is set up in initialize_app, once the config is read.
        pass

    def state_dir(self):
        return self.options.state_dir or embedded.default_state_dir()

    def initialize_app(self, argv):
        self.conf = make_conf(self.options.config_file)
        self.conf.set_override('debug', self.options.debug)
        # Warnings, and with --debug everything, go to the terminal.
        self.conf.set_override('use_stderr', True)
        logging.setup(self.conf, 'amiboot')
        if not self.options.debug:
            std_logging.getLogger().setLevel(std_logging.WARNING)
        if os.geteuid() == 0:
            privileged.run_in_process()

    def get_cloud(self):
        if self._cloud is None:
            bar = TransferBar() if sys.stderr.isatty() else None
            self._cloud = embedded.LocalCloud(self.conf, self.state_dir(),
                                              self.options.connect,
                                              progress=bar)
        return self._cloud

    def clean_up(self, cmd, result, err):
        if self._cloud is not None:
            if self._cloud.progress:
                self._cloud.progress.close()
            self._cloud.close()
            self._cloud = None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ['help']
    a = AmibootApp()
    try:
        rc = a.run(argv)
    except ERRORS as e:
        # Raised before any command runs (a missing config file).
        if '--debug' in argv:
            raise
        msg = getattr(e, 'message', None) or str(e)
        print("amiboot: error: %s" % ' '.join(msg.split('\n')[:1]),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if rc == 0 and a.doctor_failed:
        return 1
    return rc


if __name__ == '__main__':
    sys.exit(main())
