"""Two compute hosts on shared storage (``tools/cloud storage shared``:
both hosts' instances_path the FUSE mount that libvirt accepts as shared):
a live migration without --block-migration, then an evacuation, each
checked from inside the guest (its serial console) and on the disk.

The module switches the hosts' storage for its own server and back; the
computes restart each time (no server may be on them then).
"""

import os
import subprocess
import time

import pytest

from tests.cloud import conftest
from tests.cloud import test_servers
from tests.cloud import test_two_hosts as two

pytestmark = pytest.mark.twohosts

ADMIN = two.ADMIN
HOST = two.HOST


def _storage(mode):
    subprocess.run([conftest.CLOUD, 'storage', mode], check=True,
                   stdin=subprocess.DEVNULL, timeout=conftest.OP_TIMEOUT)


@pytest.fixture(scope='module')
def hosts(cloud):
    if len(cloud.hosts()) < 2:
        pytest.skip('the cloud has one compute host (tools/cloud up '
                    '--hosts 2 for two)')
    _storage('shared')
    try:
        found = {h['name']: h for h in cloud.hosts()}
        # Both hosts, one directory: the shared one.
        assert len({h['dir'] for h in found.values()}) == 1, found
        yield found
    finally:
        _storage('local')


@pytest.fixture(scope='module')
def server(cloud, keypair, hosts):
    yield from two.module_server(cloud, keypair,
                                 'tier-shared-%d' % os.getpid())


def _disk(hosts, server_id):
    (d,) = {h['dir'] for h in hosts.values()}
    return os.path.join(d, server_id, 'disk')


def test_shared_live_migration_keeps_the_guest_running(cloud, hosts,
                                                       server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = two._other(hosts, src)
    disk = _disk(hosts, server['id'])
    ino = os.stat(disk).st_ino
    before, _ = two._heartbeat(cloud, server, server['boot'])
    t0 = time.monotonic()
    cloud.run('server', 'migrate', '--live-migration', '--host', dst,
              server['id'], cloud=ADMIN)
    info = two._wait_checking(cloud, hosts, server, ['ACTIVE'])
    two._figure('shared-live-migration', time.monotonic() - t0)
    assert info[HOST] == dst, cloud.run(
        'server', 'migration', 'list', '--server', server['id'],
        cloud=ADMIN, check=False).stdout
    # The same boot goes on there.
    after, text = two._heartbeat(cloud, server, server['boot'],
                                 after=before[0])
    assert after[1] > before[1], (before, after)
    assert set(conftest.BOOT_ID.findall(text)) <= {server['boot']}, \
        text[-3000:]
    # Shared: the very disk file, not a copy; nothing was copied.
    assert os.stat(disk).st_ino == ino
    two._assert_disk_on(hosts[dst], server['id'], two._image_id(info))
    stats = two._job_stats(hosts[dst],
                           info['OS-EXT-SRV-ATTR:instance_name'])
    for key, what in (('Time elapsed', 'shared-live-migration-libvirt'),
                      ('Total downtime', 'shared-live-migration-downtime')):
        if key in stats:
            two._figure(what, stats[key], ' ms')
    assert info['OS-EXT-SRV-ATTR:instance_name'] not in two._domains(
        hosts[src])
    assert os.path.exists(disk)


def test_evacuate_on_shared_storage_keeps_the_disk(cloud, hosts, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'], cloud=ADMIN)
    src = info[HOST]
    dst = two._other(hosts, src)
    domain = info['OS-EXT-SRV-ATTR:instance_name']
    disk = _disk(hosts, server['id'])
    ino = os.stat(disk).st_ino
    cloud.compute('stop', src)
    try:
        # The host fails: its guest stops too (its domain stays defined,
        # as after a power cut), and nova is told the compute is down.
        subprocess.run(['virsh', '-c', 'qemu+tcp://%s/system'
                        % hosts[src]['ip'], 'destroy', domain], check=True,
                       capture_output=True)
        cloud.run('compute', 'service', 'set', '--down', src,
                  'nova-compute', cloud=ADMIN)
        t0 = time.monotonic()
        cloud.run('server', 'evacuate', '--host', dst, server['id'],
                  cloud=ADMIN)
        info = two._wait_checking(cloud, hosts, server,
                                  ['ACTIVE', 'SHUTOFF'])
        if info['status'] == 'SHUTOFF':
            cloud.run('server', 'start', server['id'], cloud=ADMIN)
            info = two._wait_checking(cloud, hosts, server, ['ACTIVE'])
        two._figure('evacuate-shared', time.monotonic() - t0)
        assert info[HOST] == dst, info[HOST]
        # Booted there from its own disk (shared: not rebuilt from the
        # image): the same file, the key written at its first boot once.
        boot, rep, _ = cloud.wait_report(server['id'],
                                         after_boot=server['boot'])
        server['boot'] = boot
        two._assert_keyed_once(rep, server['key'])
        assert test_servers._root_kb(rep) == test_servers._root_kb(
            server['rep'])
        assert os.stat(disk).st_ino == ino
    finally:
        cloud.compute('start', src)
        two._force_up(cloud, src)
    # The source, back, removed its old domain but not the shared disk
    # the server now runs from: the guest goes on.
    deadline = time.monotonic() + conftest.OP_TIMEOUT
    while domain in two._domains(hosts[src]):
        assert time.monotonic() < deadline, 'old domain still on ' + src
        time.sleep(3)
    assert os.stat(disk).st_ino == ino
    beat, _ = two._heartbeat(cloud, server, server['boot'])
    two._heartbeat(cloud, server, server['boot'], after=beat[0])
    two._assert_disk_on(hosts[dst], server['id'], two._image_id(info))
