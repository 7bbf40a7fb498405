"""amiboot server ...: instances on this host's libvirt.

``amiboot server create|list|show|stop|start|delete|console|ssh``; the
first verbs (``amiboot boot``, ``amiboot list``, ...) stay as aliases.
"""

import argparse
import dataclasses
import os
import sys
import time

from nova_amiboot.cli import common
from nova_amiboot import exception
from nova_amiboot import guest
from nova_amiboot.local import config as local_config
from nova_amiboot import spawn

BOOT_EPILOG = """\
flavors:
  --flavor NAME picks the root disk size, memory and vCPUs ('amiboot flavor
  list': m1.tiny to m1.large, plus [local] flavors in the config file);
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
directory and picks the domain type ([local] virt_type; 'amiboot doctor'
shows the host's verdict).
"""


def instance_row(cloud, inst):
    d = dataclasses.asdict(inst)
    d['flavor'] = inst.flavor['name']
    d['ssh'] = ('127.0.0.1:%s' % inst.network['ssh_port']
                if inst.network.get('ssh_port') else '')
    d['virt_type'] = cloud.domain_type(inst)
    return d


def _flavor(cloud, a):
    custom = (a.root_gb, a.memory_mb, a.vcpus)
    if a.flavor and any(custom):
        raise exception.InvalidInput(
            reason="give --flavor or --root-gb/--memory-mb/--vcpus, not both")
    if any(custom):
        if not all(custom):
            raise exception.InvalidInput(
                reason="--root-gb, --memory-mb and --vcpus go together")
        return spawn.Flavor('custom', *custom)
    name = a.flavor or 'm1.tiny'
    table = local_config.flavors(cloud.conf)
    if name not in table:
        raise exception.FlavorNotFound(name=name)
    return table[name]


class CreateServer(common.ShowOne):
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
                       help='seconds for --wait (default: [local] '
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
        inst = cloud.boot(a.name, a.image, flavor, key_file=a.key_file,
                          boot_params=a.boot_param or (),
                          user_data=user_data, network=a.network)
        if a.wait:
            if cloud.progress:
                cloud.progress.close()
            progress = common.Elapsed('waiting for %s' % a.name)
            try:
                outcome = cloud.wait_ready(inst, timeout=a.timeout,
                                           progress=progress)
            finally:
                progress.done()
            row = instance_row(cloud, cloud.get(a.name))
            row['wait'] = outcome
            return self.record(a, row)
        return self.record(a, instance_row(cloud, inst))


class ListServer(common.Lister):
    """List instances."""

    def take_action(self, a):
        cloud = self.cloud
        return self.rows(a, ('name', 'state', 'flavor', 'image_id', 'ssh',
                             'uuid'),
                         [instance_row(cloud, i)
                          for i in cloud.list_instances()])


class _ServerCommand(common.ShowOne):
    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='instance name or UUID')
        return p


class ShowServer(_ServerCommand):
    """Show an instance (virt_type: the domain type it runs with)."""

    def take_action(self, a):
        return self.record(a, instance_row(
            self.cloud, self.cloud.get(a.name)))


class StopServer(_ServerCommand):
    """Stop an instance (ACPI power button, then off after 30 s)."""

    def take_action(self, a):
        return self.record(a, instance_row(
            self.cloud, self.cloud.stop(a.name)))


class StartServer(_ServerCommand):
    """Start a stopped instance."""

    def take_action(self, a):
        return self.record(a, instance_row(
            self.cloud, self.cloud.start(a.name)))


class DeleteServer(_ServerCommand):
    """Delete an instance (never a cached base)."""

    def take_action(self, a):
        return self.record(a, {'deleted': self.cloud.delete(a.name).name})


class ServerConsole(common.Command):
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


class ServerSsh(common.Command):
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


def _alias(cls, verb):
    # Today's verbs (amiboot boot, list, ...): the same command, left out
    # of the help listing, which shows the server ones.
    return type(cls.__name__ + 'Alias', (cls,), {
        'deprecated': True,
        '__doc__': "Alias of 'amiboot server %s'." % verb})


Boot = _alias(CreateServer, 'create')
List = _alias(ListServer, 'list')
Show = _alias(ShowServer, 'show')
Stop = _alias(StopServer, 'stop')
Start = _alias(StartServer, 'start')
Delete = _alias(DeleteServer, 'delete')
Console = _alias(ServerConsole, 'console')
Ssh = _alias(ServerSsh, 'ssh')
