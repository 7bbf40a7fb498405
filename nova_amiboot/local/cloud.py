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
import time
import uuid as uuid_mod

import libvirt
from lxml import etree
from oslo_log import log as logging

from nova_amiboot import bootparams
from nova_amiboot import cache as cache_mod
from nova_amiboot import domain
from nova_amiboot.conf import local as local_conf
from nova_amiboot import exception
from nova_amiboot import guest
from nova_amiboot.local import config
from nova_amiboot.local import hostcheck
from nova_amiboot.local import network as network_mod
from nova_amiboot.local import store
from nova_amiboot.privileged import nbd as priv_nbd
from nova_amiboot.privileged import net as priv_net
from nova_amiboot import safety
from nova_amiboot import spawn
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

RECORD = 'amiboot.json'
DOMAIN_PREFIX = 'amiboot-'


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
    # 'host' or 'guest' (spawn.provision_mode); None in older records.
    provision: str = None
    state: str = None          # filled from libvirt, not stored

    @property
    def domain_name(self):
        return DOMAIN_PREFIX + self.name


class LocalCloud(object):

    def __init__(self, conf, state_dir=None, uri='qemu:///system',
                 netns=None, progress=None):
        # The command's own options ([local]), beside the shared [amiboot].
        local_conf.register_opts(conf)
        self.conf = conf
        self.state_dir = state_dir or config.default_state_dir()
        os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
        # The owner mark names the state directory as the kernel resolves
        # it, so two spellings of one directory are one owner.
        self.state_dir = os.path.realpath(self.state_dir)
        self.store = store.LocalImageStore(
            os.path.join(self.state_dir, 'images'))
        self.instances_path = os.path.join(self.state_dir, 'instances')
        os.makedirs(self.instances_path, mode=0o755, exist_ok=True)
        # In-process only (the command runs as root): the instances path
        # that the privileged nbd attach accepts disks from.
        priv_nbd.set_local_instances_path(self.instances_path)
        # QEMU runs as another user: it must reach kernel, disk and base.
        for d in (self.state_dir, self.instances_path):
            os.chmod(d, 0o755)
        self.progress = progress
        self.cache = cache_mod.ImageCache(
            self.instances_path, self.store, conf, progress=progress,
            min_age=conf.local.image_cache_min_age_seconds)
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
                       root_format='ami', ramdisk_properties=None):
        """Check and store an AKI/ARI/AMI triplet; return the AMI's meta.

        All three files are inspected before anything is stored; a refusal
        leaves the store as it was. ``properties`` go on the AMI,
        ``ramdisk_properties`` on the ARI (amiboot_provision=guest for one
        built by this project: spawn.provision_mode).
        """
        config.check_name('image', name)
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
                                 dict(ramdisk_properties or {}),
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

    def _load(self, path):
        try:
            with open(path, 'rb') as f:
                return Instance(**json.loads(f.read().decode('utf-8')))
        except (ValueError, TypeError) as e:
            raise exception.InvalidInput(
                reason="instance record %s is damaged: %s" % (path, e))

    def owner(self, inst):
        """The mark this state directory puts on ``inst``'s domain."""
        return domain.Owner(self.state_dir, inst.uuid)

    def _domain(self, inst):
        """``inst``'s domain, only with our mark; None if it has none."""
        return self.host.owned(self.owner(inst), inst.name)

    def domain_type(self, inst):
        """The domain type ``inst`` runs with ('' without our domain).

        Only our own domain (owner mark), never one that shares the name or
        the uuid.
        """
        try:
            dom = self._domain(inst)
        except exception.DomainNotOwned:
            return ''
        if dom is None:
            return ''
        return etree.fromstring(dom.XMLDesc(0).encode()).get('type') or ''

    def is_running(self, inst):
        return self.host.is_running_owned(self.owner(inst), inst.name)

    def list_instances(self):
        result = []
        for entry in sorted(os.listdir(self.instances_path)):
            path = self._record_path(entry)
            if not os.path.exists(path):
                continue
            inst = self._load(path)
            inst.state = self._state(inst)
            result.append(inst)
        return sorted(result, key=lambda i: i.name)

    def get(self, name):
        for inst in self.list_instances():
            if name in (inst.name, inst.uuid):
                return inst
        raise exception.InstanceNotFound(name=name)

    def _state(self, inst):
        try:
            dom = self._domain(inst)
        except exception.DomainNotOwned:
            return 'foreign'
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

    def _check_flavor(self, name, flavor):
        for field in ('root_gb', 'memory_mb', 'vcpus'):
            value = getattr(flavor, field)
            if not isinstance(value, int) or value < 1:
                raise exception.InvalidInput(
                    reason="Instance %s: flavor %s: %s must be a positive "
                           "integer, not %s" % (name, flavor.name, field,
                                                domain.shown(value)))

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
                # Only a domain with this instance's owner mark.
                self.host.destroy_owned(self.owner(inst), inst.name)
                if inst.network.get('kind') == 'bridge':
                    priv_net.delete_link(inst.network['tap'],
                                         netns=self.netns)
            shutil.rmtree(idir, ignore_errors=True)

    def boot(self, name, image, flavor, key_file=None, boot_params=(),
             user_data=None, network='user', start=True):
        # Every check on input comes first: a refused boot changes nothing
        # (no disk, no tap, no domain).
        config.check_name('instance', name)
        network_mod.parse_network(network, name)
        self._check_flavor(name, flavor)
        # QEMU's user must reach the state directory: checked before any
        # disk work, with the fix in the message.
        check = hostcheck.check_state_dir(self.state_dir)
        if check.status != 'OK':
            raise exception.InvalidInput(
                reason="%s; fix: %s" % (check.detail, check.fix))
        self._reap_interrupted()
        if any(i.name == name for i in self.list_instances()):
            raise exception.InstanceExists(name=name)
        meta = self.find_image(image)
        params = list(boot_params) + bootparams.from_user_data(
            user_data, instance=name)
        # The same check spawn.prepare makes, here before the tap too.
        domain.build_cmdline(
            self.conf.local.default_cmdline,
            meta.properties.get('os_command_line'), params,
            self.conf.amiboot.allowed_boot_params, instance=name,
            image=meta.name)
        # Where it is provisioned, decided here too: an image refused for
        # guest mode costs no tap.
        spawn.provision_mode(self.conf, meta,
                             spawn.ramdisk_meta(self.store, meta), name)
        key = config.read_key_file(key_file, name) if key_file else None
        self._check_domain_name(name)
        virt_type = self.virt_type_for(meta)
        inst_uuid = str(uuid_mod.uuid4())
        owner = domain.Owner(self.state_dir, inst_uuid)
        taps = []
        try:
            net, net_record = network_mod.guest_network(
                network, inst_uuid, taps, self.host.conn, self.netns)
            req = spawn.InstanceRequest(
                uuid=inst_uuid, name=name, domain_name=DOMAIN_PREFIX + name,
                image_id=meta.id,
                flavor=flavor, key=key, hostname=name, user_data=user_data,
                boot_params=tuple(params), network=net)
            prepared = spawn.prepare(
                self.conf, self.cache, req, owner=owner,
                settings=spawn.BootSettings(
                    virt_type=virt_type,
                    default_cmdline=self.conf.local.default_cmdline,
                    disk_mode=self.conf.local.disk_mode,
                    vnc=self.conf.local.enable_vnc))
            xml = prepared.xml
            inst = Instance(uuid=inst_uuid, name=name, image_id=meta.id,
                            flavor=dataclasses.asdict(flavor),
                            network=net_record, created=time.time(),
                            key_file=os.path.abspath(key_file)
                            if key_file else None,
                            cmdline=prepared.cmdline,
                            provision=prepared.provision)
            self._save(inst)
            if start:
                self.host.define_and_start(xml)
            else:
                self.host.conn.defineXML(xml)
            spawn.finished(prepared.instance_dir)
        except BaseException:
            # Only what this call made: the domain with our mark (found by
            # our fresh uuid, never by name), our tap, our instance dir.
            try:
                self.host.destroy_owned(owner, name)
            except Exception as e:
                LOG.warning("Instance %(name)s: clean-up of its domain "
                            "failed: %(err)s", {'name': name, 'err': e})
            for tap in taps:
                priv_net.delete_link(tap, netns=self.netns)
            shutil.rmtree(os.path.join(self.instances_path, inst_uuid),
                          ignore_errors=True)
            raise
        inst.state = self._state(inst)
        return inst

    def virt_type_for(self, meta):
        """The domain type to boot image ``meta`` with.

        ``[local] virt_type = auto`` is decided here (hostcheck; the
        verdict is remembered per host), so every caller of boot() gets a
        type libvirt knows, not only the command line.
        """
        kernel = None
        if meta.kernel_id:
            path = os.path.join(self.store.path, meta.kernel_id)
            kernel = path if os.path.exists(path) else None
        chosen, why = hostcheck.choose_virt_type(
            self.conf.local.virt_type, self.host.conn, kernel,
            self.state_dir)
        if chosen is None:
            raise exception.InvalidInput(reason=why)
        return chosen

    def _check_domain_name(self, name):
        """Refuse a name whose libvirt domain exists (from anywhere)."""
        dom = self.host.lookup(DOMAIN_PREFIX + name)
        if dom is None:
            return
        owner = self.host.owner_of(dom)
        raise exception.DomainNameTaken(
            name=name, domain=DOMAIN_PREFIX + name,
            owner="made from state directory %s" % owner.state_dir
            if owner else "not made by amiboot")

    def wait_ready(self, inst, timeout=None, progress=None):
        """Follow the console until the ready pattern (or the guest stops).

        Returns 'ready' or 'stopped' (a guest that powers off after its
        work, like the test images, is done, not failed).
        """
        try:
            pattern = re.compile(self.conf.local.ready_pattern)
        except re.error as e:
            raise exception.InvalidInput(
                reason="Instance %s: [local] ready_pattern is not a "
                       "regular expression: %s" % (inst.name, e))
        timeout = timeout or self.conf.local.boot_timeout
        try:
            guest.wait_for_console(self.host, inst.domain_name,
                                   self.console_log(inst),
                                   lambda t: bool(pattern.search(t)),
                                   timeout, progress=progress,
                                   owner=self.owner(inst))
            return 'ready'
        except exception.GuestStopped:
            if 'reboot: Power down' in guest.read_console(
                    self.console_log(inst)):
                return 'stopped'
            raise

    def stop(self, name, timeout=30):
        inst = self.get(name)
        dom = self._domain(inst)
        if dom is not None and dom.isActive():
            try:
                dom.shutdown()      # ACPI power button
            except libvirt.libvirtError:
                pass
            utils.poll(lambda: not dom.isActive(), timeout, 0.2)
            if dom.isActive():
                dom.destroy()
        return self.get(name)

    def start(self, name):
        inst = self.get(name)
        dom = self._domain(inst)
        if dom is None:
            raise exception.InvalidInput(
                reason="instance %s has no libvirt domain" % name)
        if not dom.isActive():
            dom.create()
        return self.get(name)

    def delete(self, name):
        """Remove domain, tap and instance dir; never a cached base."""
        inst = self.get(name)
        self.host.destroy_owned(self.owner(inst), inst.name)
        if inst.network.get('kind') == 'bridge':
            priv_net.delete_link(inst.network['tap'], netns=self.netns)
        shutil.rmtree(os.path.join(self.instances_path, inst.uuid))
        return inst
