"""Build the test bed's AKI/ARI/AMI triplet, cached by content.

AKI: the kernel of Debian's linux-image-cloud-amd64 (downloaded with apt,
unpacked, not installed). ARI: built by the product's own ARI builder. AMI:
a small ext4 filesystem (no partition table) whose init reports facts on the
serial console and powers off; the same tree as XFS (``mkfs.xfs -p``, a
protofile) and btrfs (``mkfs.btrfs --rootdir``) AMIs, ``roots`` in the
manifest. Nothing is mounted to build any of them.

The cache key hashes every input (kernel package, busybox, the builder and
this file), so a rerun with the same inputs costs nothing.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

from oslo_concurrency import lockutils

from nova_amiboot.imagetools import ami
from nova_amiboot.imagetools import ari

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get('AMIBOOT_TESTBED_CACHE',
                       '/var/cache/nova-amiboot/testbed')
KERNEL_META_PACKAGE = 'linux-image-cloud-amd64'
BUSYBOX = '/bin/busybox'
AMI_SIZE_MB = 32
# mkfs.xfs refuses filesystems under 300 MiB (xfsprogs >= 5.19); btrfs
# wants about 110 MiB for its default profiles. The images are sparse.
FS_SIZE_MB = {'ext4': AMI_SIZE_MB, 'xfs': 300, 'btrfs': 128}
FILESYSTEMS = ('ext4', 'xfs', 'btrfs')


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def kernel_package():
    """Download (once) the concrete kernel package behind the metapackage."""
    debs = os.path.join(CACHE, 'debs')
    os.makedirs(debs, exist_ok=True)
    out = subprocess.run(['apt-cache', 'depends', KERNEL_META_PACKAGE],
                         check=True, capture_output=True, text=True).stdout
    names = [line.split()[1] for line in out.splitlines()
             if line.strip().startswith('Depends: linux-image-')]
    if not names:
        raise RuntimeError("apt knows no %s; run apt-get update"
                           % KERNEL_META_PACKAGE)
    name = names[0]
    have = [f for f in os.listdir(debs) if f.startswith(name + '_')
            and f.endswith('.deb')]
    if not have:
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            # _apt cannot write into root's temporary directory.
            os.chmod(tmp, 0o777)
            subprocess.run(['apt-get', 'download', '-q', name], cwd=tmp,
                           check=True, capture_output=True)
            (deb,) = [f for f in os.listdir(tmp) if f.endswith('.deb')]
            os.replace(os.path.join(tmp, deb), os.path.join(debs, deb))
            have = [deb]
    return os.path.join(debs, sorted(have)[-1])


def _populate_rootfs(tree, hostname='amiboot-testbed'):
    for d in ('bin', 'sbin', 'etc', 'dev', 'proc', 'sys', 'tmp', 'run',
              'var/lib/cloud', 'root'):
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    os.chmod(os.path.join(tree, 'root'), 0o700)
    os.chmod(os.path.join(tree, 'tmp'), 0o1777)
    shutil.copyfile(BUSYBOX, os.path.join(tree, 'bin/busybox'))
    os.chmod(os.path.join(tree, 'bin/busybox'), 0o755)
    applets = subprocess.run([BUSYBOX, '--list'], check=True,
                             capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != 'busybox':
            os.symlink('busybox', os.path.join(tree, 'bin', applet))
    shutil.copyfile(os.path.join(HERE, 'ami-init.sh'),
                    os.path.join(tree, 'sbin/init'))
    os.chmod(os.path.join(tree, 'sbin/init'), 0o755)
    files = {
        'etc/hostname': hostname + '\n',
        'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
        'etc/group': 'root:x:0:\n',
        'etc/shadow': 'root:*:19000:0:99999:7:::\n',
    }
    for rel, content in files.items():
        with open(os.path.join(tree, rel), 'w') as f:
            f.write(content)
    os.chmod(os.path.join(tree, 'etc/shadow'), 0o640)


def mkfs(tree, part, fstype='ext4', size_mb=None):
    """Make a ``fstype`` filesystem image ``part`` holding ``tree``."""
    size_mb = size_mb or FS_SIZE_MB[fstype]
    if fstype == 'ext4':
        subprocess.run(['mkfs.ext4', '-q', '-F', '-L', 'amiroot', '-d', tree,
                        '-T', 'default', '-b', '4096',
                        '-E', 'root_owner=0:0', part, '%dM' % size_mb],
                       check=True, capture_output=True)
        return
    with open(part, 'wb') as f:
        f.truncate(size_mb << 20)
    if fstype == 'xfs':
        proto = part + '.proto'
        with open(proto, 'w') as f:
            f.write(ami.xfs_protofile(tree))
        try:
            subprocess.run(['mkfs.xfs', '-q', '-f', '-L', 'amiroot', '-p',
                            proto, part], check=True, capture_output=True)
        finally:
            os.unlink(proto)
    elif fstype == 'btrfs':
        subprocess.run(['mkfs.btrfs', '-q', '-f', '-L', 'amiroot',
                        '--rootdir', tree, part], check=True,
                       capture_output=True)
    else:
        raise ValueError("no test AMI on %s" % fstype)


def build_ami(output, size_mb=None, fstype='ext4', customize=None):
    """Write a reporting AMI on ``fstype``.

    ``customize(tree)`` may change the tree first (a hostile AMI's links).
    """
    with tempfile.TemporaryDirectory(prefix='amiboot-testbed-') as tmp:
        tree = os.path.join(tmp, 'root')
        os.makedirs(tree)
        _populate_rootfs(tree)
        if customize:
            customize(tree)
        part = output + '.part'
        mkfs(tree, part, fstype, size_mb)
        os.replace(part, output)


def _key(deb):
    h = hashlib.sha256()
    # The ARI holds the host's growers and their libraries.
    tools = [sha256_file(os.path.realpath(ari.find_tool(name, pkg)))
             for name, pkg in ari.PROVISION_TOOLS]
    for part in tools + [os.path.basename(deb), sha256_file(BUSYBOX),
                         sha256_file(ari.__file__), sha256_file(__file__),
                         sha256_file(os.path.join(HERE, 'ami-init.sh'))]:
        h.update(part.encode())
    return h.hexdigest()[:16]


def build():
    """Return {'kernel', 'ramdisk', 'root', 'modules', 'dir'} (cached)."""
    deb = kernel_package()
    out = os.path.join(CACHE, _key(deb))
    manifest = os.path.join(out, 'manifest.json')
    with lockutils.lock('testbed', lock_path=CACHE, external=True):
        if os.path.exists(manifest):
            with open(manifest) as f:
                return json.load(f)
        tmp = out + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with tempfile.TemporaryDirectory(prefix='amiboot-kpkg-') as kdir:
            ari.unpack_kernel_package(deb, kdir)
            shutil.copyfile(ari.find_kernel_image(kdir),
                            os.path.join(tmp, 'vmlinuz'))
            modules = ari.build_ari(os.path.join(tmp, 'initrd.img'),
                                    modules_dir=ari.find_modules_dir(kdir))
        roots = {}
        for fstype in FILESYSTEMS:
            name = 'root.img' if fstype == 'ext4' else 'root-%s.img' % fstype
            build_ami(os.path.join(tmp, name), fstype=fstype)
            roots[fstype] = os.path.join(out, name)
        info = {'kernel': os.path.join(out, 'vmlinuz'),
                'ramdisk': os.path.join(out, 'initrd.img'),
                'root': os.path.join(out, 'root.img'), 'roots': roots,
                'modules': modules, 'kernel_package': deb, 'dir': out}
        with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
            json.dump(info, f, indent=1)
        # Readable by the QEMU user, which opens kernel and ramdisk itself.
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        os.chmod(tmp, 0o755)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return info


if __name__ == '__main__':
    print(json.dumps(build(), indent=1))
