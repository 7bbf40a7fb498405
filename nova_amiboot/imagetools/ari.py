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
# The root filesystems the ARI serves, by blkid TYPE: the module that
# serves each (ext2/3 are served by ext4). Built in or a module; /init
# loads only the one its root needs.
DEFAULT_FS_MODULES = {'ext4': 'ext4', 'xfs': 'xfs', 'btrfs': 'btrfs'}
# The growers /init runs on the guest's mounted root (first-boot
# provisioning, nova_amiboot.layer), copied from the host with their
# libraries, by package.
PROVISION_TOOLS = (('resize2fs', 'e2fsprogs'), ('xfs_growfs', 'xfsprogs'),
                   ('btrfs', 'btrfs-progs'))
_TOOL_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'
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

# Each line goes to every active console, not only /dev/console (the
# last console= of the command line): under nova that is the virtio
# console hvc0, while operators read the serial one (ttyS0) in
# `openstack console log show`.
log() {
    _consoles=
    read -r _consoles < /sys/class/tty/console/active 2>/dev/null
    _sent=
    for _c in $_consoles; do
        case "$_c" in *[!A-Za-z0-9]*) continue ;; esac
        [ -c "/dev/$_c" ] || continue
        echo "amiboot-ari: $*" > "/dev/$_c" 2>/dev/null && _sent=1
    done
    [ -n "$_sent" ] || echo "amiboot-ari: $*" > /dev/console
}
now() { read -r up _rest < /proc/uptime; echo "$up"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
t_init=$(now)
log "started at $t_init s"

fail() {
    log "$*"
    log "powering off in 5 seconds"
    sleep 5
    poweroff -f
}

load_modules() {
    for m in $(cat "$1"); do
        grep -q "^$m " /proc/modules && continue
        insmod "/lib/modules/$m.ko" || log "cannot load $m"
    done
}
load_modules /etc/amiboot-ari/modules

# The appliance (an ARI built by build_appliance, booted by
# nova_amiboot.imagetools.appliance on an image's disk): its fixed program
# instead of a root. An ARI without one ignores the parameter.
if [ -x /appliance ] && grep -qE 'amiboot.appliance=(probe|extract|clean)' \
    /proc/cmdline
then
    for f in /etc/amiboot-ari/fs/*; do load_modules "$f"; done
    /appliance
    poweroff -f
fi

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

# The filesystem's own modules (xfs, btrfs: modules in cloud kernels),
# only the one the root needs, known by its superblock's magic (busybox
# may have no blkid); an unknown one gets them all.
sb() { dd if="$dev" bs="$2" skip="$(($1 / $2))" count=1 2>/dev/null; }
probe=$rootfstype
if [ -z "$probe" ]; then
    if [ "$(sb 0 4)" = XFSB ]; then probe=xfs
    elif [ "$(sb 65600 8)" = _BHRfS_M ]; then probe=btrfs
    elif [ "$(sb 1080 2 | od -An -tx1 | tr -d ' ')" = 53ef ]; then probe=ext4
    fi
fi
case "$probe" in ext2|ext3) probe=ext4 ;; esac
t_mod=$(now)
if [ -n "$probe" ] && [ -f "/etc/amiboot-ari/fs/$probe" ]; then
    load_modules "/etc/amiboot-ari/fs/$probe"
else
    for f in /etc/amiboot-ari/fs/*; do load_modules "$f"; done
fi
[ -s "/etc/amiboot-ari/fs/$probe" ] &&
    log "loaded the $probe modules in $(since "$t_mod") s"

# The per-instance provisioning layer (format v1), appended to this ARI
# by nova_amiboot.layer: see doc/source/provisioning.rst.
P=/amiboot/provision
provision=
if [ -f "$P/version" ]; then
    if [ "$(cat $P/version)" = 1 ]; then
        provision=1
    else
        log "provisioning layer version $(cat $P/version) unknown;" \
            "not provisioning"
    fi
fi

mopts="$mode"
[ -n "$provision" ] && mopts=rw
[ -n "$rootflags" ] && mopts="$mopts,$rootflags"
fstype=
[ -n "$rootfstype" ] && fstype="-t $rootfstype"
mount $fstype -o "$mopts" "$dev" /newroot || fail "cannot mount $dev"

# guest_dir DIR [MODE]: the directory DIR of the guest, as a path under
# /newroot, made (root-owned, MODE) where missing. Refused, with a line on
# the console, if any component is a symbolic link or not a directory: no
# path is resolved through a link, so none leads out of the guest's root.
guest_dir() (
    set -f
    IFS=/
    d=/newroot
    for c in $1; do
        [ -n "$c" ] || continue
        d="$d/$c"
        if [ -L "$d" ]; then
            log "refusing $2: ${d#/newroot} is a symbolic link"
            exit 1
        elif [ ! -e "$d" ]; then
            mkdir -m "${3:-755}" "$d" && chown 0:0 "$d" || {
                log "refusing $2: cannot make ${d#/newroot}"; exit 1; }
        elif [ ! -d "$d" ]; then
            log "refusing $2: ${d#/newroot} is not a directory"
            exit 1
        fi
    done
    echo "$d"
)

# target FILE: FILE of the guest under /newroot, its directories made;
# refused if it is a link or not a regular file.
target() {
    tdir=$(guest_dir "${1%/*}" "$1" "${2:-755}") || return 1
    t="$tdir/${1##*/}"
    if [ -L "$t" ]; then
        log "refusing $1: it is a symbolic link"; return 1
    elif [ -e "$t" ] && [ ! -f "$t" ]; then
        log "refusing $1: not a regular file"; return 1
    fi
    echo "$t"
}

# install_file SRC GUESTFILE MODE [GID]: whole or unchanged (rename).
install_file() {
    t=$(target "$2") || return 1
    tmp="${t%/*}/.amiboot-new"
    rm -f "$tmp" && cat "$1" > "$tmp" && chown "0:${4:-0}" "$tmp" &&
        chmod "$3" "$tmp" && mv -f "$tmp" "$t" || {
        rm -f "$tmp"; log "cannot write $2"; return 1; }
}

gib() {
    awk -v k="$1" 'BEGIN { if (k >= 1048576) printf "%.1f GiB", k / 1048576
                           else printf "%.0f MiB", k / 1024 }'
}
fs_kb() { df -Pk /newroot | awk 'NR == 2 { print $2 }'; }

p_grow() {
    t0=$(now)
    type=$(awk '$2 == "/newroot" { print $3 }' /proc/mounts | tail -n 1)
    before=$(fs_kb)
    case "$type" in
        ext2|ext3|ext4) out=$(/usr/sbin/resize2fs "$dev" 2>&1) ;;
        xfs) out=$(/usr/sbin/xfs_growfs -d /newroot 2>&1) ;;
        btrfs) out=$(/usr/sbin/btrfs filesystem resize max /newroot 2>&1) ;;
        *) log "not growing /: no grower for $type"; return 1 ;;
    esac
    rc=$?
    if [ "$rc" != 0 ]; then
        log "cannot grow / ($type): $(echo "$out" | tail -n 1)"
        return 1
    fi
    after=$(fs_kb)
    if [ "$after" = "$before" ]; then
        log "/ fills its device already: $(gib "$after") ($type), checked" \
            "in $(since "$t0") s"
    else
        log "grew / from $(gib "$before") to $(gib "$after") ($type) in" \
            "$(since "$t0") s"
    fi
}

MARKER='# The following ssh key was injected by nova-amiboot'
p_keys() {
    t0=$(now)
    guest_dir /root /root/.ssh/authorized_keys 700 > /dev/null || return 1
    sshdir=$(guest_dir /root/.ssh /root/.ssh/authorized_keys 700) ||
        return 1
    chown 0:0 "$sshdir" && chmod 700 "$sshdir"
    ak=$(target /root/.ssh/authorized_keys) || return 1
    new="$sshdir/.amiboot-keys"
    rm -f "$new"
    if [ -f "$ak" ]; then cat "$ak" > "$new"; else : > "$new"; fi
    added=0; kept=0
    while IFS= read -r key; do
        [ -n "$key" ] || continue
        if grep -qxF -- "$key" "$new"; then
            kept=$((kept + 1))
        else
            # A file without a final newline must not swallow the marker.
            [ -s "$new" ] && [ "$(tail -c 1 "$new" | od -An -c |
                tr -d ' ')" != '\n' ] && echo >> "$new"
            printf '%s\n%s\n' "$MARKER" "$key" >> "$new"
            added=$((added + 1))
        fi
    done < $P/ssh-keys
    install_file "$new" /root/.ssh/authorized_keys 600
    r=$?
    rm -f "$new"
    [ "$r" = 0 ] || return 1
    log "ssh keys in /root/.ssh/authorized_keys: $added added," \
        "$kept already there, in $(since "$t0") s"
}

p_hostname() {
    install_file $P/hostname /etc/hostname 644 &&
        log "hostname $(cat $P/hostname)"
}

p_password() {
    sh=$(target /etc/shadow) || return 1
    hash=$(cat $P/password-hash)
    gid=0; perm=600
    if [ -f "$sh" ]; then
        gid=$(stat -c %g "$sh"); perm=$(stat -c %a "$sh")
    fi
    tmp=/tmp/amiboot-shadow
    mkdir -p /tmp
    { [ -f "$sh" ] && cat "$sh"; } | awk -F: -v OFS=: -v h="$hash" '
        $1 == "root" { $2 = h; found = 1 }
        { print }
        END { if (!found) print "root:" h ":::::::" }' > $tmp &&
        install_file $tmp /etc/shadow "$perm" "$gid" &&
        log "root password set in /etc/shadow"
}

p_seed() {
    seed=/var/lib/cloud/seed/nocloud
    for f in meta-data user-data; do
        install_file "$P/seed/$f" "$seed/$f" 600 || return 1
    done
    log "NoCloud seed in $seed ($(wc -c < $P/seed/user-data) bytes" \
        "of user data)"
}

p_files() {
    n=0; bad=0
    for f in $P/files/*; do
        [ -f "$f/path" ] || continue
        path=$(cat "$f/path")
        if install_file "$f/content" "$path" 644; then
            n=$((n + 1))
        else
            bad=$((bad + 1))
        fi
    done
    log "$n injected file(s) written"
    [ "$bad" = 0 ]
}

# SELinux guests relabel at their next boot (what we wrote is unlabelled).
p_relabel() {
    [ -d /newroot/etc/selinux ] && [ ! -L /newroot/etc/selinux ] || return 0
    t=$(target /.autorelabel) && : > "$t" && log "SELinux relabel arranged"
}

# The layer is applied once: its digest (names, sizes, bytes) is kept in
# the guest; a later boot with the same layer only grows the root (after
# a resize), so what the tenant changed since stays changed. A new layer
# (a rebuild, a new key) is applied again.
STAMP=/var/lib/amiboot/provisioned
layer_digest() {
    find $P -type f | sort | while IFS= read -r f; do
        echo "${f#$P/} $(wc -c < "$f")"; cat "$f"
    done | sha256sum | cut -d' ' -f1
}

if [ -n "$provision" ]; then
    t_prov=$(now)
    [ -f $P/grow ] && { p_grow || log "boots on with / not grown"; }
    digest=$(layer_digest)
    stamp=$(target $STAMP 2>/dev/null)
    if [ -n "$stamp" ] && [ -f "$stamp" ] &&
            [ "$(cat "$stamp")" = "$digest" ]; then
        log "layer $(echo "$digest" | cut -c1-12) applied already"
    else
        ok=1
        [ -f $P/ssh-keys ] && { p_keys || {
            ok=; log "boots on without the key"; }; }
        [ -f $P/hostname ] && { p_hostname || {
            ok=; log "boots on, hostname unset"; }; }
        [ -f $P/password-hash ] && { p_password || {
            ok=; log "boots on, root password unset"; }; }
        [ -f $P/seed/meta-data ] && { p_seed || {
            ok=; log "boots on without a seed"; }; }
        [ -d $P/files ] && { p_files || {
            ok=; log "boots on without the files"; }; }
        p_relabel || ok=
        if [ -n "$ok" ]; then
            mkdir -p /tmp && echo "$digest" > /tmp/amiboot-stamp &&
                install_file /tmp/amiboot-stamp $STAMP 600 &&
                log "layer $(echo "$digest" | cut -c1-12) applied"
        else
            log "layer $(echo "$digest" | cut -c1-12) applied in part;" \
                "again at the next boot"
        fi
    fi
    sync
    if [ "$mode" = ro ]; then
        mount -o remount,ro /newroot ||
            log "cannot remount / read-only"
    fi
    log "provisioned in $(since "$t_prov") s"
fi

[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no $init on $dev"

log "switch_root at $(now) s, $(since "$t_init") s after /init started"
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


def find_tool(name, package=None):
    """The host's binary ``name``, or ARIBuildFailed naming its package."""
    path = shutil.which(name, path=_TOOL_PATH)
    if not path:
        raise exception.ARIBuildFailed(
            reason="%s not found on this host (install %s)"
                   % (name, package or name))
    return path


def _libraries(binary):
    """Paths of the shared objects ``binary`` loads, its interpreter too.

    As initramfs-tools' copy_exec does: ldd's answer, on the host's own
    (trusted) binaries, never on an image's.
    """
    try:
        out, _err = utils.execute('ldd', binary)
    except exception.CommandFailed:
        return []           # static: nothing to copy
    libs = []
    for line in out.splitlines():
        m = re.match(r'\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x', line)
        if m:
            libs.append(m.group(1))
    return sorted(set(libs))


def copy_exec(binary, tree, dest='usr/sbin'):
    """Copy ``binary`` into ``tree``/``dest``, its libraries alongside.

    Each library goes to the path ldd names (contents, not links: the
    tree has no merged /usr), the ELF interpreter included.
    """
    target = os.path.join(tree, dest, os.path.basename(binary))
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    shutil.copyfile(os.path.realpath(binary), target)
    os.chmod(target, 0o755)
    copied = [target]
    for lib in _libraries(binary):
        out = os.path.join(tree, lib.lstrip('/'))
        if os.path.exists(out):
            continue
        os.makedirs(os.path.dirname(out), mode=0o755, exist_ok=True)
        shutil.copyfile(os.path.realpath(lib), out)
        os.chmod(out, 0o755)
        copied.append(out)
    return copied


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


# The appliance reads an image's disk in its own kernel: partitions
# (blkid), LVM (lvm, the device mapper) and every filesystem.
APPLIANCE_TOOLS = (('blkid', 'util-linux'), ('lvm', 'lvm2'))
APPLIANCE_MODULES = DEFAULT_MODULES + ('dm_mod',)

APPLIANCE_SCRIPT = r'''#!/bin/busybox sh
# /appliance of nova-amiboot's appliance ARI: what is on /dev/vda, read in
# this VM's kernel, reported on the serial console, each value base64.
# amiboot.appliance=probe only reports. amiboot.appliance=extract also
# copies the one root it found (partition, LV or btrfs filesystem) to
# /dev/vdb, merges a /boot partition into it, rewrites its fstab, trims it
# (holes in the output file), and copies kernels, their modules and
# os-release to the empty ext4 filesystem on /dev/vdc.
# amiboot.appliance=clean takes out of a snapshot (XFS or btrfs, /dev/vdb)
# what the instance's provisioning put in that its AMI (/dev/vda) has not:
# the marked SSH keys, a changed hostname, the NoCloud seed, the stamp.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
out=/dev/ttyS0
mode=probe
grep -qw amiboot.appliance=extract /proc/cmdline && mode=extract
grep -qw amiboot.appliance=clean /proc/cmdline && mode=clean
MARKER='# The following ssh key was injected by nova-amiboot'
SEED=/var/lib/cloud/seed/nocloud
STAMP=/var/lib/amiboot/provisioned
kv() { printf 'AMIBOOT-APPLIANCE %s %s\n' "$1" \
    "$(printf %s "$2" | base64 | tr -d '\n')" > $out; }
echo AMIBOOT-APPLIANCE-BEGIN > $out
mkdir -p /run/lvm /run/lock/lvm /etc/lvm /mnt /tmp
lvmconf='activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { filter = [ "a|^/dev/vda|", "r|.*|" ]
    obtain_device_list_from_udev = 0 }
global { use_lvmetad = 0 }'
lvm vgchange -ay --sysinit --config "$lvmconf" > /dev/null 2>&1
lvm vgmknodes --config "$lvmconf" > /dev/null 2>&1
is_root() {
    [ -f "$1/etc/os-release" ] && { [ -e "$1/sbin/init" ] ||
        [ -L "$1/sbin/init" ] || [ -e "$1/usr/lib/systemd/systemd" ]; }
}
ro_opts() {
    case "$1" in
        ext2|ext3|ext4) echo ro,noload ;;
        xfs) echo ro,norecovery,nouuid ;;
        btrfs) echo ro ;;
    esac
}
n=0; nroots=0; rdev=; rtype=; rsub=; bdev=; btype=
for dev in $([ $mode = clean ] || echo /dev/vda /dev/vda[0-9]* /dev/mapper/*)
do
    [ -b "$dev" ] || continue
    n=$((n + 1))
    type=$(blkid -s TYPE -o value "$dev" 2> /dev/null)
    kv "dev$n" "$dev"
    kv "type$n" "$type"
    kv "uuid$n" "$(blkid -s UUID -o value "$dev" 2> /dev/null)"
    kv "size$n" "$(blockdev --getsize64 "$dev")"
    opts=$(ro_opts "$type")
    [ -n "$opts" ] || continue
    m=/mnt/$n
    mkdir -p $m
    if ! mount -t "$type" -o $opts "$dev" $m 2> /dev/null; then
        kv "mount$n" failed
        continue
    fi
    kv "mount$n" ok
    if is_root $m; then
        kv "root$n" "/"
        kv "os$n" "$(grep '^PRETTY_NAME=' $m/etc/os-release | head -n 1)"
        nroots=$((nroots + 1)); rdev=$dev; rtype=$type; rsub=
    fi
    if [ "$type" = btrfs ]; then
        for sv in $(btrfs subvolume list $m 2> /dev/null |
                    sed 's/.* path //'); do
            if is_root "$m/$sv"; then
                kv "subvol$n" "$sv"
                nroots=$((nroots + 1)); rdev=$dev; rtype=$type; rsub=$sv
            fi
        done
    fi
    if ls $m/vmlinuz-* > /dev/null 2>&1; then
        kv "kernels$n" "$(cd $m && ls -d vmlinuz-* | tr '\n' ' ')"
        [ -z "$bdev" ] && bdev=$dev && btype=$type
    fi
    umount $m
done

fail() { kv result "$1"; echo AMIBOOT-APPLIANCE-END > $out; exit 0; }

extract() {
    [ "$nroots" = 1 ] || fail "roots $nroots"
    [ "$bdev" = "$rdev" ] && bdev=
    # The source's btrfs devices are forgotten: the copy has the same fsid.
    [ "$rtype" = btrfs ] && btrfs device scan --forget > /dev/null 2>&1
    dd if="$rdev" of=/dev/vdb bs=1M 2> /dev/null || fail copy
    sync
    case "$rtype" in
        xfs) mopts=nouuid ;;
        btrfs) mopts=rw${rsub:+,subvol=$rsub} ;;
        *) mopts=rw ;;
    esac
    mkdir -p /mnt/out /mnt/boot /mnt/xfer
    mount -t "$rtype" -o "$mopts" /dev/vdb /mnt/out 2> /dev/null ||
        fail "mount copy"
    uuid=$(blkid -s UUID -o value /dev/vdb)
    label=$(blkid -s LABEL -o value /dev/vdb)
    if [ -n "$bdev" ]; then
        mount -t "$btype" -o "$(ro_opts "$btype")" "$bdev" /mnt/boot ||
            fail "mount boot"
        if ls /mnt/out/boot/vmlinuz-* > /dev/null 2>&1; then
            kv boot kept
        else
            { mkdir -p /mnt/out/boot && cp -a /mnt/boot/. /mnt/out/boot/; } ||
                fail "merge boot"
            kv boot merged
        fi
        umount /mnt/boot
    fi
    f=/mnt/out/etc/fstab
    if [ -f $f ] && [ ! -L $f ]; then
        awk -v u="$uuid" -v l="$label" '
            /^[ \t]*#/ || NF < 2 { print; next }
            $2 == "/" { $1 = "UUID=" u; print; next }
            $1 ~ /^(UUID|PARTUUID|LABEL|PARTLABEL)=|^\/dev\// {
                if ($1 == "UUID=" u || (l != "" && $1 == "LABEL=" l)) {
                    print; next
                }
                print "# amiboot: " $0
                print $0 > "/tmp/dropped"; next
            }
            { print }' $f > $f.amiboot && mv $f.amiboot $f || fail fstab
        [ -f /tmp/dropped ] && while IFS= read -r line; do
            kv dropped "$line"
        done < /tmp/dropped
    fi
    mount -t ext4 /dev/vdc /mnt/xfer || fail "mount transfer"
    mkdir -p /mnt/xfer/boot /mnt/xfer/modules
    for k in /mnt/out/boot/vmlinuz-*; do
        [ -f "$k" ] || continue
        v=${k#/mnt/out/boot/vmlinuz-}
        for top in /mnt/out/usr/lib/modules /mnt/out/lib/modules; do
            [ -d "$top/$v" ] || continue
            cp -L "$k" /mnt/xfer/boot/ && cp -a "$top/$v" /mnt/xfer/modules/ ||
                fail "transfer $v"
            break
        done
    done
    for o in /mnt/out/etc/os-release /mnt/out/usr/lib/os-release; do
        [ -f "$o" ] && cp -L "$o" /mnt/xfer/os-release && break
    done
    umount /mnt/xfer
    fstrim /mnt/out > /dev/null 2>&1
    size=$(blockdev --getsize64 "$rdev")
    [ "$rtype" = btrfs ] && shrink_btrfs /mnt/out
    umount /mnt/out || fail "unmount copy"
    sync
    kv fstype "$rtype"
    kv uuid "$uuid"
    kv subvol "$rsub"
    kv size "$size"
    kv result ok
}
shrink_btrfs() {
    # btrfs shrinks while mounted, to its estimated minimum and some room
    # (the estimate is low when chunks must move): 64 MiB more, else more.
    min=$(btrfs inspect-internal min-dev-size "$1" 2> /dev/null |
          awk '{print $1}')
    case "$min" in
        ''|*[!0-9]*) return ;;
    esac
    for room in 64 128 256 512 1024; do
        want=$(( (min / 1048576 + room) * 1048576 ))
        [ "$want" -lt "$size" ] || break
        if btrfs filesystem resize "$want" "$1" > /dev/null 2>&1; then
            size=$want
            break
        fi
    done
    fstrim "$1" > /dev/null 2>&1
}

clean() {
    type=$(blkid -s TYPE -o value /dev/vdb)
    case "$type" in xfs|btrfs) ;; *) fail type ;; esac
    mkdir -p /mnt/base /mnt/out /tmp/base
    # The root subvolume of a btrfs AMI (its rootflags=subvol=...).
    sub=
    [ $type = btrfs ] && sub=$(sed -n \
        's|.*amiboot\.subvol=\([A-Za-z0-9@._+/-]*\).*|\1|p' /proc/cmdline)
    mount -t $type -o "$(ro_opts $type)${sub:+,subvol=$sub}" /dev/vda \
        /mnt/base || fail "mount base"
    [ -f /mnt/base/etc/hostname ] && [ ! -L /mnt/base/etc/hostname ] &&
        cp /mnt/base/etc/hostname /tmp/base/hostname
    for p in $SEED/meta-data $SEED/user-data $STAMP; do
        { [ -e "/mnt/base$p" ] || [ -L "/mnt/base$p" ]; } &&
            touch "/tmp/base/$(echo $p | tr / _)"
    done
    umount /mnt/base
    opts=rw${sub:+,subvol=$sub}
    [ $type = xfs ] && opts=nouuid
    [ $type = btrfs ] && btrfs device scan --forget > /dev/null 2>&1
    mount -t $type -o $opts /dev/vdb /mnt/out || fail "mount snapshot"
    ak=/mnt/out/root/.ssh/authorized_keys
    if [ -f $ak ] && [ ! -L $ak ] && grep -qxF "$MARKER" $ak; then
        awk -v m="$MARKER" '$0 == m { skip = 1; next }
            skip { skip = 0; next } { print }' $ak > $ak.amiboot &&
            chmod 600 $ak.amiboot && mv $ak.amiboot $ak &&
            kv removed /root/.ssh/authorized_keys
    fi
    h=/mnt/out/etc/hostname
    if [ -f /tmp/base/hostname ]; then
        if [ -f $h ] && ! cmp -s /tmp/base/hostname $h; then
            cp /tmp/base/hostname $h.amiboot && mv $h.amiboot $h &&
                kv removed /etc/hostname
        fi
    elif [ -f $h ]; then
        rm -f $h && kv removed /etc/hostname
    fi
    for p in $SEED/meta-data $SEED/user-data $STAMP; do
        [ -f "/mnt/out$p" ] && [ ! -L "/mnt/out$p" ] &&
            [ ! -e "/tmp/base/$(echo $p | tr / _)" ] &&
            rm -f "/mnt/out$p" && kv removed "$p"
    done
    fstrim /mnt/out > /dev/null 2>&1
    size=$(blockdev --getsize64 /dev/vdb)
    [ $type = btrfs ] && shrink_btrfs /mnt/out
    umount /mnt/out || fail "unmount snapshot"
    sync
    kv fstype "$type"
    kv uuid "$(blkid -s UUID -o value /dev/vdb)"
    kv size "$size"
    kv result ok
}
[ $mode = extract ] && extract
[ $mode = clean ] && clean
echo AMIBOOT-APPLIANCE-END > $out
'''


def build_appliance(output, modules_dir=None, kernel_package=None,
                    busybox='/bin/busybox'):
    """Write the appliance ARI (nova_amiboot.imagetools.appliance).

    The project's ARI with the device mapper, every filesystem module,
    blkid and lvm, and /appliance, the program it runs instead of a root
    when booted with ``amiboot.appliance=probe``.
    """
    return build_ari(output, modules_dir=modules_dir,
                     kernel_package=kernel_package,
                     modules=APPLIANCE_MODULES, busybox=busybox,
                     provision_tools=PROVISION_TOOLS + APPLIANCE_TOOLS,
                     extra={'appliance': APPLIANCE_SCRIPT})


def build_ari(output, modules_dir=None, kernel_package=None,
              modules=DEFAULT_MODULES, busybox='/bin/busybox',
              fs_modules=None, provision_tools=PROVISION_TOOLS, extra=None):
    """Write an ARI for a kernel to ``output``; return the modules loaded.

    Give either the kernel's ``lib/modules/<version>`` directory or a kernel
    .deb package. ``busybox`` must be a static binary (busybox-static).
    The returned modules are those loaded at every boot; ``fs_modules``
    ({blkid type: module}, default DEFAULT_FS_MODULES, ``{}`` for none)
    are included too and loaded only for a root of that type (a module
    this kernel lacks is left out, with a warning). ``provision_tools``
    ((binary, package) pairs) are the growers of first-boot provisioning,
    copied from the host with their libraries (``()`` for none).
    """
    if fs_modules is None:
        fs_modules = DEFAULT_FS_MODULES
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
        fs_orders = {}
        for fstype, module in sorted(fs_modules.items()):
            try:
                fs_orders[fstype] = [m for m in index.load_order([module])
                                     if m not in order]
            except exception.ModuleNotFound:
                LOG.warning("ARI for %(dir)s: no %(mod)s module; a %(fs)s "
                            "root needs it built in",
                            {'dir': modules_dir, 'mod': module,
                             'fs': fstype})
        tools = [find_tool(name, package) for name, package in
                 provision_tools]
        LOG.info("ARI for %(dir)s loads %(mods)s",
                 {'dir': modules_dir, 'mods': ' '.join(order)})

        tree = os.path.join(work, 'tree')
        for d in ('bin', 'dev', 'proc', 'sys', 'newroot', 'lib/modules',
                  'etc/amiboot-ari'):
            os.makedirs(os.path.join(tree, d), mode=0o755)
        shutil.copyfile(busybox, os.path.join(tree, 'bin/busybox'))
        os.chmod(os.path.join(tree, 'bin/busybox'), 0o755)
        everything = order + sorted({m for o in fs_orders.values()
                                     for m in o})
        for name in everything:
            _decompress_module(index.files[name],
                               os.path.join(tree, 'lib/modules',
                                            name + '.ko'))
        with open(os.path.join(tree, 'etc/amiboot-ari/modules'), 'w') as f:
            f.write(''.join(m + '\n' for m in order))
        os.makedirs(os.path.join(tree, 'etc/amiboot-ari/fs'), mode=0o755)
        for fstype, fs_order in fs_orders.items():
            with open(os.path.join(tree, 'etc/amiboot-ari/fs', fstype),
                      'w') as f:
                f.write(''.join(m + '\n' for m in fs_order))
        for tool in tools:
            copy_exec(tool, tree)
        # The growers look for mounts in /etc/mtab.
        os.symlink('/proc/mounts', os.path.join(tree, 'etc/mtab'))
        with open(os.path.join(tree, 'init'), 'w') as f:
            f.write(INIT_SCRIPT)
        os.chmod(os.path.join(tree, 'init'), 0o755)
        for name, text in sorted((extra or {}).items()):
            with open(os.path.join(tree, name), 'w') as f:
                f.write(text)
            os.chmod(os.path.join(tree, name), 0o755)
        _write_cpio(tree, output)
    return order
