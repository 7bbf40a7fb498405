"""Where a server is provisioned, through a real OpenStack.

The lifecycle module (test_servers) runs on ``amiboot-up``, whose ARI
declares ``amiboot_provision=guest``. Here, one server each of:

- ``amiboot-up-xfs``: the stay-up tree on an XFS root (made without
  mounting, ``mkfs.xfs -p``), guest mode: the ARI grows XFS and writes the
  key and hostname at first boot, and grows it again after a resize;
- ``amiboot-up-host``: the ext4 stay-up AMI on the same ARI uploaded
  without the declaration (as an ARI the project did not build): the host
  grows and keys the disk.

Each is created with a key, checked from inside the guest (its report on
the serial console), resized to 2 GiB, confirmed and checked again.
"""

import os
import re

import pytest

from tests.cloud import test_servers


def _create(cloud, keypair, image, name):
    info = cloud.json('server', 'create', '--image', image,
                      '--flavor', 'm1.tiny', '--key-name', keypair[0],
                      '--nic', 'none', name)
    cloud.wait_status(info['id'], ['ACTIVE'])
    return info['id']


def _resize(cloud, server_id, boot):
    cloud.run('server', 'resize', '--flavor', 'amiboot.2g', server_id)
    cloud.wait_status(server_id, ['VERIFY_RESIZE'])
    cloud.run('server', 'resize', 'confirm', server_id)
    info = cloud.wait_status(server_id, ['ACTIVE'])
    assert test_servers._flavor(info) == 'amiboot.2g', info['flavor']
    return cloud.wait_report(server_id, after_boot=boot)


def _ari_lines(text, boot):
    """The ARI's console lines of one boot (the boot id its AMI printed).

    The ARI writes each line to every active console; nova's kernel line
    ends in console=hvc0, and the serial console is what nova logs.
    """
    head = text.split('AMIBOOT-BOOT-ID ' + boot)[0]
    this = head.rsplit('AMIBOOT-BOOT-ID ', 1)[-1]
    return [line[line.index('amiboot-ari: '):].strip()
            for line in this.splitlines() if 'amiboot-ari: ' in line]


def _mib(number, unit):
    return float(number) * (1024 if unit == 'G' else 1)


def _grew(lines, fstype, gib):
    """The ARI's grow line: ``fstype`` grown to about ``gib`` GiB.

    What df counts of a grown root is a little less than the disk (XFS
    keeps its log: 960 MiB of a 1 GiB disk).
    """
    for x in lines:
        m = re.match(r'amiboot-ari: grew / from ([0-9.]+) ([MG])iB to '
                     r'([0-9.]+) ([MG])iB \((\w+)\) in [0-9.]+ s$', x)
        if m and m.group(5) == fstype:
            before, after = _mib(*m.group(1, 2)), _mib(*m.group(3, 4))
            if before < after and 0.9 * gib * 1024 <= after <= gib * 1024:
                return True
    return False


def _assert_key_once(rep, pubkey):
    test_servers._assert_key(rep, pubkey)
    assert rep['authorized_keys'].count(pubkey) == 1, rep['authorized_keys']


@pytest.mark.parametrize('image,fstype,guest', [
    ('amiboot-up-xfs', 'xfs', True),
    ('amiboot-up-host', 'ext4', False),
])
def test_create_and_resize(cloud, keypair, image, fstype, guest):
    name = 'tier-%s-%d' % (fstype, os.getpid())
    server_id = _create(cloud, keypair, image, name)
    try:
        boot, rep, text = cloud.wait_report(server_id)
        assert rep['root_dev'].split()[1] == fstype, rep['root_dev']
        _assert_key_once(rep, keypair[1])
        test_servers._assert_root_size(rep, 1)
        lines = _ari_lines(text, boot)
        # The ARI ran (its lines are in nova's console log) ...
        assert any(x.startswith('amiboot-ari: switch_root at ')
                   for x in lines), text[-3000:]
        if guest:
            # Host mode refuses an XFS root (it cannot grow or key it): a
            # grown XFS root with the key and the server's hostname was
            # provisioned by the ARI, and it says so.
            assert rep['hostname'] == name, rep['hostname']
            assert rep['etc_hostname'].strip() == name, rep['etc_hostname']
            assert _grew(lines, fstype, 1), lines
            assert 'amiboot-ari: hostname %s' % name in lines, lines
            assert any(re.match(r'amiboot-ari: layer [0-9a-f]{12} applied$',
                                x) for x in lines), lines
        else:
            # ... and in host mode it had no layer to apply.
            assert not [x for x in lines if 'layer' in x or 'grew' in x], \
                lines

        boot, rep, text = _resize(cloud, server_id, boot)
        _assert_key_once(rep, keypair[1])
        test_servers._assert_root_size(rep, 2)
        if guest:
            assert _grew(_ari_lines(text, boot), fstype, 2), text[-3000:]
    finally:
        cloud.run('server', 'delete', '--wait', server_id, check=False)
