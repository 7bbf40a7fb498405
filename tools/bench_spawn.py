"""Benchmark: instance disk preparation, ours against nova's own code.

Side by side in one run, on the same warm cache and the same ~337 MiB AMI
of real files (ext4, 4 KiB blocks), for a 20 GiB flavor:

- ours: spawn.prepare up to the disk being ready (qcow2 overlay, grown
  filesystem, key injected, kernel/ramdisk links, domain XML);
- copy: the project's own copy approach (copy, extend, e2fsck, resize2fs,
  loop-mount, write the key, unmount);
- nova Flat: nova 34's imagebackend.Flat through Image.cache(): nova's
  copy of the base and nova.virt.disk.api.extend (qemu-img resize, e2fsck,
  resize2fs); no key (stock nova injects only through libguestfs);
- nova Qcow2: imagebackend.Qcow2 with the default config: an overlay at
  the flavor's size whose filesystem is NOT grown;
- nova + libguestfs: nova.virt.disk.api.inject_data through VFSGuestFS
  (once per run: its appliance boots under TCG here);
- nova Qcow2 + resize_fs_using_block_device: only where /dev/nbd* exists;
- ours, guest mode ([amiboot] provision = guest): a copy of the base's
  plain overlay template, the ramdisk copy with the instance's layer, the
  kernel copy, the domain XML (the ARI grows and keys at boot); again with
  the instances path on an XFS filesystem the bench loop-mounts, where
  the copies share extents.

Then the size curve (ours vs nova Flat for AMIs of 64 MiB .. 4 GiB), 32
concurrent preparations of an image not yet cached, the cold fetch of a
1 GiB AMI against plain sequential I/O, boot to guest, and in guest mode
the guest's own cost (tools/bench_guest.py: "Run /init" to switch_root
for ext4, XFS and btrfs grown to the flavor).

Prints every figure, then one JSON object as the last line. ``--plot
FILE.png`` draws the size curve and the per-step bars (matplotlib, which
is pip-installed into the venv on first use).
"""

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

# nova is imported into this process (its backends run here): keep its
# eventlet monkey patching off, as nova's own functional tests do.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')

from nova_amiboot import attach  # noqa: E402
from nova_amiboot import cache as cache_mod  # noqa: E402
from nova_amiboot.conf import amiboot as amiboot_conf  # noqa: E402
from nova_amiboot import grow  # noqa: E402
from nova_amiboot import inject  # noqa: E402
from nova_amiboot import layer  # noqa: E402
from nova_amiboot import spawn  # noqa: E402
from oslo_config import cfg  # noqa: E402
from tests.testbed import build  # noqa: E402
from tools import bench_boot  # noqa: E402
from tools import bench_guest  # noqa: E402
from tools import bench_nova  # noqa: E402
from tools import bench_scale  # noqa: E402

# A well-formed key (guest mode's layer checks the blob names its type).
KEY = 'ssh-ed25519 %s bench@amiboot' % base64.b64encode(
    b'\0\0\0\x0bssh-ed25519\0\0\0\x20' + bytes(range(32))).decode()
MiB = 1024 ** 2
GiB = 1024 ** 3


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

    def inject_key():
        run(['mount', '-o', 'loop', disk, mnt])
        try:
            ssh = os.path.join(mnt, 'root/.ssh')
            os.makedirs(ssh, mode=0o700, exist_ok=True)
            with open(os.path.join(ssh, 'authorized_keys'), 'a') as f:
                f.write(KEY + '\n')
            os.chmod(os.path.join(ssh, 'authorized_keys'), 0o600)
        finally:
            run(['umount', mnt])
    timed(timings, 'mount+key+umount', inject_key)
    timings.setdefault('total', []).append(time.monotonic() - t0)
    used = os.stat(disk).st_blocks * 512
    os.unlink(disk)
    return used


def median(values):
    return statistics.median(values) if values else None


def r4(value):
    return None if value is None else round(value, 4)


class Bench(object):

    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix='amiboot-bench-', dir='/var/tmp')
        os.chmod(self.work, 0o755)
        self.conf = cfg.ConfigOpts()
        amiboot_conf.register_opts(self.conf)
        self.conf([], default_config_files=[])
        # Every bench AMI declares amiboot_provision=guest (the same AMI
        # in both modes): host mode is forced but where guest is measured.
        self.conf.set_override('provision', 'host', 'amiboot')
        self.store = bench_scale.CountingStore(
            os.path.join(self.work, 'store'))
        self.tb = build.build()
        self.aki = self.store.add('bench-aki', self.tb['kernel'], 'aki')
        self.ari = self.store.add('bench-ari', self.tb['ramdisk'], 'ari')
        self.notes = []

    def add_ami(self, name, path):
        return self.store.add(name, path, 'ami',
                              {'kernel_id': self.aki.id,
                               'ramdisk_id': self.ari.id,
                               spawn.PROVISION_PROPERTY: 'guest'})

    def new_cache(self, name, parent=None):
        return cache_mod.ImageCache(os.path.join(parent or self.work, name),
                                    self.store, self.conf)

    def request(self, image_id, flavor_gb, key=KEY):
        return spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='bench-%s' % uuid.uuid4().hex[:6],
            image_id=image_id,
            flavor=spawn.Flavor('bench', flavor_gb, 512, 1), key=key)

    def ours(self, cache, image_id, flavor_gb):
        p = spawn.prepare(self.conf, cache, self.request(image_id,
                                                         flavor_gb),
                          virt_type='qemu')
        used = os.stat(p.disk).st_blocks * 512
        shutil.rmtree(p.instance_dir)
        return p.timings, used

    def ours_guest(self, cache, image_id, flavor_gb):
        """ours in guest mode: spawn.prepare with [amiboot] provision=guest.

        A plain overlay at the flavor's size, the ramdisk copy with the
        instance's layer, the kernel copy and the domain XML. Bytes
        written: the overlay's and the ramdisk copy's.
        """
        self.conf.set_override('provision', 'guest', 'amiboot')
        try:
            p = spawn.prepare(self.conf, cache,
                              self.request(image_id, flavor_gb),
                              virt_type='qemu')
        finally:
            self.conf.set_override('provision', 'host', 'amiboot')
        if p.provision != 'guest' or p.grown:
            raise RuntimeError("guest mode was not used: %s" % p.provision)
        used = os.stat(p.disk).st_blocks * 512 + \
            os.stat(p.ramdisk).st_blocks * 512
        shutil.rmtree(p.instance_dir)
        return p.timings, used

    def guest_parts(self, cache, image_id, flavor_gb, parts):
        """Guest mode's steps one by one, as prepare runs them.

        In prepare the ramdisk and kernel copies run in a thread beside
        the overlay; here each is timed alone, in a scratch dir under the
        instances path.
        """
        req = self.request(image_id, flavor_gb)
        ami = cache.source.get_meta(image_id)
        d = os.path.join(cache.instances_path, 'parts-%s' % req.uuid)
        os.makedirs(d)
        try:
            self.conf.set_override('provision', 'guest', 'amiboot')
            try:
                timed(parts, 'metadata + mode', spawn.provision_mode,
                      self.conf, ami, spawn.ramdisk_meta(cache.source, ami),
                      req.name)
                spec = timed(parts, 'layer spec', spawn.provision_spec,
                             req, self.conf)
            finally:
                self.conf.set_override('provision', 'host', 'amiboot')
            _a, root, kernel, ramdisk = timed(
                parts, 'fetch (cached)', spawn.fetch_triplet, cache,
                image_id, req.flavor, req.name, False)
            timed(parts, 'layer archive', layer.archive, spec)
            timed(parts, 'ramdisk + layer (fsync)', spawn.instance_ramdisk,
                  ramdisk.path, os.path.join(d, 'ramdisk'), spec)
            timed(parts, 'kernel copy', spawn.private_copy, kernel.path,
                  os.path.join(d, 'kernel'))
            timed(parts, 'overlay (template copy + fdatasync)',
                  spawn.guest_disk, self.conf, cache, req, root,
                  os.path.join(d, 'disk'))
        finally:
            shutil.rmtree(d)

    def ours_before(self, cache, image_id, flavor_gb):
        """ours without grown templates: what prepare did before them.

        A base without an identity gets no template (as on a filesystem
        without user xattrs): the disk is made and grown per instance.
        """
        real = grow.base_id
        grow.base_id = lambda path: None
        try:
            return self.ours(cache, image_id, flavor_gb)
        finally:
            grow.base_id = real

    def nova(self, kind, cache, image_id, flavor_gb, keep=False):
        inst = os.path.join(cache.instances_path, 'nova-%s' % uuid.uuid4())
        os.makedirs(inst)
        secs, disk, used = bench_nova.backend_disk(
            kind, cache.instances_path, cache_mod.base_name(image_id),
            flavor_gb * GiB, inst)
        if keep:
            return secs, disk, used
        shutil.rmtree(inst)
        return secs, used

    # --- 1-5: side by side on the 337 MiB AMI ------------------------------

    def side_by_side(self):
        a = self.args
        ami_path = bench_scale.bench_ami(300)
        self.ami_path = ami_path
        ami = self.add_ami('bench-ami', ami_path)
        self.side_ami = ami
        cache = self.new_cache('instances')
        t = time.monotonic()
        base = spawn.fetch_triplet(cache, ami.id)[1].path
        # Once per base and host, like the download: the filesystem check
        # every instance disk of this base inherits.
        grow.base_facts(base, self.conf)
        warm = time.monotonic() - t
        bench_scale.warm(base)
        # The first instance of (base, size) also makes the grown template.
        first = self.ours(cache, ami.id, a.flavor_gb)[0]['total']
        gfirst = self.ours_guest(cache, ami.id, a.flavor_gb)[0]['total']
        prep, copy, gprep, gparts = {}, {}, {}, {}
        flat, qcow2, before = [], [], []
        ob, cb, fb, qb, gb = [], [], [], [], []
        for _i in range(a.runs):
            timings, used = self.ours(cache, ami.id, a.flavor_gb)
            for step, secs in timings.items():
                prep.setdefault(step, []).append(secs)
            ob.append(used)
            timings, used = self.ours_guest(cache, ami.id, a.flavor_gb)
            for step, secs in timings.items():
                gprep.setdefault(step, []).append(secs)
            gb.append(used)
            self.guest_parts(cache, ami.id, a.flavor_gb, gparts)
            timings, _used = self.ours_before(cache, ami.id, a.flavor_gb)
            before.append(timings['total'])
            cb.append(copy_way(base, self.work, a.flavor_gb, copy))
            secs, used = self.nova('flat', cache, ami.id, a.flavor_gb)
            flat.append(secs)
            fb.append(used)
            secs, used = self.nova('qcow2', cache, ami.id, a.flavor_gb)
            qcow2.append(secs)
            qb.append(used)
        # What each leaves in the filesystem: nova Flat grows it, nova's
        # Qcow2 does not.
        _s, fdisk, _u = self.nova('flat', cache, ami.id, a.flavor_gb,
                                  keep=True)
        flat_fs = bench_nova.fs_size(fdisk, 'raw')
        shutil.rmtree(os.path.dirname(fdisk))
        _s, qdisk, _u = self.nova('qcow2', cache, ami.id, a.flavor_gb,
                                  keep=True)
        with attach.attached(qdisk, 'qcow2', self.conf,
                             backing=attach.HEADER) as tg:
            out = tg.run('dumpe2fs', ['-h'])[0]
        f = dict(line.split(':', 1) for line in out.splitlines()
                 if ':' in line)
        qcow2_fs = int(f['Block count']) * int(f['Block size'])
        guestfs, guestfs_why = (None, "not measured (--no-guestfs)")
        if not a.no_guestfs:
            # nova's key injection looks root up in /etc/passwd (augeas);
            # the bench AMI is a pile of files without one: add it first.
            with attach.attached(qdisk, 'qcow2', self.conf,
                                 backing=attach.HEADER) as tg:
                fs = inject.GuestFS(tg)
                fs.write('/etc/passwd', b'root:x:0:0:root:/root:/bin/sh\n')
                fs.write('/etc/group', b'root:x:0:\n')
            guestfs, guestfs_why = bench_nova.guestfs_inject(qdisk, KEY)
            if guestfs:
                with attach.attached(qdisk, 'qcow2', self.conf,
                                     backing=attach.HEADER) as tg:
                    keys = inject.GuestFS(tg).read(
                        '/root/.ssh/authorized_keys') or b''
                guestfs['key_found'] = KEY.encode() in keys
        shutil.rmtree(os.path.dirname(qdisk))
        _nbd, nbd_why = bench_nova.nbd_variant()
        self.r.update({
            'warm': warm, 'first_prep': first, 'prep': prep, 'copy': copy,
            'guest_first': gfirst, 'gprep': gprep, 'gparts': gparts,
            'gb': gb,
            'before': before,
            'flat': flat, 'qcow2': qcow2, 'ob': ob, 'cb': cb, 'fb': fb,
            'qb': qb, 'flat_fs': flat_fs, 'qcow2_fs': qcow2_fs,
            'guestfs': guestfs, 'guestfs_why': guestfs_why,
            'nbd_why': nbd_why})

    # --- 6: size curve -----------------------------------------------------

    def size_curve(self):
        a = self.args
        curve = []
        for mb in a.sizes:
            path = bench_scale.ami_of_size(mb)
            ami = self.add_ami('bench-ami-%dm' % mb, path)
            cache = self.new_cache('curve-%d' % mb)
            row = {'ami_mb': mb, 'ami_bytes': os.path.getsize(path)}
            if mb == a.cold_mb:
                row.update(self.cold_fetch(cache, ami, path))
            else:
                spawn.fetch_triplet(cache, ami.id)
            base = cache.path_for(ami.id)
            grow.base_facts(base, self.conf)
            bench_scale.warm(base)
            row['ours_first_s'] = self.ours(cache, ami.id,
                                            a.flavor_gb)[0]['total']
            self.ours_guest(cache, ami.id, a.flavor_gb)
            ours, flat, ob, fb, guest, gb = [], [], [], [], [], []
            for _i in range(a.size_runs):
                timings, used = self.ours(cache, ami.id, a.flavor_gb)
                ours.append(timings['total'])
                ob.append(used)
                timings, used = self.ours_guest(cache, ami.id, a.flavor_gb)
                guest.append(timings['total'])
                gb.append(used)
                secs, used = self.nova('flat', cache, ami.id, a.flavor_gb)
                flat.append(secs)
                fb.append(used)
            row.update({'ours_s': r4(median(ours)),
                        'nova_flat_s': r4(median(flat)),
                        'ours_bytes': int(median(ob)),
                        'nova_flat_bytes': int(median(fb)),
                        'guest_s': r4(median(guest)),
                        'guest_bytes': int(median(gb))})
            curve.append(row)
            print("  size %5d MiB: ours %.3f s (%d KiB), guest mode %.3f s "
                  "(%d KiB), nova Flat %.3f s (%d MiB)"
                  % (mb, row['ours_s'], row['ours_bytes'] // 1024,
                     row['guest_s'], row['guest_bytes'] // 1024,
                     row['nova_flat_s'], row['nova_flat_bytes'] // MiB),
                  file=sys.stderr)
            shutil.rmtree(cache.instances_path)
            self.store.delete(ami.id)
        self.r['curve'] = curve

    # --- 8: cold fetch -----------------------------------------------------

    def cold_fetch(self, cache, ami, path):
        src = os.path.join(self.store.path, ami.id)
        bench_scale.warm(src)
        t = time.monotonic()
        root = cache.fetch(ami.id, 'ami')
        fetch_s = time.monotonic() - t
        plain_s = bench_scale.plain_write(src, cache.base_dir)
        spawn.fetch_triplet(cache, ami.id)
        st_src, st_base = os.stat(src), os.stat(root.path)
        self.r['cold'] = {
            'bytes': st_src.st_size, 'fetch_s': fetch_s, 'plain_s': plain_s,
            'fraction': plain_s / fetch_s,
            'src_allocated': st_src.st_blocks * 512,
            'base_allocated': st_base.st_blocks * 512}
        return {}

    # --- 7: concurrency ----------------------------------------------------

    def concurrency(self):
        a = self.args
        ami = self.add_ami('bench-ami-conc', self.ami_path)
        cache = self.new_cache('conc')
        before = self.store.downloads(ami.id)
        cold, cold_err = bench_scale.concurrent(
            a.concurrency, cache.instances_path, self.store, ami.id,
            self.conf, a.flavor_gb, KEY)
        downloads = self.store.downloads(ami.id) - before
        warm, warm_err = bench_scale.concurrent(
            a.concurrency, cache.instances_path, self.store, ami.id,
            self.conf, a.flavor_gb, KEY)
        self.r['conc'] = {'n': a.concurrency, 'cold_s': cold,
                          'warm_s': warm, 'downloads': downloads,
                          'errors': cold_err + warm_err}
        shutil.rmtree(cache.instances_path)

    # --- 9: boot -----------------------------------------------------------

    def boot(self):
        if self.args.no_boot:
            self.r['boot'], self.r['boot_why'] = None, "not measured"
            return
        self.r['boot'], self.r['boot_why'] = bench_boot.boot_to_guest(
            self.tb)

    def guest_xfs_store(self):
        """Guest mode with the instances path on XFS (reflink copies).

        The same AMI and flavor as side_by_side, on an XFS filesystem the
        bench makes on a sparse file and loop-mounts for the run (as a
        RHEL-family compute host's /var/lib/nova is): the plain template,
        the ramdisk and the kernel are copied by sharing extents, so what
        is written and synced per instance is the layer and metadata.
        """
        a = self.args
        self.r['gxfs'], self.r['gxfs_why'] = None, None
        if a.no_xfs_store:
            self.r['gxfs_why'] = "not measured (--no-xfs-store)"
            return
        img = os.path.join(self.work, 'xfs-store.img')
        mnt = os.path.join(self.work, 'xfs-store')
        os.makedirs(mnt)
        try:
            with open(img, 'wb') as f:
                f.truncate(4 * GiB)
            subprocess.run(['mkfs.xfs', '-q', '-f', '-m', 'reflink=1', img],
                           check=True, capture_output=True)
            subprocess.run(['mount', '-o', 'loop', img, mnt], check=True,
                           capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            self.r['gxfs_why'] = "no XFS store here: %s" % (
                getattr(e, 'stderr', None) or e)
            os.unlink(img)
            return
        try:
            cache = self.new_cache('instances', parent=mnt)
            ami = self.side_ami
            spawn.fetch_triplet(cache, ami.id)
            first = self.ours_guest(cache, ami.id, a.flavor_gb)[0]['total']
            prep, parts = {}, {}
            for _i in range(a.runs):
                timings, _used = self.ours_guest(cache, ami.id, a.flavor_gb)
                for step, secs in timings.items():
                    prep.setdefault(step, []).append(secs)
                self.guest_parts(cache, ami.id, a.flavor_gb, parts)
            self.r['gxfs'] = {'first': first, 'prep': prep, 'parts': parts}
        finally:
            subprocess.run(['umount', mnt], check=True)
            os.unlink(img)

    def guest_boot(self):
        if self.args.no_guest_boot:
            self.r['gboot'], self.r['gboot_why'] = None, "not measured " \
                "(--no-guest-boot)"
            return
        self.r['gboot'], self.r['gboot_why'] = bench_guest.guest_boots(
            self.tb, KEY, self.args.flavor_gb)

    def run_all(self):
        self.r = {}
        try:
            self.side_by_side()
            self.guest_xfs_store()
            self.concurrency()
            self.size_curve()
            self.boot()
            self.guest_boot()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.r


def load():
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


def machine():
    cpus = os.cpu_count()
    with open('/proc/meminfo') as f:
        mem = int(f.readline().split()[1]) // (1024 ** 2)
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return '%s, %d cores, %d GiB, %s' % (model, cpus, mem + 1,
                                         platform.release())


def report(r, args, load_before):
    prep, copy = r['prep'], r['copy']
    ami_mib = os.path.getsize(bench_scale.bench_ami(300)) // MiB
    print("machine: %s; load before %s, after %s"
          % (machine(), load_before, load()))
    print("cache warm-up (fetch, verify, inspect %d MiB AMI + AKI + ARI, "
          "check the AMI's filesystem): %.2f s" % (ami_mib, r['warm']))
    print("first instance of (base, %d GiB), grown template made: %.3f s"
          % (args.flavor_gb, r['first_prep']))
    print("%d runs, %d GiB flavor, %d MiB AMI, medians:"
          % (args.runs, args.flavor_gb, ami_mib))
    for label, steps in (('ours (overlay, grown, key)', prep),
                         ('copy (project baseline)', copy)):
        print("  %s" % label)
        for step, values in steps.items():
            print("    %-18s %8.3f s" % (step, median(values)))
    prep_s, copy_s = median(prep['total']), median(copy['total'])
    before_s = median(r['before'])
    print("  ours without grown templates (disk made and grown per "
          "instance, as before them)  %.3f s, %.1fx ours"
          % (before_s, before_s / prep_s))
    flat_s, qcow2_s = median(r['flat']), median(r['qcow2'])
    print("  nova Flat (copy + extend: qemu-img resize, e2fsck, resize2fs; "
          "no key)  %.3f s, filesystem %s" % (
              flat_s, 'grown to %d GiB' % (r['flat_fs'] // GiB)
              if r['flat_fs'] else 'unknown'))
    print("  nova Qcow2 (default config; no key)  %.3f s, filesystem NOT "
          "grown: %d MiB on a %d GiB disk" % (qcow2_s, r['qcow2_fs'] // MiB,
                                              args.flavor_gb))
    g = r['guestfs']
    if g:
        print("  nova + libguestfs key injection (inject_data, VFSGuestFS, "
              "appliance under TCG, measured once): %.2f s (%s, key %s)"
              % (g['inject_s'], g['vfs'],
                 'found' if g.get('key_found') else 'NOT found'))
    else:
        print("  nova + libguestfs: %s" % r['guestfs_why'])
    print("  nova Qcow2 + resize_fs_using_block_device: %s" % r['nbd_why'])
    print("  bytes written per instance: ours %d KiB, copy %d MiB, nova "
          "Flat %d MiB, nova Qcow2 %d KiB" % (
              median(r['ob']) // 1024, median(r['cb']) // MiB,
              median(r['fb']) // MiB, median(r['qb']) // 1024))
    print("  ratios: nova Flat / ours %.1fx, copy / ours %.1fx, "
          "nova Qcow2 / ours %.2fx"
          % (flat_s / prep_s, copy_s / prep_s, qcow2_s / prep_s))
    gprep = r['gprep']
    guest_s = median(gprep['total'])
    print("  ours, guest mode ([amiboot] provision = guest: plain overlay, "
          "ramdisk copy = ARI + layer, kernel copy, domain XML; the ARI "
          "grows and writes at boot); first instance %.3f s"
          % r['guest_first'])
    for step, values in gprep.items():
        print("    %-18s %8.3f s" % (step, median(values)))
    print("    its steps one by one (in prepare the copies run beside the "
          "overlay):")
    for step, values in r['gparts'].items():
        print("      %-32s %8.4f s" % (step, median(values)))
    print("    bytes written per instance: %d KiB (overlay + ramdisk copy)"
          % (median(r['gb']) // 1024))
    print("  ratios: guest mode / host mode %.2fx, nova Flat / guest mode "
          "%.1fx; target guest mode <= 0.010 s: %s"
          % (guest_s / prep_s, flat_s / guest_s,
             'met' if guest_s <= 0.010 else 'missed by %.1f ms'
             % ((guest_s - 0.010) * 1000)))
    gx = r['gxfs']
    gx_s = median(gx['prep']['total']) if gx else None
    if gx:
        print("  ours, guest mode, instances path on XFS (reflinked "
              "template, ramdisk and kernel copies); first instance %.3f s"
              % gx['first'])
        for step, values in gx['prep'].items():
            print("    %-18s %8.3f s" % (step, median(values)))
        print("    its steps one by one:")
        for step, values in gx['parts'].items():
            print("      %-36s %8.4f s" % (step, median(values)))
        print("  ratios: guest mode on ext4 / on XFS %.2fx; target guest "
              "mode <= 0.010 s on XFS: %s"
              % (guest_s / gx_s, 'met' if gx_s <= 0.010 else
                 'missed by %.1f ms' % ((gx_s - 0.010) * 1000)))
    else:
        print("  guest mode on an XFS instances path: %s" % r['gxfs_why'])
    c = r['conc']
    print("concurrency: %d processes, image not in _base: %.2f s wall, "
          "%d download(s); again with the base cached: %.2f s wall, "
          "%.1f preps/s%s" % (c['n'], c['cold_s'], c['downloads'],
                              c['warm_s'], c['n'] / c['warm_s'],
                              '; errors: %s' % c['errors'][:3]
                              if c['errors'] else ''))
    cold = r.get('cold')
    if cold:
        print("cold fetch of %d MiB into _base: %.2f s; plain sequential "
              "write of the same bytes: %.2f s; fraction %.2f; allocated: "
              "image %d MiB, base %d MiB" % (
                  cold['bytes'] // MiB, cold['fetch_s'], cold['plain_s'],
                  cold['fraction'], cold['src_allocated'] // MiB,
                  cold['base_allocated'] // MiB))
    curve = r['curve']
    print("size curve (%d runs each, %d GiB flavor):"
          % (args.size_runs, args.flavor_gb))
    for row in curve:
        print("  AMI %5d MiB: ours %.3f s (%d KiB written), guest mode "
              "%.3f s (%d KiB), nova Flat %.3f s (%d MiB written), %.1fx "
              "ours, %.1fx guest mode"
              % (row['ami_bytes'] // MiB, row['ours_s'],
                 row['ours_bytes'] // 1024, row['guest_s'],
                 row['guest_bytes'] // 1024, row['nova_flat_s'],
                 row['nova_flat_bytes'] // MiB,
                 row['nova_flat_s'] / row['ours_s'],
                 row['nova_flat_s'] / row['guest_s']))
    growth = curve[-1]['ours_s'] / curve[0]['ours_s'] if curve else None
    ggrowth = curve[-1]['guest_s'] / curve[0]['guest_s'] if curve else None
    if growth:
        print("  from the smallest to the largest AMI, ours grows %.2fx, "
              "guest mode %.2fx" % (growth, ggrowth))
    b = r['boot']
    if b:
        print("boot to guest (amiboot boot --wait, test bed AMI): first "
              "report line after %.2f s: %s" % (b['total'], ', '.join(
                  '%s %.2f s' % (k, v) for k, v in b.items()
                  if k != 'total')))
    else:
        print("boot to guest: %s" % r['boot_why'])
    gboot = r['gboot']
    if gboot:
        print("guest mode in the guest (test bed AMIs, %d GiB overlay, "
              "layer with key and grow, TCG): seconds from \"Run /init\" "
              "to switch_root, and the grow step" % args.flavor_gb)
        for row in gboot:
            print("  %-6s %s s (grow %s -> %s: %s s; provisioning %s s; "
                  "boot to report %.2f s)"
                  % (row['fstype'], row['init_to_switch_root_s'],
                     row['grew_from'], row['grew_to'], row['grow_s'],
                     row['provision_s'], row['boot_to_report_s']))
    if r['gboot_why']:
        print("guest mode in the guest: %s" % r['gboot_why'])
    cold_fraction = cold['fraction'] if cold else None
    result = {
        'prep_median_s': r4(prep_s),
        'copy_median_s': r4(copy_s),
        'ratio': round(copy_s / prep_s, 1),
        'overlay_bytes': int(median(r['ob'])),
        'copy_bytes': int(median(r['cb'])),
        'ami_bytes': os.path.getsize(bench_scale.bench_ami(300)),
        'flavor_gb': args.flavor_gb,
        'runs': args.runs,
        'prep_steps_s': {k: r4(median(v)) for k, v in prep.items()},
        'first_prep_s': r4(r['first_prep']),
        'prep_without_template_median_s': r4(before_s),
        'nova_flat_median_s': r4(flat_s),
        'nova_flat_ratio': round(flat_s / prep_s, 1),
        'nova_flat_bytes': int(median(r['fb'])),
        'nova_qcow2_median_s': r4(qcow2_s),
        'nova_qcow2_fs_grown': False if r['qcow2_fs'] < args.flavor_gb * GiB
        else True,
        'guestfs_inject_s': g['inject_s'] if g else None,
        'guestfs_reason': None if g else r['guestfs_why'],
        'nova_qcow2_nbd_s': None,
        'nova_qcow2_nbd_reason': r['nbd_why'],
        'guest_prep_median_s': r4(guest_s),
        'guest_first_prep_s': r4(r['guest_first']),
        'guest_prep_steps_s': {k: r4(median(v)) for k, v in gprep.items()},
        'guest_parts_s': {k: r4(median(v)) for k, v in r['gparts'].items()},
        'guest_bytes': int(median(r['gb'])),
        'guest_xfs_prep_median_s': r4(gx_s),
        'guest_xfs_prep_steps_s': {k: r4(median(v)) for k, v in
                                   gx['prep'].items()} if gx else None,
        'guest_xfs_parts_s': {k: r4(median(v)) for k, v in
                              gx['parts'].items()} if gx else None,
        'guest_xfs_reason': r['gxfs_why'],
        'guest_host_ratio': round(guest_s / prep_s, 2),
        'nova_flat_guest_ratio': round(flat_s / guest_s, 1),
        'size_curve': [{'ami_bytes': row['ami_bytes'],
                        'ours_s': row['ours_s'],
                        'nova_flat_s': row['nova_flat_s'],
                        'guest_s': row['guest_s'],
                        'ours_bytes': row['ours_bytes'],
                        'nova_flat_bytes': row['nova_flat_bytes'],
                        'guest_bytes': row['guest_bytes']}
                       for row in curve],
        'size_curve_growth': round(growth, 2) if growth else None,
        'size_curve_guest_growth': round(ggrowth, 2) if ggrowth else None,
        'guest_boot': gboot,
        'guest_boot_reason': r['gboot_why'],
        'concurrent_n': c['n'],
        'concurrent_cold_wall_s': round(c['cold_s'], 3),
        'concurrent_wall_s': round(c['warm_s'], 3),
        'concurrent_preps_per_s': round(c['n'] / c['warm_s'], 1),
        'concurrent_downloads': c['downloads'],
        'cold_fetch_fraction': round(cold_fraction, 2)
        if cold_fraction else None,
        'cold_fetch_s': round(cold['fetch_s'], 3) if cold else None,
        'boot_to_report_s': b['total'] if b else None,
        'boot_parts_s': {k: v for k, v in b.items() if k != 'total'}
        if b else None,
        'load': [load_before, load()],
    }
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=7)
    p.add_argument('--flavor-gb', type=int, default=20)
    p.add_argument('--size-runs', type=int, default=5)
    p.add_argument('--sizes', default='64,256,1024,4096',
                   help="AMI sizes in MiB for the size curve")
    p.add_argument('--cold-mb', type=int, default=1024,
                   help="the size-curve AMI whose fetch is timed")
    p.add_argument('--concurrency', type=int, default=32)
    p.add_argument('--no-guestfs', action='store_true')
    p.add_argument('--no-boot', action='store_true')
    p.add_argument('--no-xfs-store', action='store_true',
                   help="do not measure guest mode on an XFS instances path")
    p.add_argument('--no-guest-boot', action='store_true',
                   help="skip the guest-side cost of guest mode (ext4, XFS "
                   "and btrfs booted under TCG)")
    p.add_argument('--plot', metavar='FILE.png')
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(',') if s]
    load_before = load()
    r = Bench(args).run_all()
    result = report(r, args, load_before)
    if args.plot:
        from tools import bench_plot
        bench_plot.plot(result, r, args.plot, machine())
        print("plot written to %s" % args.plot)
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
