"""The embedded default: AMI boot on one host, without OpenStack.

A local image store and the local libvirt behind the same core pipeline that
the nova adapter uses. The ``amiboot`` command is a thin layer over this.

State directory layout::

    images/               LocalImageStore (bytes + Glance-like JSON)
    instances/_base/      the image cache
    instances/locks/      its locks
    instances/<uuid>/     disk, kernel, ramdisk, libvirt.xml, console.log,
                          amiboot.json (the instance record)
"""

import dataclasses
import json
import os
import re
import shutil
import socket
import time
import uuid as uuid_mod

import libvirt
from oslo_log import log as logging

from nova_amiboot import cache as cache_mod
from nova_amiboot import domain
from nova_amiboot import exception
from nova_amiboot import guest
from nova_amiboot import images
from nova_amiboot.privileged import net as priv_net
from nova_amiboot import safety
from nova_amiboot import spawn

LOG = logging.getLogger(__name__)

RECORD = 'amiboot.json'
DOMAIN_PREFIX = 'amiboot-'
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')

BUILTIN_FLAVORS = {
    # nova's classic defaults
    'm1.tiny': spawn.Flavor('m1.tiny', 1, 512, 1),
    'm1.small': spawn.Flavor('m1.small', 20, 2048, 1),
    'm1.medium': spawn.Flavor('m1.medium', 40, 4096, 2),
    'm1.large': spawn.Flavor('m1.large', 80, 8192, 4),
}


def default_state_dir():
    if os.geteuid() == 0:
        return '/var/lib/amiboot'
    data = os.environ.get('XDG_DATA_HOME') or os.path.expanduser(
        '~/.local/share')
    return os.path.join(data, 'amiboot')


def flavors(conf):
    result = dict(BUILTIN_FLAVORS)
    for item in conf.amiboot.flavors:
        try:
            name, root_gb, memory_mb, vcpus = item.split(':')
            result[name] = spawn.Flavor(name, int(root_gb), int(memory_mb),
                                        int(vcpus))
        except ValueError:
            raise exception.InvalidInput(
                reason="[amiboot] flavors: %r is not NAME:ROOT_GB:MEMORY_MB:"
                       "VCPUS" % item)
    return result


def boot_params_from_user_data(user_data):
    """The ``bootparams=`` lines of user data (the Eucalyptus recipe)."""
    params = []
    for line in (user_data or b'').decode('utf-8', 'replace').splitlines():
        line = line.strip()
        if line.startswith('bootparams='):
            params.append(line[len('bootparams='):].strip().strip('"\''))
    return params


def free_port():
    """A free TCP port on 127.0.0.1 for the guest's forwarded SSH."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _check_name(kind, name):
    if not _NAME.match(name or ''):
        raise exception.InvalidInput(
            reason="%s name %r: use letters, digits, '.', '_' and '-' "
                   "(at most 63)" % (kind, name))


@dataclasses.dataclass
class Instance:
    uuid: str
    name: str
    image_id: str
    flavor: dict
    network: dict
    created: float
    key_file: str = None
    cmdline: str = None
    state: str = None          # filled from libvirt, not stored

    @property
    def domain_name(self):
        return DOMAIN_PREFIX + self.name


class LocalCloud(object):

    def __init__(self, conf, state_dir=None, uri='qemu:///system',
                 netns=None, progress=None):
        self.conf = conf
        self.state_dir = state_dir or default_state_dir()
        self.store = images.LocalImageStore(os.path.join(self.state_dir,
                                                         'images'))
        self.instances_path = os.path.join(self.state_dir, 'instances')
        os.makedirs(self.instances_path, mode=0o755, exist_ok=True)
        # QEMU runs as another user: it must reach kernel, disk and base.
        for d in (self.state_dir, self.instances_path):
            os.chmod(d, 0o755)
        self.progress = progress
        self.cache = cache_mod.ImageCache(self.instances_path, self.store,
                                          conf, progress=progress)
        self.host = guest.Host(uri)
        self.netns = netns

    def close(self):
        self.host.close()

    # --- images -----------------------------------------------------------

    def find_image(self, name_or_id):
        for meta in self.store.list():
            if name_or_id in (meta.id, meta.name):
                return meta
        raise exception.ImageNotFound(image=name_or_id,
                                      source=self.store.name)

    def import_triplet(self, name, kernel, ramdisk, root, properties=None,
                       root_format='ami'):
        """Check and store an AKI/ARI/AMI triplet; return the AMI's meta.

        All three files are inspected before anything is stored; a refusal
        leaves the store as it was.
        """
        _check_name('image', name)
        names = (name, name + '-kernel', name + '-ramdisk')
        for meta in self.store.list():
            if meta.name in names:
                raise exception.ImageExists(name=meta.name, id=meta.id)
        for path, fmt, label in ((kernel, 'aki', names[1]),
                                 (ramdisk, 'ari', names[2]),
                                 (root, root_format, names[0])):
            if not os.path.isfile(path):
                raise exception.ImageNotFound(image=label,
                                              source="file %s" % path)
            safety.inspect(path, fmt, label, self.conf)
        added = []
        try:
            aki = self.store.add(names[1], kernel, 'aki',
                                 progress=self.progress)
            added.append(aki)
            ari = self.store.add(names[2], ramdisk, 'ari',
                                 progress=self.progress)
            added.append(ari)
            props = dict(properties or {})
            props.update(kernel_id=aki.id, ramdisk_id=ari.id)
            ami = self.store.add(name, root, root_format, props,
                                 progress=self.progress)
            added.append(ami)
        except BaseException:
            for meta in added:
                self.store.delete(meta.id)
            raise
        return ami

    def delete_image(self, name_or_id):
        """Delete an AMI, and its kernel and ramdisk if no AMI shares them.

        Refused while an instance uses any of them.
        """
        meta = self.find_image(name_or_id)
        parts = [meta.id]
        if meta.kernel_id or meta.ramdisk_id:
            others = [m for m in self.store.list() if m.id != meta.id]
            for part in (meta.kernel_id, meta.ramdisk_id):
                if part and not any(part in (o.kernel_id, o.ramdisk_id)
                                    for o in others):
                    parts.append(part)
        users = [i.name for i in self.list_instances()
                 if i.image_id in parts or i.image_id == meta.id]
        if users:
            raise exception.ImageInUse(image=meta.name,
                                       instances=', '.join(users))
        for part in parts:
            try:
                self.store.delete(part)
            except FileNotFoundError:
                pass
        return parts

    # --- instances ----------------------------------------------------------

    def _record_path(self, uuid):
        return os.path.join(self.instances_path, uuid, RECORD)

    def _save(self, inst):
        data = dataclasses.asdict(inst)
        data.pop('state')
        path = self._record_path(inst.uuid)
        with open(path + '.part', 'w') as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(path + '.part', path)

    def list_instances(self):
        result = []
        for entry in sorted(os.listdir(self.instances_path)):
            path = self._record_path(entry)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                inst = Instance(**json.load(f))
            inst.state = self._state(inst)
            result.append(inst)
        return sorted(result, key=lambda i: i.name)

    def get(self, name):
        for inst in self.list_instances():
            if name in (inst.name, inst.uuid):
                return inst
        raise exception.InstanceNotFound(name=name)

    def _state(self, inst):
        dom = self.host.lookup(inst.domain_name)
        if dom is None:
            return 'undefined'
        state = dom.state()[0]
        return {libvirt.VIR_DOMAIN_RUNNING: 'running',
                libvirt.VIR_DOMAIN_PAUSED: 'paused',
                libvirt.VIR_DOMAIN_SHUTDOWN: 'stopping',
                libvirt.VIR_DOMAIN_SHUTOFF: 'stopped',
                libvirt.VIR_DOMAIN_CRASHED: 'crashed'}.get(state, 'other')

    def console_log(self, inst):
        return os.path.join(self.instances_path, inst.uuid, 'console.log')

    def _network(self, spec, inst_uuid):
        mac = '52:54:00:%02x:%02x:%02x' % tuple(uuid_mod.UUID(
            inst_uuid).bytes[:3])
        if spec == 'none':
            return domain.Network('none'), {'kind': 'none'}
        if spec == 'user':
            port = free_port()
            passt = self._has_passt()
            return (domain.Network('user', hostfwd=((port, 22),), mac=mac,
                                   passt=passt),
                    {'kind': 'user', 'ssh_port': port, 'mac': mac,
                     'backend': 'passt' if passt else 'slirp'})
        if spec.startswith('bridge:'):
            bridge = spec.split(':', 1)[1]
            tap = 'tap' + inst_uuid.replace('-', '')[:11]
            priv_net.ensure_bridge(bridge, netns=self.netns)
            priv_net.add_tap(tap, bridge, netns=self.netns)
            return (domain.Network('bridge', bridge=bridge, tap=tap,
                                   mac=mac),
                    {'kind': 'bridge', 'bridge': bridge, 'tap': tap,
                     'mac': mac})
        raise exception.InvalidInput(
            reason="--network %r: use user, none or bridge:NAME" % spec)

    def _has_passt(self):
        # libvirt's passt backend (with portForward) came in 9.2; Debian
        # 12's libvirt 9.0 lacks it, and there QEMU's own user-mode netdev
        # forwards the port instead.
        return (self.host.conn.getLibVersion() >= 9002000
                and shutil.which('passt') is not None)

    def _reap_interrupted(self):
        """Remove what boots killed midway left (kill -9, power loss).

        spawn marks an instance dir until the boot is complete; a mark of a
        dead process means no clean-up ran. Its domain (defined only after
        the record is saved) goes only if it carries this instance's uuid.
        """
        for entry in os.listdir(self.instances_path):
            idir = os.path.join(self.instances_path, entry)
            if entry in ('_base', 'locks') or not os.path.isdir(idir) or \
                    not spawn.interrupted(idir):
                continue
            LOG.warning("Removing %s, left by an interrupted boot", idir)
            try:
                with open(os.path.join(idir, RECORD)) as f:
                    inst = Instance(**json.load(f))
            except (OSError, ValueError, TypeError):
                inst = None
            if inst is not None:
                dom = self.host.lookup(inst.domain_name)
                if dom is not None and dom.UUIDString() == inst.uuid:
                    self.host.destroy(inst.domain_name)
                if inst.network.get('kind') == 'bridge':
                    priv_net.delete_link(inst.network['tap'],
                                         netns=self.netns)
            shutil.rmtree(idir, ignore_errors=True)

    def boot(self, name, image, flavor, key_file=None, boot_params=(),
             user_data=None, network='user', start=True):
        _check_name('instance', name)
        self._reap_interrupted()
        if any(i.name == name for i in self.list_instances()):
            raise exception.InstanceExists(name=name)
        meta = self.find_image(image)
        key = None
        if key_file:
            if not os.path.isfile(key_file):
                raise exception.InvalidInput(
                    reason="key file %s not found" % key_file)
            with open(key_file) as f:
                key = f.read().strip()
        params = list(boot_params) + boot_params_from_user_data(user_data)
        inst_uuid = str(uuid_mod.uuid4())
        net = None
        try:
            net, net_record = self._network(network, inst_uuid)
            req = spawn.InstanceRequest(
                uuid=inst_uuid, name=name, domain_name=DOMAIN_PREFIX + name,
                image_id=meta.id,
                flavor=flavor, key=key, hostname=name, user_data=user_data,
                boot_params=tuple(params), network=net)
            prepared = spawn.prepare(self.conf, self.cache, req)
            inst = Instance(uuid=inst_uuid, name=name, image_id=meta.id,
                            flavor=dataclasses.asdict(flavor),
                            network=net_record, created=time.time(),
                            key_file=os.path.abspath(key_file)
                            if key_file else None,
                            cmdline=prepared.cmdline)
            self._save(inst)
            if start:
                self.host.define_and_start(prepared.xml)
            else:
                self.host.conn.defineXML(prepared.xml)
            spawn.finished(prepared.instance_dir)
        except BaseException:
            self.host.destroy(DOMAIN_PREFIX + name)
            if net is not None and net.kind == 'bridge':
                priv_net.delete_link(net.tap, netns=self.netns)
            shutil.rmtree(os.path.join(self.instances_path, inst_uuid),
                          ignore_errors=True)
            raise
        inst.state = self._state(inst)
        return inst

    def wait_ready(self, inst, timeout=None, progress=None):
        """Follow the console until the ready pattern (or the guest stops).

        Returns 'ready' or 'stopped' (a guest that powers off after its
        work, like the test images, is done, not failed).
        """
        pattern = re.compile(self.conf.amiboot.ready_pattern)
        timeout = timeout or self.conf.amiboot.boot_timeout
        try:
            guest.wait_for_console(self.host, inst.domain_name,
                                   self.console_log(inst),
                                   lambda t: bool(pattern.search(t)),
                                   timeout, progress=progress)
            return 'ready'
        except guest.GuestError as e:
            if 'stopped before it was ready' in str(e) and \
                    'reboot: Power down' in guest.read_console(
                        self.console_log(inst)):
                return 'stopped'
            raise

    def stop(self, name, timeout=30):
        inst = self.get(name)
        dom = self.host.lookup(inst.domain_name)
        if dom is not None and dom.isActive():
            try:
                dom.shutdown()      # ACPI power button
            except libvirt.libvirtError:
                pass
            deadline = time.monotonic() + timeout
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if dom.isActive():
                dom.destroy()
        return self.get(name)

    def start(self, name):
        inst = self.get(name)
        dom = self.host.lookup(inst.domain_name)
        if dom is None:
            raise exception.InvalidInput(
                reason="instance %s has no libvirt domain" % name)
        if not dom.isActive():
            dom.create()
        return self.get(name)

    def delete(self, name):
        """Remove domain, tap and instance dir; never a cached base."""
        inst = self.get(name)
        self.host.destroy(inst.domain_name)
        if inst.network.get('kind') == 'bridge':
            priv_net.delete_link(inst.network['tap'], netns=self.netns)
        shutil.rmtree(os.path.join(self.instances_path, inst.uuid))
        return inst
