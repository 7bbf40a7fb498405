"""A server moved between two compute hosts (``tools/cloud up --hosts
2``): nova's block live migration, cold migration and evacuation, each
checked from inside the guest (its serial console) and on the
destination host's disk.

The tests of this module run in order on one server of ``amiboot-up``
(whose ARI declares guest-mode provisioning), each to the host the server
is not on. The guest prints a heartbeat (``AMIBOOT-ALIVE <boot id>
<seconds up> <counter>``) every 5 s after its report: a live-migrated
server's console log starts anew on its destination, and those lines show
the same boot going on there.
"""

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from tests.cloud import conftest
from tests.cloud import test_servers

pytestmark = pytest.mark.twohosts

IMAGE = 'amiboot-up'
ADMIN = 'amicloud-admin'
HOST = 'OS-EXT-SRV-ATTR:host'
ALIVE = re.compile(r'AMIBOOT-ALIVE (\S+) ([0-9.]+) ([0-9]+)')
FIGURES = os.path.join(conftest.STATE, 'logs', 'two-hosts-figures.log')


def _figure(what, seconds, unit=''):
    """Note a measured time (seconds, or ``unit``) in the cloud's logs."""
    with open(FIGURES, 'a') as f:
        f.write('%s %s %.1f%s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S'),
                                    what, seconds, unit))


def module_server(cloud, keypair, name):
    """Create server ``name`` and yield what the tests need of it.

    Its id, public key, boot id and first report; deleted after the
    module, whatever happened.
    """
    info = cloud.json('server', 'create', '--image', IMAGE,
                      '--flavor', 'm1.tiny', '--key-name', keypair[0],
                      '--nic', 'none', name)
    try:
        cloud.wait_status(info['id'], ['ACTIVE'])
        boot, rep, _ = cloud.wait_report(info['id'])
        test_servers._assert_key(rep, keypair[1])
        test_servers._assert_root_size(rep, 1)
        yield {'id': info['id'], 'key': keypair[1], 'boot': boot,
               'rep': rep}
    finally:
        cloud.run('server', 'delete', '--wait', info['id'], check=False)


@pytest.fixture(scope='module')
def server(cloud, keypair, hosts):
    """The module's server: id, public key, boot id, first report."""
    yield from module_server(cloud, keypair, 'tier-2h-%d' % os.getpid())


def _show(cloud, server):
    return cloud.server(server['id'], cloud=ADMIN)


def _other(hosts, name):
    (other,) = [h for h in hosts if h != name]
    return other


def _image_id(info):
    image = info['image']
    return image['id'] if isinstance(image, dict) else \
        image.split('(')[-1].rstrip(')')


def _heartbeat(cloud, server, boot, after=0.0, timeout=120):
    """The guest's last heartbeat of boot ``boot`` after ``after`` s up.

    Returns ((seconds up, counter), console text).
    """
    deadline = time.monotonic() + timeout
    text = ''
    while time.monotonic() < deadline:
        text = cloud.console(server['id'])
        beats = [(float(up), int(n)) for b, up, n in ALIVE.findall(text)
                 if b == boot]
        if beats and beats[-1][0] > after:
            return beats[-1], text
        time.sleep(3)
    raise AssertionError('no heartbeat of boot %s after %.1f s up in %ss; '
                         'console:\n%s' % (boot, after, timeout,
                                           text[-3000:]))


def _assert_disk_on(host, server_id, image_id):
    """The server's disk on ``host``: a qcow2 over the raw base.

    The base is in the host's own _base, root-owned, read-only to others.
    """
    disk = os.path.join(host['dir'], server_id, 'disk')
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', disk],
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    name = hashlib.sha1(image_id.encode()).hexdigest()
    assert info['format'] == 'qcow2', info
    # nova's path (the same string on both hosts) ...
    assert info['backing-filename'] == os.path.join(
        host['instances_path'], '_base', name), info
    assert info.get('backing-filename-format') == 'raw', info
    # ... which is this host's own directory: the base was fetched here.
    base = os.path.join(host['dir'], '_base', name)
    st = os.stat(base)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644), (
        '%s on %s is %d:%d %o' % (base, host['name'], st.st_uid, st.st_gid,
                                  st.st_mode & 0o7777))


def _domains(host):
    out = subprocess.run(['virsh', '-c', 'qemu+tcp://%s/system' % host['ip'],
                          'list', '--all', '--name'], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def _force_up(cloud, host, timeout=120):
    """Unset the forced down of ``host``'s compute; wait until it is up."""
    deadline = time.monotonic() + timeout
    while True:
        proc = cloud.run('compute', 'service', 'set', '--up', host,
                         'nova-compute', cloud=ADMIN, check=False)
        state = cloud.value('compute', 'service', 'list', '--service',
                            'nova-compute', '--host', host, '-c', 'State',
                            cloud=ADMIN)
        if proc.returncode == 0 and state == 'up':
            return
        assert time.monotonic() < deadline, (
            '%s not up: %s %s' % (host, state, proc.stderr.strip()))
        time.sleep(3)


def _wait_gone(path, timeout=120):
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        assert time.monotonic() < deadline, '%s still there' % path
        time.sleep(2)


def _base_path(host, image_id):
    return os.path.join(host['dir'], '_base',
                        hashlib.sha1(image_id.encode()).hexdigest())


def _triplet(cloud, server, info):
    """AMI, AKI and ARI ids of the server's image (asked once)."""
    if 'triplet' not in server:
        image_id = _image_id(info)
        props = cloud.json('image', 'show', image_id,
                           cloud=ADMIN)['properties']
        server['triplet'] = [image_id, props['kernel_id'],
                             props['ramdisk_id']]
    return server['triplet']


def _assert_bases_root_owned(hosts, image_ids):
    """Each base of ``image_ids`` on each host: root:root 0644.

    The bases are shared by every instance of the image on the host:
    libvirt's DAC driver must never hand them to a guest's QEMU user, nor
    may any move leave them writable by it.
    """
    for host in hosts.values():
        for image_id in image_ids:
            try:
                st = os.stat(_base_path(host, image_id))
            except FileNotFoundError:
                continue
            assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
                0, 0, 0o644), ('base of %s on %s is %d:%d %o' % (
                    image_id, host['name'], st.st_uid, st.st_gid,
                    st.st_mode & 0o7777))


def _wait_checking(cloud, hosts, server, statuses,
                   timeout=conftest.OP_TIMEOUT):
    """wait_status, checking the bases at every poll and at the end.

    Every base of the server's triplet on both hosts root-owned during the
    move (each poll) and after it.
    """
    info = cloud.server(server['id'], cloud=ADMIN)
    ids = _triplet(cloud, server, info)
    deadline = time.monotonic() + timeout
    while True:
        _assert_bases_root_owned(hosts, ids)
        info = cloud.server(server['id'], cloud=ADMIN)
        if (info['status'] in statuses
                and not info.get('OS-EXT-STS:task_state')):
            _assert_bases_root_owned(hosts, ids)
            return info
        if info['status'] == 'ERROR' and 'ERROR' not in statuses:
            raise AssertionError('server %s went to ERROR: %s' % (
                server['id'], info.get('fault')))
        assert time.monotonic() < deadline, (
            'server %s still %s/%s after %ss, wanted %s' % (
                server['id'], info['status'],
                info.get('OS-EXT-STS:task_state'), timeout, statuses))
        time.sleep(2)


@contextlib.contextmanager
def _disabled(cloud, host):
    """``host``'s compute disabled: the scheduler picks the other one.

    (A resize names no host; the cloud allows resizing to the same one.)
    A disabled compute still serves its instances (a revert, a confirm).
    """
    cloud.run('compute', 'service', 'set', '--disable', host,
              'nova-compute', cloud=ADMIN)
    try:
        yield
    finally:
        cloud.run('compute', 'service', 'set', '--enable', host,
                  'nova-compute', cloud=ADMIN)


def _job_stats(host, domain):
    """{field: milliseconds} of the domain's last completed job.

    From virsh domjobinfo --completed; {} when libvirt keeps none.
    """
    proc = subprocess.run(['virsh', '-c', 'qemu+tcp://%s/system' % host['ip'],
                           'domjobinfo', '--completed', domain],
                          capture_output=True, text=True)
    stats = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(':')
        parts = value.split()
        if len(parts) == 2 and parts[1] == 'ms':
            stats[key.strip()] = float(parts[0])
    return stats


def _virtual_size(path):
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)['virtual-size']


def _flavor_gb(cloud, info):
    return int(cloud.json('flavor', 'show', test_servers._flavor(info),
                          cloud=ADMIN)['disk'])


def _assert_keyed_once(rep, key):
    """The key the ARI wrote at the first boot, once.

    The disk is the one written before the move: the layer a move makes
    for the destination carries no key, and a revert's ramdisk is the one
    the guest applied already.
    """
    test_servers._assert_key(rep, key)
    assert rep['authorized_keys'].count(key) == 1, rep['authorized_keys']


def test_block_live_migration_keeps_the_guest_running(cloud, hosts,
                                                      server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = _other(hosts, src)
    before, _ = _heartbeat(cloud, server, server['boot'])
    t0 = time.monotonic()
    cloud.run('server', 'migrate', '--live-migration', '--block-migration',
              '--host', dst, server['id'], cloud=ADMIN)
    info = _wait_checking(cloud, hosts, server, ['ACTIVE'])
    _figure('block-live-migration', time.monotonic() - t0)
    assert info[HOST] == dst, (
        'still on %s after a live migration to %s: %s' % (
            info[HOST], dst, cloud.run(
                'server', 'migration', 'list', '--server', server['id'],
                cloud=ADMIN, check=False).stdout))
    assert info['OS-EXT-STS:power_state'] in (1, 'Running'), info
    # The same boot goes on there: its heartbeat, later and counting on,
    # and no boot since (the destination's console log has no boot id).
    after, text = _heartbeat(cloud, server, server['boot'],
                             after=before[0])
    assert after[1] > before[1], (before, after)
    assert set(conftest.BOOT_ID.findall(text)) <= {server['boot']}, \
        text[-3000:]
    _assert_disk_on(hosts[dst], server['id'], _image_id(info))
    # libvirt's own figures of the migration (kept by the destination).
    stats = _job_stats(hosts[dst], info['OS-EXT-SRV-ATTR:instance_name'])
    for key, what in (('Time elapsed', 'block-live-migration-libvirt'),
                      ('Total downtime', 'block-live-migration-downtime')):
        if key in stats:
            _figure(what, stats[key], ' ms')
    # Nothing of it left on the source.
    assert info['OS-EXT-SRV-ATTR:instance_name'] not in _domains(hosts[src])
    _wait_gone(os.path.join(hosts[src]['dir'], server['id']))
    _assert_bases_root_owned(hosts, _triplet(cloud, server, info))


def test_cold_migration_and_confirm(cloud, hosts, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = _other(hosts, src)
    # The AMI's base gone from the destination (aged out, or never
    # there): fetched again there through our cache.
    ami_base = _base_path(hosts[dst], _image_id(info))
    if os.path.exists(ami_base):
        os.unlink(ami_base)
    t0 = time.monotonic()
    cloud.run('server', 'migrate', '--host', dst, server['id'], cloud=ADMIN)
    _wait_checking(cloud, hosts, server, ['VERIFY_RESIZE'])
    assert os.getxattr(ami_base, 'user.amiboot.disk_format') == b'ami'
    cloud.run('server', 'resize', 'confirm', server['id'], cloud=ADMIN)
    info = _wait_checking(cloud, hosts, server, ['ACTIVE'])
    _figure('cold-migration-confirm', time.monotonic() - t0)
    assert info[HOST] == dst, info[HOST]
    # Booted there, from its own disk: the key once, the root as it was.
    boot, rep, _ = cloud.wait_report(server['id'], after_boot=server['boot'])
    server['boot'] = boot
    test_servers._assert_key(rep, server['key'])
    assert rep['authorized_keys'].count(server['key']) == 1
    assert test_servers._root_kb(rep) == test_servers._root_kb(
        server['rep']), (rep['root_df_kb'], server['rep']['root_df_kb'])
    _assert_disk_on(hosts[dst], server['id'], _image_id(info))
    assert info['OS-EXT-SRV-ATTR:instance_name'] not in _domains(hosts[src])
    _wait_gone(os.path.join(hosts[src]['dir'], server['id']))
    _wait_gone(os.path.join(hosts[src]['dir'], server['id'] + '_resize'))
    _assert_bases_root_owned(hosts, _triplet(cloud, server, info))


def test_resize_to_the_other_host_and_revert(cloud, hosts, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = _other(hosts, src)
    flavor = test_servers._flavor(info)
    _, before, _ = cloud.wait_report(server['id'])
    assert _flavor_gb(cloud, info) == 1, flavor
    with _disabled(cloud, src):
        cloud.run('server', 'resize', '--flavor', 'amiboot.2g',
                  server['id'], cloud=ADMIN)
        info = _wait_checking(cloud, hosts, server, ['VERIFY_RESIZE'])
    assert info[HOST] == dst, info[HOST]
    # Booted on the destination, grown there (by the ARI, in the guest).
    boot, rep, _ = cloud.wait_report(server['id'], after_boot=server['boot'])
    server['boot'] = boot
    test_servers._assert_root_size(rep, 2)
    _assert_keyed_once(rep, server['key'])
    _assert_disk_on(hosts[dst], server['id'], _image_id(info))
    # The source keeps its old disk aside for the revert.
    kept = os.path.join(hosts[src]['dir'], server['id'] + '_resize', 'disk')
    kept_ino = os.stat(kept).st_ino
    assert _virtual_size(kept) == 1024 ** 3

    t0 = time.monotonic()
    cloud.run('server', 'resize', 'revert', server['id'], cloud=ADMIN)
    info = _wait_checking(cloud, hosts, server, ['ACTIVE'])
    _figure('resize-revert', time.monotonic() - t0)
    assert info[HOST] == src, info[HOST]
    assert test_servers._flavor(info) == flavor, info['flavor']
    # Its old disk, the very file, at its old size, with its data.
    disk = os.path.join(hosts[src]['dir'], server['id'], 'disk')
    assert os.stat(disk).st_ino == kept_ino
    assert _virtual_size(disk) == 1024 ** 3
    boot, rep, _ = cloud.wait_report(server['id'], after_boot=server['boot'])
    server['boot'] = boot
    _assert_keyed_once(rep, server['key'])
    assert test_servers._root_kb(rep) == test_servers._root_kb(before), (
        rep['root_df_kb'], before['root_df_kb'])
    _assert_disk_on(hosts[src], server['id'], _image_id(info))
    assert info['OS-EXT-SRV-ATTR:instance_name'] not in _domains(hosts[dst])
    _wait_gone(os.path.join(hosts[dst]['dir'], server['id']))
    _wait_gone(os.path.join(hosts[src]['dir'], server['id'] + '_resize'))
    _assert_bases_root_owned(hosts, _triplet(cloud, server, info))


def test_resize_to_the_other_host_and_confirm(cloud, hosts, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = _other(hosts, src)
    t0 = time.monotonic()
    with _disabled(cloud, src):
        cloud.run('server', 'resize', '--flavor', 'amiboot.2g',
                  server['id'], cloud=ADMIN)
        info = _wait_checking(cloud, hosts, server, ['VERIFY_RESIZE'])
    cloud.run('server', 'resize', 'confirm', server['id'], cloud=ADMIN)
    info = _wait_checking(cloud, hosts, server, ['ACTIVE'])
    _figure('resize-confirm', time.monotonic() - t0)
    assert info[HOST] == dst, info[HOST]
    assert test_servers._flavor(info) == 'amiboot.2g', info['flavor']
    # The filesystem grown to the new flavor, seen by the guest; its data.
    boot, rep, _ = cloud.wait_report(server['id'], after_boot=server['boot'])
    server['boot'] = boot
    test_servers._assert_root_size(rep, 2)
    _assert_keyed_once(rep, server['key'])
    disk = os.path.join(hosts[dst]['dir'], server['id'], 'disk')
    assert _virtual_size(disk) == 2 * 1024 ** 3
    _assert_disk_on(hosts[dst], server['id'], _image_id(info))
    assert info['OS-EXT-SRV-ATTR:instance_name'] not in _domains(hosts[src])
    _wait_gone(os.path.join(hosts[src]['dir'], server['id']))
    _wait_gone(os.path.join(hosts[src]['dir'], server['id'] + '_resize'))
    _assert_bases_root_owned(hosts, _triplet(cloud, server, info))


def test_evacuate_from_a_stopped_host(cloud, hosts, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = _other(hosts, src)
    t0 = time.monotonic()
    cloud.compute('stop', src)
    try:
        cloud.run('compute', 'service', 'set', '--down', src, 'nova-compute',
                  cloud=ADMIN)
        t1 = time.monotonic()
        cloud.run('server', 'evacuate', '--host', dst, server['id'],
                  cloud=ADMIN)
        # From compute API 2.95 on, an evacuated server is stopped there.
        info = _wait_checking(cloud, hosts, server, ['ACTIVE', 'SHUTOFF'])
        if info['status'] == 'SHUTOFF':
            cloud.run('server', 'start', server['id'], cloud=ADMIN)
            info = _wait_checking(cloud, hosts, server, ['ACTIVE'])
        _figure('evacuate', time.monotonic() - t1)
        assert info[HOST] == dst, info[HOST]
        # Rebuilt there from its image: a new boot, keyed and grown anew.
        boot, rep, _ = cloud.wait_report(server['id'],
                                         after_boot=server['boot'])
        server['boot'] = boot
        test_servers._assert_key(rep, server['key'])
        # The flavor's size (the resizes before it may have grown it).
        test_servers._assert_root_size(rep, _flavor_gb(cloud, info))
        _assert_disk_on(hosts[dst], server['id'], _image_id(info))
    finally:
        # The cloud whole again: the compute back (it removes the
        # evacuated guest it still has and completes the evacuation's
        # record: nova forces a host up only after that), then the host.
        cloud.compute('start', src)
        _force_up(cloud, src)
        _figure('evacuate-with-compute-stop-start', time.monotonic() - t0)
    assert info['OS-EXT-SRV-ATTR:instance_name'] not in _domains(hosts[src])
    _wait_gone(os.path.join(hosts[src]['dir'], server['id']))
    _assert_bases_root_owned(hosts, _triplet(cloud, server, info))
