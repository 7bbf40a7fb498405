"""amiboot: AMI boot on one host without OpenStack (the embedded default).

A thin command line over nova_amiboot.embedded: parse, call, print.
"""

import argparse
import dataclasses
import json
import logging as std_logging
import os
import shutil
import sys
import time

import libvirt
from oslo_config import cfg
from oslo_log import log as logging

from nova_amiboot import ami as ami_mod
from nova_amiboot import ari
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import diskimage
from nova_amiboot import embedded
from nova_amiboot import exception
from nova_amiboot import guest
from nova_amiboot import privileged
from nova_amiboot import snapshot

DEFAULT_CONFIG = '/etc/amiboot/amiboot.conf'


def _table(rows, columns):
    if not rows:
        return ''
    widths = [max(len(c), *(len(str(r.get(c, ''))) for r in rows))
              for c in columns]
    lines = ['  '.join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    for r in rows:
        lines.append('  '.join(str(r.get(c, '')).ljust(w)
                               for c, w in zip(columns, widths)))
    return '\n'.join(line.rstrip() for line in lines)


def emit(args, data, columns=None):
    """Print a dict or a list of dicts as a table/key list or as JSON."""
    if args.format == 'json':
        print(json.dumps(data, indent=1, sort_keys=True))
    elif isinstance(data, list):
        out = _table(data, columns)
        if out:
            print(out)
    else:
        width = max(len(k) for k in data)
        for k in sorted(data):
            v = data[k]
            if isinstance(v, (dict, list)):
                v = json.dumps(v, sort_keys=True)
            print('%s  %s' % (k.ljust(width), v))


def _image_row(meta):
    d = dataclasses.asdict(meta)
    d.update(d.pop('properties'))
    return d


def _instance_row(inst):
    d = dataclasses.asdict(inst)
    d['flavor'] = inst.flavor['name']
    d['ssh'] = ('127.0.0.1:%s' % inst.network['ssh_port']
                if inst.network.get('ssh_port') else '')
    return d


class Progress(object):
    """One status line on a terminal; silent otherwise."""

    def __init__(self, label):
        self.label = label
        self.tty = sys.stderr.isatty()

    def __call__(self, elapsed):
        if self.tty:
            sys.stderr.write('\r%s %4.0f s' % (self.label, elapsed))
            sys.stderr.flush()

    def done(self):
        if self.tty:
            sys.stderr.write('\n')


class TransferBar(object):
    """A progress bar for copies, downloads and conversions."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.label = None

    def __call__(self, label, done, total):
        if label != self.label and self.label is not None:
            self.stream.write('\n')
        self.label = label
        if total:
            width = 30
            filled = int(width * done / total)
            self.stream.write('\r%-40s [%s%s] %3d%%' % (
                label[:40], '#' * filled, '.' * (width - filled),
                100 * done // total))
        else:
            self.stream.write('\r%-40s ...' % label[:40])
        self.stream.flush()

    def close(self):
        if self.label is not None:
            self.stream.write('\n')
            self.label = None


# --- commands -----------------------------------------------------------

def _properties(items):
    props = {}
    for item in items or ():
        k, sep, v = item.partition('=')
        if not sep:
            raise exception.InvalidInput(
                reason="--property %r is not KEY=VALUE" % item)
        props[k] = v
    return props


def cmd_image_import(cloud, args):
    props = _properties(args.property)
    meta = cloud.import_triplet(args.name, args.kernel, args.ramdisk,
                                args.root, props,
                                root_format=args.root_format)
    emit(args, _image_row(meta))


def cmd_image_list(cloud, args):
    emit(args, [_image_row(m) for m in cloud.store.list()],
         ['name', 'id', 'disk_format', 'size', 'kernel_id', 'ramdisk_id'])


def cmd_image_show(cloud, args):
    emit(args, _image_row(cloud.find_image(args.name)))


def cmd_image_delete(cloud, args):
    deleted = cloud.delete_image(args.name)
    if args.format == 'json':
        emit(args, {'deleted': deleted})
    else:
        print("deleted %s" % ' '.join(deleted))


def cmd_image_build_ari(cloud, args):
    order = ari.build_ari(args.output, modules_dir=args.modules_dir,
                          kernel_package=args.kernel_package,
                          modules=args.module or ari.DEFAULT_MODULES)
    emit(args, {'output': args.output, 'modules': order})


def cmd_image_build_ami(cloud, args):
    size = ami_mod.build_ami(args.from_dir, args.output, label=args.label)
    emit(args, {'output': args.output, 'size': size})


def cmd_image_from_disk(cloud, args):
    props = _properties(args.property)
    work = diskimage.work_dir(os.path.join(cloud.state_dir, 'tmp'))
    try:
        trip = diskimage.convert(args.source, args.source, work, cloud.conf,
                                 kernel_version=args.kernel_version,
                                 label=args.label,
                                 append=' '.join(args.append or ()))
        props.setdefault('os_command_line', trip.cmdline)
        meta = cloud.import_triplet(args.name, trip.kernel, trip.ramdisk,
                                    trip.root, props)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = _image_row(meta)
    row.update(kernel_version=trip.kernel_version, os=trip.os_name,
               root_partition=trip.root_partition,
               fstab_dropped=trip.dropped_fstab)
    emit(args, row)


def cmd_image_snapshot(cloud, args):
    meta, removed = snapshot.snapshot(cloud, args.instance, args.name,
                                      keep_injected=args.keep_injected)
    row = _image_row(meta)
    row['removed'] = removed
    emit(args, row)


def _flavor(cloud, args):
    custom = (args.root_gb, args.memory_mb, args.vcpus)
    if args.flavor and any(custom):
        raise exception.InvalidInput(
            reason="give --flavor or --root-gb/--memory-mb/--vcpus, not both")
    if any(custom):
        if not all(custom):
            raise exception.InvalidInput(
                reason="--root-gb, --memory-mb and --vcpus go together")
        return embedded.spawn.Flavor('custom', *custom)
    name = args.flavor or 'm1.tiny'
    table = embedded.flavors(cloud.conf)
    if name not in table:
        raise exception.FlavorNotFound(name=name)
    return table[name]


def cmd_boot(cloud, args):
    user_data = None
    if args.user_data:
        if not os.path.isfile(args.user_data):
            raise exception.InvalidInput(
                reason="user data file %s not found" % args.user_data)
        with open(args.user_data, 'rb') as f:
            user_data = f.read()
    inst = cloud.boot(args.name, args.image, _flavor(cloud, args),
                      key_file=args.key_file,
                      boot_params=args.boot_param or (),
                      user_data=user_data, network=args.network)
    if args.wait:
        if cloud.progress:
            cloud.progress.close()
        progress = Progress('waiting for %s' % args.name)
        try:
            outcome = cloud.wait_ready(inst, timeout=args.timeout,
                                       progress=progress)
        finally:
            progress.done()
        inst = cloud.get(args.name)
        row = _instance_row(inst)
        row['wait'] = outcome
        emit(args, row)
    else:
        emit(args, _instance_row(inst))


def cmd_list(cloud, args):
    emit(args, [_instance_row(i) for i in cloud.list_instances()],
         ['name', 'state', 'flavor', 'image_id', 'ssh', 'uuid'])


def cmd_show(cloud, args):
    emit(args, _instance_row(cloud.get(args.name)))


def cmd_console(cloud, args):
    inst = cloud.get(args.name)
    path = cloud.console_log(inst)
    text = guest.read_console(path)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.follow:
        seen = len(text.encode('utf-8', 'replace'))
        while True:
            time.sleep(0.5)
            with open(path, 'rb') as f:
                f.seek(seen)
                chunk = f.read()
            seen += len(chunk)
            sys.stdout.write(chunk.decode('utf-8', 'replace'))
            sys.stdout.flush()
            if not chunk and not cloud.host.is_running(inst.domain_name):
                break


def cmd_ssh(cloud, args):
    inst = cloud.get(args.name)
    port = inst.network.get('ssh_port')
    if not port:
        raise exception.InvalidInput(
            reason="instance %s has no forwarded SSH port (network %s)"
                   % (args.name, inst.network.get('kind')))
    argv = ['ssh', '-p', str(port), '-o', 'StrictHostKeyChecking=no',
            '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
            '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10']
    identity = args.identity
    if not identity and inst.key_file and inst.key_file.endswith('.pub'):
        candidate = inst.key_file[:-4]
        identity = candidate if os.path.exists(candidate) else None
    if identity:
        argv += ['-i', identity]
    # Everything after the host is the remote command; ssh parses no
    # options there.
    argv += ['%s@127.0.0.1' % args.user]
    command = list(args.command)
    if command and command[0] == '--':
        command = command[1:]
    os.execvp('ssh', argv + command)


def cmd_stop(cloud, args):
    emit(args, _instance_row(cloud.stop(args.name)))


def cmd_start(cloud, args):
    emit(args, _instance_row(cloud.start(args.name)))


def cmd_delete(cloud, args):
    inst = cloud.delete(args.name)
    if args.format == 'json':
        emit(args, {'deleted': inst.name})
    else:
        print("deleted %s" % inst.name)


def cmd_cache_list(cloud, args):
    rows = cloud.cache.list()
    names = {i.uuid: i.name for i in cloud.list_instances()}
    for r in rows:
        r['users'] = ' '.join(names.get(os.path.basename(u),
                                        os.path.basename(u))
                              for u in r['users'])
    emit(args, rows, ['path', 'size', 'disk_usage', 'age', 'users'])


def cmd_cache_clean(cloud, args):
    removed = cloud.cache.clean(min_age=args.min_age)
    if args.format == 'json':
        emit(args, {'removed': removed})
    else:
        print('\n'.join("removed %s" % p for p in removed) or "nothing to "
              "remove")


def cmd_flavor_list(cloud, args):
    emit(args, [dataclasses.asdict(f) for f in
                embedded.flavors(cloud.conf).values()],
         ['name', 'root_gb', 'memory_mb', 'vcpus'])


# --- parser ---------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(
        prog='amiboot',
        description="Boot AMI triplets (kernel, ramdisk, root filesystem) "
                    "on this host's libvirt.")
    p.add_argument('--config-file', default=None,
                   help='oslo.config file (default %s if it exists)'
                        % DEFAULT_CONFIG)
    p.add_argument('--state-dir', default=None,
                   help='images, cache and instances (default: %s)'
                        % embedded.default_state_dir())
    p.add_argument('--connect', default='qemu:///system',
                   help='libvirt URI (default: %(default)s)')
    p.add_argument('--debug', action='store_true',
                   help='log everything; tracebacks on errors')
    p.add_argument('--format', choices=['table', 'json'], default='table')
    sub = p.add_subparsers(dest='command', required=True)

    def add(parent, name, func, help_):
        sp = parent.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    img = sub.add_parser('image', help='the local image store')
    isub = img.add_subparsers(dest='image_command', required=True)
    sp = add(isub, 'import', cmd_image_import,
             'check and store an AKI/ARI/AMI triplet')
    sp.add_argument('name')
    sp.add_argument('--kernel', required=True, metavar='FILE')
    sp.add_argument('--ramdisk', required=True, metavar='FILE')
    sp.add_argument('--root', required=True, metavar='FILE')
    sp.add_argument('--root-format', choices=['ami', 'qcow2'], default='ami',
                    help='the root file is a bare filesystem (ami) or a '
                         'qcow2 of one')
    sp.add_argument('--property', action='append', metavar='K=V',
                    help='image property, e.g. os_command_line=...')
    add(isub, 'list', cmd_image_list, 'list images')
    sp = add(isub, 'show', cmd_image_show, 'show an image')
    sp.add_argument('name')
    sp = add(isub, 'delete', cmd_image_delete,
             'delete an image (refused while an instance uses it)')
    sp.add_argument('name')
    sp = add(isub, 'build-ari', cmd_image_build_ari,
             'build an ARI for a cloud kernel: loads its virtio modules in '
             'dependency order, mounts root= and switch_roots into init')
    sp.set_defaults(needs_cloud=False)
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument('--kernel-package', metavar='DEB')
    src.add_argument('--modules-dir', metavar='DIR')
    sp.add_argument('--module', action='append', metavar='NAME')
    sp.add_argument('output')
    sp = add(isub, 'build-ami', cmd_image_build_ami,
             'build an ext4 AMI from a directory tree')
    sp.set_defaults(needs_cloud=False)
    sp.add_argument('--from-dir', required=True, metavar='DIR')
    sp.add_argument('--label', default='cloudimg-rootfs')
    sp.add_argument('output')

    sp = add(isub, 'from-disk', cmd_image_from_disk,
             'make an AMI triplet of a whole-disk image (raw or qcow2, '
             'MBR or GPT) and import it')
    sp.add_argument('source', metavar='SRC')
    sp.add_argument('name')
    sp.add_argument('--kernel-version', metavar='VERSION')
    sp.add_argument('--label', default=diskimage.DEFAULT_LABEL)
    sp.add_argument('--append', action='append', metavar='PARAMS')
    sp.add_argument('--property', action='append', metavar='K=V')

    sp = add(isub, 'snapshot', cmd_image_snapshot,
             'save a stopped instance as a new AMI sharing its kernel and '
             'ramdisk')
    sp.add_argument('instance')
    sp.add_argument('name')
    sp.add_argument('--keep-injected', action='store_true')

    sp = add(sub, 'boot', cmd_boot, 'boot an instance of an AMI')
    sp.add_argument('name')
    sp.add_argument('--image', required=True)
    sp.add_argument('--flavor')
    sp.add_argument('--root-gb', type=int)
    sp.add_argument('--memory-mb', type=int)
    sp.add_argument('--vcpus', type=int)
    sp.add_argument('--key-file', metavar='PUBKEY')
    sp.add_argument('--boot-param', action='append', metavar='PARAM',
                    help='kernel parameter, checked against '
                         '[amiboot] allowed_boot_params')
    sp.add_argument('--user-data', metavar='FILE')
    sp.add_argument('--network', default='user',
                    help='user (default; SSH forwarded from 127.0.0.1), '
                         'none, or bridge:NAME')
    sp.add_argument('--wait', action='store_true',
                    help='follow the console until the guest is up')
    sp.add_argument('--timeout', type=int,
                    help='seconds for --wait ([amiboot] boot_timeout)')

    add(sub, 'list', cmd_list, 'list instances')
    for name, func, help_ in (('show', cmd_show, 'show an instance'),
                              ('stop', cmd_stop, 'stop an instance'),
                              ('start', cmd_start, 'start an instance'),
                              ('delete', cmd_delete,
                               'delete an instance (never a cached base)')):
        add(sub, name, func, help_).add_argument('name')
    sp = add(sub, 'console', cmd_console, 'print the saved serial console')
    sp.add_argument('name')
    sp.add_argument('--follow', action='store_true')
    sp = add(sub, 'ssh', cmd_ssh, 'ssh into an instance as root')
    sp.add_argument('name')
    sp.add_argument('--user', default='root')
    sp.add_argument('--identity', '-i', metavar='FILE')
    sp.add_argument('command', nargs=argparse.REMAINDER)

    cache = sub.add_parser('cache', help='the image cache (_base)')
    csub = cache.add_subparsers(dest='cache_command', required=True)
    add(csub, 'list', cmd_cache_list, 'list cached bases and their users')
    sp = add(csub, 'clean', cmd_cache_clean, 'remove unused cached bases')
    sp.add_argument('--min-age', type=int, metavar='SECONDS',
                    help='[amiboot] image_cache_min_age_seconds')
    flavor = sub.add_parser('flavor', help='flavors')
    fsub = flavor.add_subparsers(dest='flavor_command', required=True)
    add(fsub, 'list', cmd_flavor_list, 'list flavors')
    return p


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


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        conf = make_conf(args.config_file)
        conf.set_override('debug', args.debug)
        # Warnings, and with --debug everything, go to the terminal.
        conf.set_override('use_stderr', True)
        logging.setup(conf, 'amiboot')
        if not args.debug:
            std_logging.getLogger().setLevel(std_logging.WARNING)
        if os.geteuid() == 0:
            privileged.run_in_process()
        if not getattr(args, 'needs_cloud', True):
            # Builders touch neither the state directory nor libvirt.
            args.func(None, args)
            return 0
        bar = TransferBar() if sys.stderr.isatty() else None
        cloud = embedded.LocalCloud(conf, args.state_dir, args.connect,
                                    progress=bar)
        try:
            args.func(cloud, args)
        finally:
            if bar:
                bar.close()
            cloud.close()
    except (exception.AmibootException, libvirt.libvirtError,
            OSError) as e:
        if args.debug:
            raise
        msg = getattr(e, 'message', None) or str(e)
        print("amiboot: error: %s" % ' '.join(msg.split('\n')[:1]),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
