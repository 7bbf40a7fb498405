"""What the embedded default needs from the host, checked before disk work.

``amiboot doctor`` prints every check with OK/FAIL and the fix;
``amiboot boot`` runs the ones a boot depends on before it builds a disk.

KVM "usable" means more than /dev/kvm existing and libvirt offering the
``kvm`` domain type: on some hosts (nested virtualisation without the
features a guest kernel needs) both are there and guests hang in early
boot. So the test boots a real kernel under ``qemu-system-x86_64
-enable-kvm`` and waits for its first console line; the verdict is kept in
the state directory per host kernel and QEMU version.
"""

import dataclasses
import grp
import json
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
import time

from lxml import etree
from oslo_log import log as logging

from nova_amiboot import utils

LOG = logging.getLogger(__name__)

QEMU_CONF = '/etc/libvirt/qemu.conf'
KVM_PROBE_SECONDS = 15
KVM_FACTS = 'host-kvm.json'


@dataclasses.dataclass
class Check:
    check: str
    status: str         # OK, FAIL or INFO
    detail: str
    fix: str = ''


def qemu_user(conf_path=QEMU_CONF):
    """(name, uid, gids) that libvirt runs QEMU as."""
    user = 'libvirt-qemu'
    group = None
    try:
        with open(conf_path) as f:
            text = f.read()
        m = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.M)
        if m:
            user = m.group(1)
        m = re.search(r'^\s*group\s*=\s*"([^"]+)"', text, re.M)
        if m:
            group = m.group(1)
    except OSError:
        pass
    try:
        pw = pwd.getpwnam(user.lstrip('+'))
    except KeyError:
        return 'root', 0, {0}
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall()
                          if pw.pw_name in g.gr_mem}
    if group:
        try:
            gids.add(grp.getgrnam(group.lstrip('+')).gr_gid)
        except KeyError:
            pass
    return pw.pw_name, pw.pw_uid, gids


def blocking_dir(path, uid, gids):
    """The first directory on the way to ``path`` ``uid`` cannot search.

    None if there is none.
    """
    if uid == 0:
        return None
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except FileNotFoundError:
            return None     # created later with our modes
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def check_state_dir(state_dir):
    name, uid, gids = qemu_user()
    d = blocking_dir(state_dir, uid, gids)
    if d is None:
        return Check('state dir', 'OK', '%s reachable by QEMU (user %s)'
                     % (state_dir, name))
    mode = stat.S_IMODE(os.stat(d).st_mode)
    return Check('state dir', 'FAIL',
                 '%s is not reachable by QEMU\'s user %s (uid %d): %s is '
                 'mode %04o' % (state_dir, name, uid, d, mode),
                 'chmod o+x %s, or use a --state-dir that %s can reach'
                 % (d, name))


def libvirt_domain_types(conn):
    """Domain types libvirt offers for x86_64 guests (capabilities)."""
    tree = etree.fromstring(conn.getCapabilities().encode())
    types = set()
    for guest in tree.findall('guest'):
        arch = guest.find('arch')
        if arch is not None and arch.get('name') == 'x86_64':
            types |= {d.get('type') for d in arch.findall('domain')}
    return types


def _qemu_binary():
    return shutil.which('qemu-system-x86_64')


def kvm_boots(kernel, timeout=KVM_PROBE_SECONDS):
    """(True/False, why): does ``kernel`` print its banner under KVM?"""
    qemu = _qemu_binary()
    if not qemu:
        return False, 'qemu-system-x86_64 not found'
    if not os.path.exists('/dev/kvm'):
        return False, '/dev/kvm does not exist'
    argv = [qemu, '-enable-kvm', '-machine', 'q35,accel=kvm', '-m', '256',
            '-nodefaults', '-display', 'none', '-no-reboot',
            '-serial', 'stdio', '-monitor', 'none', '-kernel', kernel,
            '-append', 'console=ttyS0 earlyprintk=ttyS0 panic=-1 '
            'root=/dev/amiboot-kvm-probe']
    t = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out = b''
    try:
        os.set_blocking(p.stdout.fileno(), False)

        def look():
            # True: booted; False: QEMU exited; None: look again.
            nonlocal out
            if p.poll() is not None:
                return False
            out += p.stdout.read() or b''
            return True if b'Linux version' in out else None

        booted = utils.poll(look, timeout, 0.1,
                            until=lambda seen: seen is not None)
        if booted:
            return True, 'a kernel booted under KVM in %.1f s' % (
                time.monotonic() - t)
        out += p.stdout.read() or b''
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
    if b'Linux version' in out:
        return True, 'a kernel booted under KVM'
    last = out.decode('utf-8', 'replace').strip().splitlines()[-1:] or ['']
    return False, ('a kernel did not start under KVM within %d s (%s)'
                   % (timeout, last[0][:120]))


def kvm_usable(conn, kernel, state_dir=None):
    """(True/False, why), remembered in ``state_dir`` per host."""
    if 'kvm' not in libvirt_domain_types(conn):
        return False, "libvirt offers no kvm domain type"
    key = '%s %s %s' % (platform.release(), _qemu_binary(),
                        os.path.getmtime(_qemu_binary() or '/'))
    facts = os.path.join(state_dir, KVM_FACTS) if state_dir else None
    if facts and os.path.exists(facts):
        try:
            with open(facts) as f:
                data = json.load(f)
            if data.get('key') == key:
                return data['usable'], data['why'] + ' (remembered)'
        except (OSError, ValueError, KeyError):
            pass
    if not kernel:
        return False, 'no kernel to test KVM with'
    usable, why = kvm_boots(kernel)
    if facts:
        with open(facts + '.part', 'w') as f:
            json.dump({'key': key, 'usable': usable, 'why': why}, f)
        os.replace(facts + '.part', facts)
    return usable, why


def choose_virt_type(wanted, conn, kernel, state_dir=None):
    """('kvm'|'qemu', why) for [local] virt_type ``wanted``."""
    if wanted == 'qemu':
        return 'qemu', 'configured'
    types = libvirt_domain_types(conn)
    if wanted == 'kvm':
        if 'kvm' not in types:
            return None, ("virt_type kvm: libvirt offers only %s on this "
                          "host; set [local] virt_type = qemu or auto"
                          % ', '.join(sorted(types)) or 'nothing')
        return 'kvm', 'configured'
    usable, why = kvm_usable(conn, kernel, state_dir)
    return ('kvm' if usable else 'qemu'), why


def host_kernel():
    path = '/boot/vmlinuz-%s' % platform.release()
    return path if os.access(path, os.R_OK) else None


def _tool_version(argv, pattern):
    try:
        out = subprocess.run(argv, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else None


def doctor(conf, uri, state_dir, kernel=None):
    """Every host requirement as a Check."""
    import libvirt

    checks = []
    conn = None
    try:
        conn = libvirt.open(uri)
        v = conn.getLibVersion()
        checks.append(Check('libvirtd', 'OK', '%s, libvirt %d.%d.%d' % (
            uri, v // 1000000, v // 1000 % 1000, v % 1000)))
    except libvirt.libvirtError as e:
        checks.append(Check('libvirtd', 'FAIL', str(e).splitlines()[0],
                            'start libvirtd and virtlogd '
                            '(tools/setup-host.sh does)'))
    qemu = _qemu_binary()
    ver = qemu and _tool_version([qemu, '--version'],
                                 r'version (\S+)')
    checks.append(Check('QEMU', 'OK' if ver else 'FAIL',
                        '%s %s' % (qemu, ver) if ver else
                        'qemu-system-x86_64 not found',
                        '' if ver else 'apt-get install qemu-system-x86'))
    if conn is not None:
        usable, why = kvm_usable(conn, kernel or host_kernel(), state_dir)
        checks.append(Check(
            'KVM', 'OK' if usable else 'FAIL', why,
            '' if usable else "guests run with TCG (software emulation); "
            "[local] virt_type = auto or qemu uses it"))
        wanted = conf.local.virt_type
        chosen = ('kvm' if usable else 'qemu') if wanted == 'auto' else \
            wanted
        ok = chosen == 'qemu' or usable
        checks.append(Check('virt_type', 'OK' if ok else 'FAIL',
                            '%s -> %s' % (wanted, chosen),
                            '' if ok else 'set [local] virt_type = auto'))
    qsd = _tool_version(['qemu-storage-daemon', '--version'],
                        r'version (\S+)')
    fuse = os.path.exists('/dev/fuse') and shutil.which('fusermount3')
    nbd = os.path.exists('/sys/block/nbd0')
    ok = bool(qsd and (fuse or nbd))
    checks.append(Check(
        'disk attach', 'OK' if ok else 'FAIL',
        'qemu-storage-daemon %s, FUSE %s, nbd %s' % (
            qsd or 'missing', 'yes' if fuse else 'no',
            'yes' if nbd else 'no'),
        '' if ok else 'apt-get install qemu-system-x86 fuse3 (or modprobe '
        'nbd)'))
    e2 = _tool_version(['debugfs', '-V'], r'debugfs (\S+)')
    ok = bool(e2) and all(shutil.which(t) for t in (
        'e2fsck', 'resize2fs', 'tune2fs', 'dumpe2fs', 'blkid'))
    checks.append(Check('e2fsprogs', 'OK' if ok else 'FAIL',
                        'e2fsprogs %s' % (e2 or 'missing'),
                        '' if ok else 'apt-get install e2fsprogs'))
    tools = [t for t in ('qemu-img', 'sfdisk', 'ssh', 'cpio')
             if not shutil.which(t)]
    checks.append(Check('tools', 'FAIL' if tools else 'OK',
                        'missing: %s' % ' '.join(tools) if tools else
                        'qemu-img, sfdisk, ssh, cpio',
                        'apt-get install qemu-utils fdisk openssh-client '
                        'cpio' if tools else ''))
    checks.append(check_state_dir(state_dir))
    if conn is not None:
        conn.close()
    return checks
