"""AMI servers through a real OpenStack: ``openstack server create`` and
every server operation that one host can run, checked from inside the
guest (its report on the serial console).

The tests of this module run in order on one server (the lifecycle of a
server is the point); each says what it expects of a correct cloud.
"""

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from tests.cloud import conftest

IMAGE = 'amiboot-up'          # stays up, powers off on the ACPI button
IMAGE_ALT = 'amiboot-up-alt'  # same, os_command_line has amiboot.variant=alt
PARAM = 'amiboot.tier=on'
GIB_KB = 1024 * 1024


def _root_kb(rep):
    """Total size of the guest's root filesystem in KiB (df)."""
    return int(rep['root_df_kb'].split()[0])


def _assert_root_size(rep, gib):
    # ext4 keeps ~2-5 % for its own metadata; the AMI itself is 32 MiB.
    total = _root_kb(rep)
    assert 0.9 * gib * GIB_KB < total <= gib * GIB_KB, (
        'root filesystem %d KiB, flavor %d GiB' % (total, gib))


def _assert_key(rep, pubkey):
    assert pubkey in rep['authorized_keys']
    assert rep['authorized_keys_stat'].split()[:3] == ['600', '0', '0']
    assert rep['ssh_dir'].split()[:3] == ['700', '0', '0']


def _flavor(info):
    """The flavor name of ``server show`` (a dict since microversion 2.47)."""
    flavor = info['flavor']
    if isinstance(flavor, dict):
        return flavor.get('original_name') or flavor.get('name')
    return flavor.split()[0]


# How to bring a server back to ACTIVE from a state an earlier (failed)
# test may have left it in, so that each test checks its own operation.
RECOVER = {
    'VERIFY_RESIZE': ('server', 'resize', 'revert'),
    'SHUTOFF': ('server', 'start'),
    'RESCUE': ('server', 'unrescue'),
    'SHELVED_OFFLOADED': ('server', 'unshelve'),
    'SHELVED': ('server', 'unshelve'),
}


def _ensure_active(cloud, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'] + list(RECOVER))
    if info['status'] != 'ACTIVE':
        cloud.run(*(RECOVER[info['status']] + (server['id'],)))
        cloud.wait_status(server['id'], ['ACTIVE'])
        server['boot'] = cloud.wait_report(server['id'],
                                           after_boot=server['boot'])[0]


@pytest.fixture(scope='module')
def server(cloud, keypair):
    """The module's server: [id, public key, last boot id]."""
    name = 'tier-%d' % os.getpid()
    info = cloud.json('server', 'create', '--image', IMAGE,
                      '--flavor', 'm1.tiny', '--key-name', keypair[0],
                      '--nic', 'none', '--property',
                      'amiboot_boot_params=%s' % PARAM, name)
    state = {'id': info['id'], 'key': keypair[1], 'boot': None}
    yield state
    cloud.run('server', 'delete', '--wait', info['id'], check=False)


def _new_boot(cloud, server, **kw):
    boot, rep, text = cloud.wait_report(server['id'],
                                        after_boot=server['boot'], **kw)
    server['boot'] = boot
    return rep, text


def test_create_reports_key_size_and_param(cloud, server):
    info = cloud.wait_status(server['id'], ['ACTIVE'])
    assert info['OS-EXT-STS:vm_state'] == 'active'
    rep, text = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    _assert_root_size(rep, 1)
    assert PARAM in rep['cmdline'].split()
    # The guest armed its power button (so clean shut-downs are quick).
    assert re.search(r'AMIBOOT-POWER-BUTTON armed [1-9]', text), text[-2000:]


def _assert_base_untouched(cloud, server):
    """The raw base of the server's disk is root:root 0644 while it runs.

    The base in _base is shared by every server of the image: libvirt must
    not hand it to the guest's QEMU user (its DAC driver would chown it to
    libvirt-qemu while the guest runs).
    """
    info = cloud.server(server['id'], cloud='amicloud-admin')
    image = info['image']
    image_id = image['id'] if isinstance(image, dict) else \
        image.split('(')[-1].rstrip(')')
    base = os.path.join(conftest.STATE, 'data/nova/instances/_base',
                        _base_name(image_id))
    st = os.stat(base)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o644), (
        '%s is %d:%d %o while %s runs' % (base, st.st_uid, st.st_gid,
                                          st.st_mode & 0o7777, info['id']))
    # The guest runs from an overlay over exactly that base.
    disk = os.path.join(conftest.STATE, 'data/nova/instances', info['id'],
                        'disk')
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', disk],
                         check=True, capture_output=True, text=True).stdout
    assert json.loads(out)['full-backing-filename'] == base


def test_shared_base_stays_root_owned(cloud, server):
    _ensure_active(cloud, server)
    # The guest booted and read its disk (its report: the injected key)
    # while the base is still root's, read-only to everyone else.
    _, rep, _ = cloud.wait_report(server['id'])
    _assert_key(rep, server['key'])
    _assert_base_untouched(cloud, server)


def test_denied_boot_param_is_an_error_with_reason(cloud):
    name = 'tier-denied-%d' % os.getpid()
    cloud.run('server', 'create', '--image', IMAGE, '--flavor', 'm1.tiny',
              '--nic', 'none', '--property',
              'amiboot_boot_params=init=/bin/sh', name)
    try:
        info = cloud.wait_status(name, ['ERROR'])
        message = info['fault']['message']
        assert 'init=/bin/sh' in message, info['fault']
        assert 'allowed_boot_params' in message, info['fault']
    finally:
        cloud.run('server', 'delete', '--wait', name, check=False)


def test_unsafe_image_is_an_error_with_reason(cloud, tmp_path):
    # A qcow2 file that names a host file as its backing file, uploaded as
    # an AMI: the driver must refuse it before any use.
    bad = tmp_path / 'bad.img'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', '/etc/hostname', str(bad), '64M'], check=True)
    props = cloud.json('image', 'show', IMAGE,
                       cloud='amicloud-admin')['properties']
    image = 'tier-unsafe-%d' % os.getpid()
    name = 'tier-unsafe-%d' % os.getpid()
    image_id = cloud.value('image', 'create', '--disk-format', 'ami',
                           '--container-format', 'ami', '--file', str(bad),
                           '--property', 'kernel_id=%s' % props['kernel_id'],
                           '--property',
                           'ramdisk_id=%s' % props['ramdisk_id'],
                           '-c', 'id', image)
    try:
        cloud.run('server', 'create', '--image', image_id, '--flavor',
                  'm1.tiny', '--nic', 'none', name)
        info = cloud.wait_status(name, ['ERROR'])
        # The reason names the image and what is wrong with it.
        message = info['fault']['message']
        assert image_id in message, info['fault']
        assert 'qcow2' in message, info['fault']
    finally:
        cloud.run('server', 'delete', '--wait', name, check=False)
        cloud.run('image', 'delete', image_id, check=False)


def test_hard_reboot(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'reboot', '--hard', server['id'])
    cloud.wait_status(server['id'], ['ACTIVE'])
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    assert PARAM in rep['cmdline'].split()
    _assert_base_untouched(cloud, server)


def test_soft_reboot(cloud, server):
    _ensure_active(cloud, server)
    # nova asks the guest to shut down through the ACPI power button, and
    # boots it again once it is off (libvirt starts a new console log).
    cloud.run('server', 'reboot', '--soft', server['id'])
    cloud.wait_status(server['id'], ['ACTIVE'])
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    assert PARAM in rep['cmdline'].split()


def test_stop_start(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'stop', server['id'])
    cloud.wait_status(server['id'], ['SHUTOFF'])
    cloud.run('server', 'start', server['id'])
    cloud.wait_status(server['id'], ['ACTIVE'])
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    assert PARAM in rep['cmdline'].split()


def test_rebuild_to_a_second_ami(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'rebuild', '--image', IMAGE_ALT, server['id'])
    info = cloud.wait_status(server['id'], ['ACTIVE'])
    rep, _ = _new_boot(cloud, server)
    assert 'amiboot.variant=alt' in rep['cmdline'].split()
    assert PARAM in rep['cmdline'].split()
    _assert_key(rep, server['key'])
    _assert_root_size(rep, 1)
    assert info['image'], info


def test_resize_up_and_confirm_grows_the_filesystem(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'resize', '--flavor', 'amiboot.2g', server['id'])
    cloud.wait_status(server['id'], ['VERIFY_RESIZE'])
    cloud.run('server', 'resize', 'confirm', server['id'])
    info = cloud.wait_status(server['id'], ['ACTIVE'])
    assert _flavor(info) == 'amiboot.2g', info['flavor']
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    _assert_root_size(rep, 2)
    _assert_base_untouched(cloud, server)


def test_resize_revert(cloud, server):
    _ensure_active(cloud, server)
    before = _flavor(cloud.server(server['id']))
    size_before = _root_kb(cloud.wait_report(server['id'])[1])
    cloud.run('server', 'resize', '--flavor', 'amiboot.3g', server['id'])
    cloud.wait_status(server['id'], ['VERIFY_RESIZE'])
    _new_boot(cloud, server)
    cloud.run('server', 'resize', 'revert', server['id'])
    info = cloud.wait_status(server['id'], ['ACTIVE'])
    assert _flavor(info) == before
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    assert PARAM in rep['cmdline'].split()
    # The server's own disk again, at its own size.
    assert _root_kb(rep) == size_before


def test_snapshot_and_boot_from_it(cloud, server, keypair):
    _ensure_active(cloud, server)
    snap = 'tier-snap-%d' % os.getpid()
    name = 'tier-from-snap-%d' % os.getpid()
    cloud.run('server', 'image', 'create', '--name', snap, '--wait',
              server['id'])
    try:
        assert cloud.value('image', 'show', snap, '-c', 'status') == 'active'
        cloud.wait_status(server['id'], ['ACTIVE'])
        # nova's live snapshot mirrors the disk into a copy over the same
        # base: the base stays root's through it.
        _assert_base_untouched(cloud, server)
        info = cloud.json('server', 'create', '--image', snap, '--flavor',
                          'amiboot.2g', '--key-name', keypair[0],
                          '--nic', 'none', name)
        cloud.wait_status(info['id'], ['ACTIVE'])
        _, rep, _ = cloud.wait_report(info['id'])
        _assert_key(rep, keypair[1])
        _assert_root_size(rep, 2)
    finally:
        cloud.run('server', 'delete', '--wait', name, check=False)
        cloud.run('image', 'delete', snap, check=False)


def test_shelve_offload_unshelve(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'shelve', server['id'])
    cloud.wait_status(server['id'], ['SHELVED_OFFLOADED'])
    cloud.run('server', 'unshelve', server['id'])
    cloud.wait_status(server['id'], ['ACTIVE'])
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    assert PARAM in rep['cmdline'].split()


def test_rescue_unrescue(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'rescue', server['id'])
    cloud.wait_status(server['id'], ['RESCUE'])
    _new_boot(cloud, server)
    cloud.run('server', 'unrescue', server['id'])
    cloud.wait_status(server['id'], ['ACTIVE'])
    rep, _ = _new_boot(cloud, server)
    _assert_key(rep, server['key'])
    assert PARAM in rep['cmdline'].split()


def test_rescue_keeps_the_boot_params(cloud, server):
    _ensure_active(cloud, server)
    cloud.run('server', 'rescue', server['id'])
    try:
        cloud.wait_status(server['id'], ['RESCUE'])
        rep, _ = _new_boot(cloud, server)
        # The rescue guest boots the rescue disk with the server's own
        # boot parameters.
        assert PARAM in rep['cmdline'].split()
        _assert_base_untouched(cloud, server)
    finally:
        _ensure_active(cloud, server)


def test_delete(cloud, server):
    cloud.run('server', 'delete', '--wait', server['id'])
    ids = cloud.value('server', 'list', '-c', 'ID').split()
    assert server['id'] not in ids


def _base_name(image_id):
    # nova names a cached image after the sha1 of its id
    return hashlib.sha1(image_id.encode()).hexdigest()


def test_image_cache_ages_bases_out(cloud, tmp_path):
    """An unused base ages out of the cache.

    An AMI of its own (so that no other server keeps its base in use): once
    its only server is deleted, nova's image cache manager removes the base
    (the cloud runs it every 30 s with a 60 s minimum age).
    """
    props = cloud.json('image', 'show', IMAGE,
                       cloud='amicloud-admin')['properties']
    root = tmp_path / 'root.img'
    cloud.run('image', 'save', '--file', str(root), IMAGE)
    image = 'tier-cache-%d' % os.getpid()
    name = 'tier-cache-%d' % os.getpid()
    image_id = cloud.value('image', 'create', '--disk-format', 'ami',
                           '--container-format', 'ami', '--file', str(root),
                           '--property', 'kernel_id=%s' % props['kernel_id'],
                           '--property',
                           'ramdisk_id=%s' % props['ramdisk_id'],
                           '-c', 'id', image)
    base = os.path.join(conftest.STATE, 'data/nova/instances/_base',
                        _base_name(image_id))
    try:
        cloud.run('server', 'create', '--image', image_id, '--flavor',
                  'm1.tiny', '--nic', 'none', name)
        cloud.wait_status(name, ['ACTIVE'])
        assert os.path.exists(base), 'no base for %s' % image_id
        cloud.run('server', 'delete', '--wait', name)
        deadline = time.monotonic() + 420
        while os.path.exists(base):
            assert time.monotonic() < deadline, 'still cached: %s' % base
            time.sleep(5)
    finally:
        cloud.run('server', 'delete', '--wait', name, check=False)
        cloud.run('image', 'delete', image_id, check=False)
