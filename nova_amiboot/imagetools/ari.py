"""Build an ARI (initramfs) that boots a cloud kernel from a bare AMI.

Distribution cloud kernels (Debian's linux-image-cloud-amd64 for one) build
virtio as modules, so the ramdisk must load virtio_pci, virtio_blk and
virtio_net before the root device exists. The load order comes from the
modules' own ``depends`` metadata (``modinfo``), never from a hand-kept list,
so a new kernel with a new helper module still works.

The ramdisk holds busybox, the modules (decompressed: busybox insmod reads
plain ELF only) and an /init that mounts ``root=`` and switch_roots into
``init=`` or /sbin/init. The archive is reproducible: same inputs, same bytes.
"""

import collections
import gzip
import io
import os
import re
import shutil
import tempfile

from oslo_log import log as logging

from nova_amiboot import exception
from nova_amiboot import sandbox
from nova_amiboot import utils

LOG = logging.getLogger(__name__)

DEFAULT_MODULES = ('virtio_pci', 'virtio_blk', 'virtio_net')
_MODULE_SUFFIXES = ('.ko', '.ko.xz', '.ko.zst', '.ko.gz')
# Fixed timestamp for every archive member, so the ARI is reproducible.
_EPOCH = 946684800

INIT_SCRIPT = r'''#!/bin/busybox sh
# /init of an ARI built by nova-amiboot.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /dev /proc /sys /newroot
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys

fail() {
    echo "amiboot-ari: $*" > /dev/console
    echo "amiboot-ari: powering off in 5 seconds" > /dev/console
    sleep 5
    poweroff -f
}

for m in $(cat /etc/amiboot-ari/modules); do
    insmod "/lib/modules/$m.ko" || echo "amiboot-ari: cannot load $m"
done

root=; rootfstype=; rootflags=; mode=ro; init=/sbin/init; rootdelay=30
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        rootflags=*) rootflags="${arg#rootflags=}" ;;
        rootdelay=*) rootdelay="${arg#rootdelay=}" ;;
        init=*) init="${arg#init=}" ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
    esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"

i=0
while :; do
    case "$root" in
        LABEL=*|UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
        *) dev="$root" ;;
    esac
    [ -n "$dev" ] && [ -b "$dev" ] && break
    i=$((i + 1))
    [ "$i" -gt $((rootdelay * 10)) ] && fail "no root device $root"
    usleep 100000
done

opts="$mode"
[ -n "$rootflags" ] && opts="$opts,$rootflags"
fstype=
[ -n "$rootfstype" ] && fstype="-t $rootfstype"
mount $fstype -o "$opts" "$dev" /newroot || fail "cannot mount $dev"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no $init on $dev"

for fs in dev proc sys; do
    if [ -d "/newroot/$fs" ]; then
        mount --move "/$fs" "/newroot/$fs"
    else
        umount "/$fs"
    fi
done
exec switch_root /newroot "$init"
'''


def _module_name(filename):
    base = os.path.basename(filename)
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            break
    # modprobe treats '-' and '_' alike in module names.
    return base.replace('-', '_')


def find_modules_dir(root):
    """Return lib/modules/<version> under an unpacked kernel package."""
    for candidate in ('lib/modules', 'usr/lib/modules'):
        top = os.path.join(root, candidate)
        if os.path.isdir(top):
            versions = sorted(os.listdir(top))
            if len(versions) == 1:
                return os.path.join(top, versions[0])
            if versions:
                raise exception.ARIBuildFailed(
                    reason="several kernels in %s: %s" % (top, versions))
    raise exception.ARIBuildFailed(reason="no lib/modules in %s" % root)


def find_kernel_image(root):
    """Return boot/vmlinuz-* of an unpacked kernel package."""
    boot = os.path.join(root, 'boot')
    images = sorted(f for f in os.listdir(boot) if f.startswith('vmlinuz-')) \
        if os.path.isdir(boot) else []
    if len(images) != 1:
        raise exception.ARIBuildFailed(
            reason="expected one boot/vmlinuz-* in %s, found %s"
                   % (root, images))
    return os.path.join(boot, images[0])


def unpack_kernel_package(deb, dest):
    """Unpack a kernel .deb without installing it (dpkg-deb -x)."""
    utils.execute('dpkg-deb', '-x', deb, dest)
    return dest


class ModuleIndex(object):
    """The modules of one kernel: files by name, built-ins, dependencies."""

    def __init__(self, modules_dir):
        self.modules_dir = modules_dir
        self.files = {}
        for dirpath, _dirs, names in os.walk(modules_dir):
            for name in names:
                if name.endswith(_MODULE_SUFFIXES):
                    self.files.setdefault(_module_name(name),
                                          os.path.join(dirpath, name))
        self.builtin = set()
        builtin_list = os.path.join(modules_dir, 'modules.builtin')
        if os.path.exists(builtin_list):
            with open(builtin_list) as f:
                self.builtin = {_module_name(line.strip()) for line in f
                                if line.strip()}
        self._deps = {}

    def depends(self, name):
        if name not in self._deps:
            # The module may come from an image: in the sandbox, one run
            # for both fields (modinfo knows a module by its suffix).
            path = self.files[name]
            suffix = next(x for x in _MODULE_SUFFIXES[::-1]
                          if path.endswith(x))
            with sandbox.Run(path, sandbox.Limits()) as r:
                out = r.execute(['modinfo', r.file_named(
                    path, 'module' + suffix)]).text
            fields = collections.defaultdict(list)
            for line in out.splitlines():
                key, sep, value = line.partition(':')
                if sep and key in ('depends', 'softdep'):
                    fields[key].append(value.strip())
            deps = [_module_name(d) for v in fields['depends']
                    for d in v.split(',') if d]
            # softdep "pre:" modules must be loaded first as well; modprobe
            # honours them and so do we.
            for line in fields['softdep']:
                m = re.match(r'\s*pre:\s*(.*?)(?:\s+post:.*)?$', line)
                if m:
                    deps.extend(_module_name(d) for d in m.group(1).split()
                                if _module_name(d) in self.files)
            self._deps[name] = deps
        return self._deps[name]

    def load_order(self, wanted):
        """Modules to load for ``wanted``, each after its dependencies."""
        order, state = [], {}

        def visit(name, chain):
            name = _module_name(name)
            if name in self.builtin or state.get(name) == 'done':
                return
            if name not in self.files:
                raise exception.ModuleNotFound(module=name,
                                               path=self.modules_dir)
            if state.get(name) == 'visiting':
                raise exception.ARIBuildFailed(
                    reason="module dependency loop: %s" % ' -> '.join(
                        chain + [name]))
            state[name] = 'visiting'
            for dep in sorted(self.depends(name)):
                visit(dep, chain + [name])
            state[name] = 'done'
            order.append(name)

        for name in wanted:
            visit(name, [])
        return order


def _decompress_module(src, dst):
    if src.endswith('.ko'):
        shutil.copyfile(src, dst)
        return
    tool = {'.xz': ['xz', '-dc'], '.zst': ['zstd', '-dcq'],
            '.gz': ['gzip', '-dc']}[os.path.splitext(src)[1]]
    # In the sandbox (the module may come from an image), bounded.
    res = sandbox.run(tool + [src], src, files=[src],
                      out_limit=sandbox.MAX_OUT)
    if res.truncated:
        raise exception.ARIBuildFailed(
            reason="module %s decompresses to over %d bytes"
                   % (src, sandbox.MAX_OUT))
    with open(dst, 'wb') as f:
        f.write(res.out)


def _write_cpio(tree, output):
    """Pack ``tree`` as a gzip'd newc cpio, sorted and with fixed times."""
    entries = []
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            os.utime(path, (_EPOCH, _EPOCH), follow_symlinks=False)
            entries.append(os.path.relpath(path, tree))
    entries.sort()
    listing = ''.join(e + '\n' for e in entries)
    archive, _err = utils.execute(
        'cpio', '--quiet', '-o', '-H', 'newc', '--reproducible',
        '--owner=0:0', process_input=listing.encode(), cwd=tree,
        binary=True)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode='wb', mtime=0, compresslevel=9) as g:
        g.write(archive)
    tmp = output + '.part'
    with open(tmp, 'wb') as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, output)


def build_ari(output, modules_dir=None, kernel_package=None,
              modules=DEFAULT_MODULES, busybox='/bin/busybox'):
    """Write an ARI for a kernel to ``output``; return the modules loaded.

    Give either the kernel's ``lib/modules/<version>`` directory or a kernel
    .deb package. ``busybox`` must be a static binary (busybox-static).
    """
    if bool(modules_dir) == bool(kernel_package):
        raise exception.ARIBuildFailed(
            reason="give exactly one of a modules directory or a kernel "
                   "package")
    if not os.path.exists(busybox):
        raise exception.ARIBuildFailed(
            reason="busybox binary %s not found (install busybox-static)"
                   % busybox)
    with tempfile.TemporaryDirectory(prefix='amiboot-ari-') as work:
        if kernel_package:
            if not os.path.exists(kernel_package):
                raise exception.ARIBuildFailed(
                    reason="kernel package %s not found" % kernel_package)
            unpack_kernel_package(kernel_package, os.path.join(work, 'pkg'))
            modules_dir = find_modules_dir(os.path.join(work, 'pkg'))
        elif not os.path.isdir(modules_dir):
            raise exception.ARIBuildFailed(
                reason="modules directory %s not found" % modules_dir)
        index = ModuleIndex(modules_dir)
        order = index.load_order(modules)
        LOG.info("ARI for %(dir)s loads %(mods)s",
                 {'dir': modules_dir, 'mods': ' '.join(order)})

        tree = os.path.join(work, 'tree')
        for d in ('bin', 'dev', 'proc', 'sys', 'newroot', 'lib/modules',
                  'etc/amiboot-ari'):
            os.makedirs(os.path.join(tree, d), mode=0o755)
        shutil.copyfile(busybox, os.path.join(tree, 'bin/busybox'))
        os.chmod(os.path.join(tree, 'bin/busybox'), 0o755)
        for name in order:
            _decompress_module(index.files[name],
                               os.path.join(tree, 'lib/modules',
                                            name + '.ko'))
        with open(os.path.join(tree, 'etc/amiboot-ari/modules'), 'w') as f:
            f.write(''.join(m + '\n' for m in order))
        with open(os.path.join(tree, 'init'), 'w') as f:
            f.write(INIT_SCRIPT)
        os.chmod(os.path.join(tree, 'init'), 0o755)
        _write_cpio(tree, output)
    return order
