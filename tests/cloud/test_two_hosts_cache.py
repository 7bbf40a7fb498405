"""Image pre-caching on two compute hosts (``openstack aggregate cache
image``, compute API 2.81): an AMI enters ``_base`` with its AKI and ARI
on every host of the aggregate, through the project's cache, and a later
boot on each host downloads nothing.

A triplet of its own (the stay-up AMI's files uploaded anew, so its bases
are new names on both hosts whatever ran before). "Downloads nothing" is
read from the host's compute log (the cache logs every fetch: "Fetched
image <id>") and from the bases themselves: a fetch writes a new file and
renames it into place, a new inode.
"""

import hashlib
import os
import re
import subprocess
import sys
import time

import pytest

from tests.cloud import conftest
from tests.cloud import test_servers
from tests.cloud import test_two_hosts as two

pytestmark = pytest.mark.twohosts

ADMIN = two.ADMIN
LOGS = os.path.join(conftest.STATE, 'logs')
DONE = re.compile(r'Image pre-cache operation for image\(s\) (\S+) completed '
                  r'in [0-9.]+ seconds; (\d+) cached, (\d+) existing, (\d+) '
                  r'errors, (\d+) unsupported, (\d+) skipped')


def _log(name):
    path = os.path.join(LOGS, name)
    if not os.path.exists(path):
        return ''
    with open(path, errors='replace') as f:
        return f.read()


def _fetches(host, image_id):
    return _log('%s-compute.log' % host).count('Fetched image %s ' % image_id)


def _base(host, image_id):
    return os.path.join(host['dir'], '_base',
                        hashlib.sha1(image_id.encode()).hexdigest())


def _wait_cached(image_id, timeout=conftest.OP_TIMEOUT):
    """The conductor's summary of the pre-cache of ``image_id``."""
    deadline = time.monotonic() + timeout
    while True:
        done = [m.groups()[1:] for m in DONE.finditer(
            _log('nova-conductor.log')) if m.group(1) == image_id]
        if done:
            return tuple(int(n) for n in done[-1])
        assert time.monotonic() < deadline, (
            'no end of the pre-cache of %s in %ss' % (image_id, timeout))
        time.sleep(3)


@pytest.fixture(scope='module')
def triplet(cloud, hosts):
    """{'aki', 'ari', 'ami': image id}: the stay-up triplet, new ids."""
    files = subprocess.run(
        [sys.executable, '-m', 'tests.testbed.stayup'], cwd=conftest.TOP,
        check=True, capture_output=True, text=True).stdout.split()
    kernel, ramdisk, _, stay = files[:4]
    tag = 'tier-cache-%d' % os.getpid()
    ids = {}
    try:
        ids['aki'] = cloud.value(
            'image', 'create', '--disk-format', 'aki', '--container-format',
            'aki', '--file', kernel, '-c', 'id', tag + '-aki', cloud=ADMIN)
        # The project's ARI: guest provisioning, as amiboot-up's.
        ids['ari'] = cloud.value(
            'image', 'create', '--disk-format', 'ari', '--container-format',
            'ari', '--file', ramdisk, '--property',
            'amiboot_provision=guest', '-c', 'id', tag + '-ari', cloud=ADMIN)
        ids['ami'] = cloud.value(
            'image', 'create', '--disk-format', 'ami', '--container-format',
            'ami', '--file', stay, '--property', 'kernel_id=' + ids['aki'],
            '--property', 'ramdisk_id=' + ids['ari'], '-c', 'id',
            tag + '-ami', cloud=ADMIN)
        yield ids
    finally:
        for image_id in ids.values():
            cloud.run('image', 'delete', image_id, cloud=ADMIN, check=False)


@pytest.fixture(scope='module')
def aggregate(cloud, hosts):
    name = 'tier-cache-%d' % os.getpid()
    cloud.run('aggregate', 'create', name, cloud=ADMIN)
    try:
        for host in hosts:
            cloud.run('aggregate', 'add', 'host', name, host, cloud=ADMIN)
        yield name
    finally:
        for host in hosts:
            cloud.run('aggregate', 'remove', 'host', name, host,
                      cloud=ADMIN, check=False)
        cloud.run('aggregate', 'delete', name, cloud=ADMIN, check=False)


def test_aggregate_cache_image_then_boots_download_nothing(
        cloud, hosts, triplet, aggregate):
    for host in hosts.values():
        for image_id in triplet.values():
            assert not os.path.exists(_base(host, image_id))
    t0 = time.monotonic()
    cloud.run('--os-compute-api-version', '2.81', 'aggregate', 'cache',
              'image', aggregate, triplet['ami'], cloud=ADMIN)
    cached, existing, errors, unsupported, skipped = _wait_cached(
        triplet['ami'])
    two._figure('aggregate-cache-image', time.monotonic() - t0)
    assert (cached, existing, errors, unsupported, skipped) == (
        2, 0, 0, 0, 0)
    seen = {}
    for name, host in hosts.items():
        # All three, each fetched once through our cache on this host
        # (its log line), root-owned and read-only to the guests' QEMU.
        assert 'Image %s cached by request' % triplet['ami'] in _log(
            '%s-compute.log' % name), name
        for part, image_id in triplet.items():
            assert _fetches(name, image_id) == 1, (name, part)
            st = os.stat(_base(host, image_id))
            assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
                0, 0, 0o644), (name, part, st)
            seen[name, part] = st.st_ino

    # A boot on each host: nothing downloaded, the very same bases.
    servers = {}
    try:
        for name in hosts:
            servers[name] = cloud.json(
                'server', 'create', '--image', triplet['ami'], '--flavor',
                'm1.tiny', '--nic', 'none', '--availability-zone',
                'nova:' + name, 'tier-cache-%s-%d' % (name, os.getpid()),
                cloud=ADMIN)['id']
        for name, server_id in servers.items():
            info = cloud.wait_status(server_id, ['ACTIVE'], cloud=ADMIN)
            assert info[two.HOST] == name, info[two.HOST]
            # It booted (its report) from an overlay over that base.
            cloud.wait_report(server_id, cloud=ADMIN)
            two._assert_disk_on(hosts[name], server_id, triplet['ami'])
        for name, host in hosts.items():
            for part, image_id in triplet.items():
                assert _fetches(name, image_id) == 1, (name, part)
                st = os.stat(_base(host, image_id))
                assert st.st_ino == seen[name, part], (name, part)
                assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
                    0, 0, 0o644), (name, part, st)
    finally:
        for server_id in servers.values():
            cloud.run('server', 'delete', '--wait', server_id, cloud=ADMIN,
                      check=False)

    # Asked again: all there on both hosts, nothing fetched.
    cloud.run('--os-compute-api-version', '2.81', 'aggregate', 'cache',
              'image', aggregate, triplet['ami'], cloud=ADMIN)
    deadline = time.monotonic() + conftest.OP_TIMEOUT
    while len([m for m in DONE.finditer(_log('nova-conductor.log'))
               if m.group(1) == triplet['ami']]) < 2:
        assert time.monotonic() < deadline, 'second pre-cache never ended'
        time.sleep(3)
    assert _wait_cached(triplet['ami']) == (0, 2, 0, 0, 0)
    for name in hosts:
        for image_id in triplet.values():
            assert _fetches(name, image_id) == 1, name


def test_cold_migration_with_the_triplet_gone_from_glance(cloud, hosts,
                                                          triplet):
    """The triplet deleted from Glance and its bases from the destination.

    The move works: nova copies the AMI's base from the source host and
    the driver copies kernel and ramdisk the same way (inspected by our
    cache); the guest boots on the destination from its own disk.
    """
    src, dst = sorted(hosts)
    name = 'tier-gone-%d' % os.getpid()
    server_id = cloud.json(
        'server', 'create', '--image', triplet['ami'], '--flavor', 'm1.tiny',
        '--nic', 'none', '--availability-zone', 'nova:' + src, name,
        cloud=ADMIN)['id']
    server = {'id': server_id, 'triplet': list(triplet.values())}
    try:
        info = cloud.wait_status(server_id, ['ACTIVE'], cloud=ADMIN)
        assert info[two.HOST] == src
        boot, rep, _ = cloud.wait_report(server_id, cloud=ADMIN)
        for image_id in triplet.values():
            cloud.run('image', 'delete', image_id, cloud=ADMIN)
            base = _base(hosts[dst], image_id)
            if os.path.exists(base):
                os.unlink(base)
        t0 = time.monotonic()
        cloud.run('server', 'migrate', '--host', dst, server_id,
                  cloud=ADMIN)
        info = two._wait_checking(cloud, hosts, server,
                                  ['VERIFY_RESIZE', 'ACTIVE', 'ERROR'])
        if info['status'] != 'VERIFY_RESIZE':
            # Never lost: where it was, its disk there.
            assert info[two.HOST] == src, info
            assert os.path.exists(os.path.join(hosts[src]['dir'],
                                               server_id, 'disk'))
            raise AssertionError('the move failed: %s %s' % (
                info['status'], info.get('fault')))
        cloud.run('server', 'resize', 'confirm', server_id, cloud=ADMIN)
        info = two._wait_checking(cloud, hosts, server, ['ACTIVE'])
        two._figure('cold-migration-image-gone', time.monotonic() - t0)
        assert info[two.HOST] == dst, info[two.HOST]
        new_boot, new_rep, _ = cloud.wait_report(server_id, after_boot=boot,
                                                 cloud=ADMIN)
        assert test_servers._root_kb(new_rep) == test_servers._root_kb(rep)
        two._assert_disk_on(hosts[dst], server_id, triplet['ami'])
        for part in ('aki', 'ari'):
            # Copied from the source, then checked by our cache.
            assert os.getxattr(_base(hosts[dst], triplet[part]),
                               'user.amiboot.disk_format') == part.encode()
            assert 'Image %s is gone from Glance: copying its base' % (
                triplet[part]) in _log('%s-compute.log' % dst)
    finally:
        cloud.run('server', 'delete', '--wait', server_id, cloud=ADMIN,
                  check=False)
