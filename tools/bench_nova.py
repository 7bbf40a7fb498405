"""nova 34's own image backends, driven through nova's classes.

Used by tools/bench_spawn.py on the same ``_base`` as the pipeline: nova's
``Image.cache()`` finds the base under the same name (sha1 of the image id)
and takes the same lock. A minimal nova config: ``instances_path`` and
nothing else; nova's privileged calls run in-process (we are root), as in
tests/nova_functional.

The libguestfs part runs in a child process (``python -m tools.bench_nova
guestfs DISK KEY``): its appliance boots a kernel under TCG here and takes
seconds, and a hang must not take the benchmark with it.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH_CACHE = '/var/cache/nova-amiboot/bench'
_SET_UP = []


def setup(instances_path):
    """Point nova's config at ``instances_path`` (once per process)."""
    import nova.conf
    import nova.privsep

    conf = nova.conf.CONF
    if not _SET_UP:
        conf([], project='nova', default_config_files=[])
        # Root here: nova's privsep functions run in this process instead
        # of through a privsep-helper daemon.
        nova.privsep.sys_admin_pctxt.set_client_mode(False)
        _SET_UP.append(True)
    conf.set_override('instances_path', instances_path)
    return conf


def _no_fetch(target, *args, **kwargs):
    raise RuntimeError("the base must be in the cache already: %s" % target)


def backend_disk(kind, instances_path, base_name, size, inst_dir):
    """nova's Image.cache() for the root disk: ('flat'|'qcow2').

    Returns (seconds, disk path, allocated bytes).
    """
    setup(instances_path)
    from nova.virt.libvirt import imagebackend

    cls = {'flat': imagebackend.Flat, 'qcow2': imagebackend.Qcow2}[kind]
    path = os.path.join(inst_dir, 'disk')
    t = time.monotonic()
    image = cls(path=path, disk_name='disk')
    # What the libvirt driver's _create_and_inject_local_root() does for
    # the root disk: image_id in kwargs means "from the image cache".
    image.cache(fetch_func=_no_fetch, filename=base_name, size=size,
                image_id='bench')
    secs = time.monotonic() - t
    return secs, path, os.stat(path).st_blocks * 512


def fs_size(path, fmt):
    """Bytes of the ext filesystem on a raw file (dumpe2fs), else None."""
    if fmt != 'raw':
        return None
    out = subprocess.run(['dumpe2fs', '-h', path], capture_output=True,
                         text=True).stdout
    f = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
    try:
        return int(f['Block count']) * int(f['Block size'])
    except (KeyError, ValueError):
        return None


def nbd_variant():
    """nova Qcow2 with resize_fs_using_block_device: needs /dev/nbd*."""
    if not glob.glob('/dev/nbd*'):
        return None, ("skipped: no /dev/nbd* on this host (the nbd kernel "
                      "module is absent), so nova cannot attach the qcow2 "
                      "to grow its filesystem")
    return None, ("skipped: /dev/nbd* exists, but this benchmark does not "
                  "hand nova's nbd mounter a device")


# --- libguestfs ----------------------------------------------------------

GUESTFS_PACKAGES = ('python3-guestfs', 'libguestfs-tools')
APPLIANCE_KERNEL = ('linux-image-cloud-amd64',)
SYSTEM_DIST = '/usr/lib/python3/dist-packages'


def _apt_install(packages):
    missing = [p for p in packages if subprocess.run(
        ['dpkg-query', '-W', '-f=${Status}', p], capture_output=True,
        text=True).stdout.find('ok installed') < 0]
    if missing:
        print("bench: installing %s (apt)" % ' '.join(missing),
              file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        subprocess.run(['apt-get', 'install', '-y', '-q',
                        '--no-install-recommends'] + missing, check=True,
                       env=env, stdout=subprocess.DEVNULL)


def _guestfs_shim():
    """A directory holding only Debian's guestfs module, for sys.path.

    The venv's Python is also 3.11, so Debian's extension loads; adding
    the whole dist-packages would shadow the venv's own packages.
    """
    shim = os.path.join(BENCH_CACHE, 'guestfs-py')
    os.makedirs(shim, exist_ok=True)
    for src in glob.glob(os.path.join(SYSTEM_DIST, 'guestfs.py')) + \
            glob.glob(os.path.join(SYSTEM_DIST, 'libguestfsmod*.so')):
        dst = os.path.join(shim, os.path.basename(src))
        if not os.path.exists(dst):
            os.symlink(src, dst)
    return shim


def _appliance_env():
    """Where libguestfs builds its appliance (supermin) and how it runs.

    supermin takes the host's kernel from /boot and its modules from
    /lib/modules; a host without them (a VM booted from outside) gets
    Debian's cloud kernel package for that (apt), which boots nothing here.
    """
    if not glob.glob('/boot/vmlinuz-*'):
        _apt_install(APPLIANCE_KERNEL)
    cachedir = os.path.join(BENCH_CACHE, 'guestfs-cache')
    os.makedirs(cachedir, exist_ok=True)
    # /dev/kvm exists here but QEMU aborts on it: TCG, like the guests.
    return {'LIBGUESTFS_BACKEND': 'direct',
            'LIBGUESTFS_BACKEND_SETTINGS': 'force_tcg',
            'LIBGUESTFS_CACHEDIR': cachedir}


def guestfs_inject(disk, key, timeout=900):
    """nova's inject_data() through VFSGuestFS on ``disk`` (qcow2).

    Returns ({'inject_s': ..., 'appliance': ...}, None) or (None, reason).
    """
    try:
        _apt_install(GUESTFS_PACKAGES)
        env = dict(os.environ, **_appliance_env())
    except (subprocess.CalledProcessError, OSError) as e:
        return None, "libguestfs not installable here: %s" % e
    env['PYTHONPATH'] = _guestfs_shim()
    env['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'
    t = time.monotonic()
    try:
        p = subprocess.run([sys.executable, '-m', 'tools.bench_nova',
                            'guestfs', disk, key], capture_output=True,
                           text=True, env=env, timeout=timeout,
                           cwd=os.path.dirname(os.path.dirname(
                               os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return None, "libguestfs did not finish in %d s" % timeout
    wall = time.monotonic() - t
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = ' '.join((p.stderr or '').strip().splitlines()[-3:])
        return None, "libguestfs failed: %s" % tail[-300:]
    result = json.loads(lines[-1])
    result['process_s'] = round(wall, 2)
    return result, None


def _guestfs_child(disk, key):
    import guestfs  # noqa: F401 (Debian's, through the shim)

    instances = tempfile.mkdtemp(prefix='amiboot-bench-nova-')
    setup(instances)
    from nova.virt.disk import api as disk_api
    from nova.virt.disk.vfs import api as vfs_api
    from nova.virt.image import model as imgmodel

    from nova.virt.disk.vfs import guestfs as vfs_guestfs

    # What nova's libvirt driver does with virt_type = qemu.
    vfs_guestfs.force_tcg()
    image = imgmodel.LocalFileImage(disk, imgmodel.FORMAT_QCOW2)
    # nova checks libguestfs once per process (an appliance launch of its
    # own): done here, before the clock, as a running nova-compute has.
    fs = vfs_api.VFS.instance_for_image(image, None)
    t = time.monotonic()
    ok = disk_api.inject_data(image, key=key, mandatory=('key',))
    secs = time.monotonic() - t
    print(json.dumps({'inject_s': round(secs, 2), 'ok': bool(ok),
                      'vfs': type(fs).__name__}))


if __name__ == '__main__':
    if sys.argv[1:2] == ['guestfs']:
        _guestfs_child(sys.argv[2], sys.argv[3])
