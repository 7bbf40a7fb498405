"""Guest mode's cost in the guest: first boots of ext4, XFS and btrfs.

Helpers of tools/bench_spawn.py. For each of the test bed's AMIs (ext4,
XFS, btrfs, each a small reporting root): the test bed's ARI followed by
a per-instance layer (key, grow), a qcow2 overlay at the flavor's size
(20 GiB) over the AMI, booted with libvirt (TCG). From the console: the
seconds from the kernel's "Run /init" to the ARI's switch_root line, the
grow step (the AMI's root grown to the disk) and the whole provisioning
step as the ARI reports them.
"""

import os
import re
import time
import uuid

from nova_amiboot import layer

FSTYPES = ('ext4', 'xfs', 'btrfs')
CMDLINE = 'root=/dev/vda console=tty0 console=ttyS0 ro'

_RUN_INIT = re.compile(r'\[\s*([0-9.]+)\] Run /init as init process')
_SWITCH = re.compile(r'amiboot-ari: switch_root at ([0-9.]+) s')
_GREW = re.compile(r'amiboot-ari: grew / from ([0-9.]+ [MG]iB) to '
                   r'([0-9.]+ [MG]iB) \(([a-z0-9]+)\) in ([0-9.]+) s')
_PROVISIONED = re.compile(r'amiboot-ari: provisioned in ([0-9.]+) s')


def guest_seconds(text):
    """Seconds from "Run /init" to the ARI's switch_root line, or None."""
    run = _RUN_INIT.search(text)
    sw = _SWITCH.search(text)
    if not (run and sw):
        return None
    return round(float(sw.group(1)) - float(run.group(1)), 3)


def grow_step(text):
    """{'from', 'to', 'fstype', 's'} of the ARI's grow line, or None."""
    m = _GREW.search(text)
    if not m:
        return None
    return {'from': m.group(1), 'to': m.group(2), 'fstype': m.group(3),
            's': float(m.group(4))}


def provisioned_seconds(text):
    m = _PROVISIONED.search(text)
    return float(m.group(1)) if m else None


def boot_one(host, testbed, fstype, size_gb, key):
    """Boot ``fstype``'s AMI in guest mode once; return its figures."""
    from tests.testbed import boot

    spec = layer.Spec(instance='bench-%s-%s' % (fstype, uuid.uuid4().hex[:8]),
                      ssh_keys=[key], grow=True)
    with boot.instance_dir(prefix='amiboot-bench-guest-') as d:
        ramdisk = layer.write_instance_ramdisk(
            testbed['ramdisk'], os.path.join(d, 'ramdisk'), spec)
        disk = boot.overlay(testbed['roots'][fstype],
                            os.path.join(d, 'disk'), size_gb)
        name = 'amiboot-bench-%s' % uuid.uuid4().hex[:8]
        t = time.monotonic()
        _rep, text = boot.boot(host, name, testbed['kernel'], ramdisk, disk,
                               d, CMDLINE)
        wall = time.monotonic() - t
    grew = grow_step(text)
    return {'fstype': fstype, 'disk_gb': size_gb,
            'init_to_switch_root_s': guest_seconds(text),
            'grow_s': grew['s'] if grew else None,
            'grew_from': grew['from'] if grew else None,
            'grew_to': grew['to'] if grew else None,
            'provision_s': provisioned_seconds(text),
            'boot_to_report_s': round(wall, 2),
            'ami_bytes': os.path.getsize(testbed['roots'][fstype])}


def guest_boots(testbed, key, size_gb=20, fstypes=FSTYPES):
    """Returns ([per-fs dict], None) or (None, why)."""
    from nova_amiboot import guest

    try:
        host = guest.Host()
    except Exception as e:
        return None, "no libvirt: %s" % e
    rows = []
    try:
        for fstype in fstypes:
            if fstype not in testbed.get('roots', {}):
                continue
            rows.append(boot_one(host, testbed, fstype, size_gb, key))
    except Exception as e:
        return (rows or None), "%s boot failed: %s" % (fstype, e)
    finally:
        host.close()
    return rows, None
