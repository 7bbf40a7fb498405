"""Benchmark: prepare instance disks with the pipeline vs. the copy way.

Side by side in one run, on the same warm cache and the same ~320 MiB AMI
of real files (ext4), for a 20 GiB flavor with key injection:

- prep: the spawn pipeline (qcow2 overlay, FUSE attach, e2fsck + resize2fs,
  debugfs key injection, kernel/ramdisk links, domain XML);
- copy: what a copying backend does (copy the base, extend it, e2fsck,
  resize2fs, loop-mount, write the key, unmount).

Prints per-step medians, then one JSON object as the last line.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import grow
from nova_amiboot import images
from nova_amiboot import spawn
from oslo_config import cfg
from tests.testbed import build

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_CACHE = '/var/cache/nova-amiboot/bench'
KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench@amiboot'
MiB = 1024 ** 2
GiB = 1024 ** 3


def bench_ami(target_mb=300):
    """An ext4 AMI holding ~300 MiB of real files from this host's /usr."""
    path = os.path.join(BENCH_CACHE, 'ami-%dm.img' % target_mb)
    if os.path.exists(path):
        return path
    os.makedirs(BENCH_CACHE, exist_ok=True)
    tree = tempfile.mkdtemp(prefix='amiboot-bench-tree-')
    try:
        total = 0
        for src in ('/usr/lib', '/usr/share', '/usr/bin'):
            for dirpath, dirs, files in os.walk(src):
                dirs.sort()
                for name in sorted(files):
                    p = os.path.join(dirpath, name)
                    if not os.path.isfile(p) or os.path.islink(p):
                        continue
                    size = os.path.getsize(p)
                    if total + size > target_mb * MiB:
                        continue
                    dst = os.path.join(tree, os.path.relpath(p, '/'))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    try:
                        shutil.copyfile(p, dst)
                    except OSError:
                        continue
                    total += size
                if total >= target_mb * MiB * 0.99:
                    break
        os.makedirs(os.path.join(tree, 'root'), mode=0o700)
        size_mb = int(target_mb * 1.07) + 16
        part = path + '.part'
        subprocess.run(['mkfs.ext4', '-q', '-F', '-T', 'default', '-b',
                        '4096', '-d', tree, '-E', 'root_owner=0:0', part,
                        '%dM' % size_mb], check=True)
        os.replace(part, path)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return path


def timed(timings, step, fn, *args):
    t = time.monotonic()
    result = fn(*args)
    timings.setdefault(step, []).append(time.monotonic() - t)
    return result


def run(cmd, **kw):
    subprocess.run(cmd, check=True, capture_output=True, **kw)


def copy_way(base, workdir, flavor_gb, timings):
    disk = os.path.join(workdir, 'disk.raw')
    mnt = os.path.join(workdir, 'mnt')
    os.makedirs(mnt, exist_ok=True)
    t0 = time.monotonic()
    timed(timings, 'copy', run, ['cp', '--sparse=always', base, disk])
    timed(timings, 'extend', run, ['qemu-img', 'resize', '-q', '-f', 'raw',
                                   disk, '%dG' % flavor_gb])
    timed(timings, 'e2fsck', run, ['e2fsck', '-fp', disk])
    timed(timings, 'resize2fs', run, ['resize2fs', disk])

    def inject():
        run(['mount', '-o', 'loop', disk, mnt])
        try:
            ssh = os.path.join(mnt, 'root/.ssh')
            os.makedirs(ssh, mode=0o700, exist_ok=True)
            with open(os.path.join(ssh, 'authorized_keys'), 'a') as f:
                f.write(KEY + '\n')
            os.chmod(os.path.join(ssh, 'authorized_keys'), 0o600)
        finally:
            run(['umount', mnt])
    timed(timings, 'mount+key+umount', inject)
    timings.setdefault('total', []).append(time.monotonic() - t0)
    used = os.stat(disk).st_blocks * 512
    os.unlink(disk)
    return used


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=7)
    p.add_argument('--flavor-gb', type=int, default=20)
    args = p.parse_args(argv)

    tb = build.build()
    ami_path = bench_ami()
    work = tempfile.mkdtemp(prefix='amiboot-bench-', dir='/var/tmp')
    os.chmod(work, 0o755)
    conf = cfg.ConfigOpts()
    amiboot_conf.register_opts(conf)
    conf([], default_config_files=[])
    try:
        store = images.LocalImageStore(os.path.join(work, 'store'))
        aki = store.add('bench-aki', tb['kernel'], 'aki')
        ari = store.add('bench-ari', tb['ramdisk'], 'ari')
        ami = store.add('bench-ami', ami_path, 'ami',
                        {'kernel_id': aki.id, 'ramdisk_id': ari.id})
        cache = cache_mod.ImageCache(os.path.join(work, 'instances'), store,
                                     conf)
        t = time.monotonic()
        base = spawn.fetch_triplet(cache, ami.id)[1].path
        # Once per base and host, like the download: the filesystem check
        # every instance disk of this base inherits.
        grow.base_facts(base, conf)
        warm = time.monotonic() - t
        prep, copy = {}, {}
        overlay_bytes, copy_bytes = [], []
        for i in range(args.runs):
            req = spawn.InstanceRequest(
                uuid=str(uuid.uuid4()), name='bench-%d' % i,
                image_id=ami.id,
                flavor=spawn.Flavor('bench', args.flavor_gb, 512, 1),
                key=KEY)
            prepared = spawn.prepare(conf, cache, req, virt_type='qemu')
            for step, secs in prepared.timings.items():
                prep.setdefault(step, []).append(secs)
            overlay_bytes.append(os.stat(prepared.disk).st_blocks * 512)
            shutil.rmtree(prepared.instance_dir)
            copy_bytes.append(copy_way(base, work, args.flavor_gb, copy))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("cache warm-up (fetch, verify, inspect %d MiB AMI + AKI + ARI, "
          "check the AMI's filesystem): "
          "%.2f s" % (os.path.getsize(ami_path) // MiB, warm))
    print("%d runs, %d GiB flavor, medians:" % (args.runs, args.flavor_gb))
    for label, steps in (('prep (overlay)', prep), ('copy', copy)):
        print("  %s" % label)
        for step, values in steps.items():
            print("    %-18s %8.3f s" % (step, statistics.median(values)))
    prep_s = statistics.median(prep['total'])
    copy_s = statistics.median(copy['total'])
    result = {
        'prep_median_s': round(prep_s, 4),
        'copy_median_s': round(copy_s, 4),
        'ratio': round(copy_s / prep_s, 1),
        'overlay_bytes': int(statistics.median(overlay_bytes)),
        'copy_bytes': int(statistics.median(copy_bytes)),
        'ami_bytes': os.path.getsize(ami_path),
        'flavor_gb': args.flavor_gb,
        'runs': args.runs,
    }
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
