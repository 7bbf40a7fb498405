"""AMIs of several sizes, concurrent spawns and the cold fetch.

Helpers of tools/bench_spawn.py.
"""

import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from nova_amiboot import cache as cache_mod
from nova_amiboot.local import store
from nova_amiboot import spawn

BENCH_CACHE = '/var/cache/nova-amiboot/bench'
MiB = 1024 ** 2
SOURCES = ('/usr/lib', '/usr/share', '/usr/bin')


def _host_files():
    for src in SOURCES:
        for dirpath, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    yield p


def bench_ami(target_mb=300):
    """An ext4 AMI (4 KiB blocks) of ``target_mb`` MiB of real files.

    Files come from this host's /usr; where it holds less than asked, the
    walk repeats into another directory (real file contents, never
    zeros). Built once, kept in the bench cache.
    """
    path = os.path.join(BENCH_CACHE, 'ami-%dm.img' % target_mb)
    if os.path.exists(path):
        return path
    os.makedirs(BENCH_CACHE, exist_ok=True)
    tree = tempfile.mkdtemp(prefix='amiboot-bench-tree-', dir='/var/tmp')
    try:
        total, rnd = 0, 0
        while total < target_mb * MiB * 0.99:
            before = total
            prefix = '' if rnd == 0 else 'copy%d' % rnd
            for p in _host_files():
                size = os.path.getsize(p)
                if total + size > target_mb * MiB:
                    continue
                dst = os.path.join(tree, prefix, os.path.relpath(p, '/'))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    shutil.copyfile(p, dst)
                except OSError:
                    continue
                total += size
                if total >= target_mb * MiB * 0.99:
                    break
            rnd += 1
            if total == before:
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


def ami_of_size(total_mb):
    """An AMI whose file is about ``total_mb`` MiB (content ~93%)."""
    return bench_ami(max(8, int((total_mb - 16) / 1.07)))


class CountingStore(store.LocalImageStore):
    """A local store that counts downloads in a file (across processes)."""

    def download(self, image_id, fileobj):
        with open(os.path.join(self.path, 'downloads'), 'a') as f:
            f.write('%s\n' % image_id)
        return super().download(image_id, fileobj)

    def downloads(self, image_id):
        try:
            with open(os.path.join(self.path, 'downloads')) as f:
                return f.read().splitlines().count(image_id)
        except FileNotFoundError:
            return 0


def _child(barrier, instances, store_path, image_id, conf, flavor_gb, key,
           results):
    store = CountingStore(store_path)
    cache = cache_mod.ImageCache(instances, store, conf)
    req = spawn.InstanceRequest(
        uuid=str(uuid.uuid4()), name='conc-%s' % uuid.uuid4().hex[:6],
        image_id=image_id, flavor=spawn.Flavor('bench', flavor_gb, 512, 1),
        key=key)
    barrier.wait()
    try:
        spawn.prepare(conf, cache, req, virt_type='qemu')
        results.put(('ok', time.monotonic()))
    except Exception as e:
        results.put(('error', '%s: %s' % (type(e).__name__, e)))


def concurrent(n, instances, store, image_id, conf, flavor_gb, key):
    """``n`` processes prepare one instance each at the same moment.

    Returns (wall seconds from the release to the last one done, errors).
    The processes are forked and waiting before the clock starts, so
    Python start-up is not counted.
    """
    ctx = multiprocessing.get_context('fork')
    barrier = ctx.Barrier(n + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(
        barrier, instances, store.path, image_id, conf, flavor_gb, key,
        results)) for _i in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.monotonic()
    done, errors = [], []
    for _i in range(n):
        kind, value = results.get(timeout=600)
        (done if kind == 'ok' else errors).append(value)
    for p in procs:
        p.join()
    wall = (max(done) if done else time.monotonic()) - t0
    return wall, errors


def plain_write(src, dst_dir):
    """Seconds to copy ``src`` into ``dst_dir`` with plain sequential I/O.

    Read in 1 MiB chunks, write, fsync, as the cache's own fetch does
    minus verifying and inspecting.
    """
    dst = os.path.join(dst_dir, 'plain-%s' % uuid.uuid4().hex[:8])
    t = time.monotonic()
    with open(src, 'rb') as fin, open(dst, 'wb') as fout:
        for chunk in iter(lambda: fin.read(MiB), b''):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    secs = time.monotonic() - t
    os.unlink(dst)
    return secs


def drop_file_cache(path):
    """Evict ``path`` from the page cache (written data is synced first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path):
    """Read ``path`` once so the page cache holds it."""
    with open(path, 'rb') as f:
        while f.read(4 * MiB):
            pass
