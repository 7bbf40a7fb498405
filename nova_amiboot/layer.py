"""The per-instance provisioning layer: a cpio archive after the ARI.

Linux unpacks concatenated initramfs archives in order, so the instance's
private ramdisk copy can be the project's ARI followed by a small newc
archive of per-instance data. The ARI's /init reads it at first boot,
after mounting the root read-write and before switch_root (see
doc/source/provisioning.rst for the format and what /init does with it).

Nothing here parses the tenant's filesystem: the host only writes data it
validated itself, with positive grammars and bounds, into an archive it
writes byte by byte (reproducible: fixed times and owners, sorted).

Format v1, every member under ``amiboot/provision/``::

    version              "1\\n"
    instance-id          the instance's id, "\\n" (so that no two instances
                         have the same layer: its digest marks it applied)
    grow                 "1\\n" when the root is to be grown to its device
    hostname             one RFC 1123 label, "\\n"
    ssh-keys             OpenSSH public key lines, one per key
    password-hash        root's crypt hash ($6$, $5$ or $y$), "\\n"
    seed/meta-data       NoCloud meta-data, written by us as the host route
                         writes it (nocloud_meta_data())
    seed/user-data       the user data, raw bytes
    files/NNNN/path      absolute, normalized guest path, "\\n"
    files/NNNN/content   the file's raw bytes
"""

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import re
import typing

from nova_amiboot import exception
from nova_amiboot import utils

FORMAT_VERSION = 1
PREFIX = 'amiboot/provision'
# Fixed timestamp of every member (the ARI builder's too).
EPOCH = 946684800

MAX_KEYS = 16
MAX_KEY_LINE = 16384
MAX_USER_DATA = 64 * 1024
MAX_FILES = 16
MAX_FILE_SIZE = 64 * 1024
MAX_FILES_TOTAL = 256 * 1024
MAX_PATH = 255
MAX_LOCAL_HOSTNAME = 255

KEY_TYPES = frozenset((
    'ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
    'ecdsa-sha2-nistp521', 'sk-ssh-ed25519@openssh.com',
    'sk-ecdsa-sha2-nistp256@openssh.com',
))
_B64 = re.compile(r'[A-Za-z0-9+/]+={0,2}\Z')
_COMMENT = re.compile(r'[A-Za-z0-9@._+=:,-]+( [A-Za-z0-9@._+=:,-]+)*\Z')
_HOSTNAME = re.compile(r'[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z')
_CRYPT = (
    re.compile(r'\$6\$(rounds=[0-9]{4,9}\$)?[./A-Za-z0-9]{1,16}'
               r'\$[./A-Za-z0-9]{86}\Z'),
    re.compile(r'\$5\$(rounds=[0-9]{4,9}\$)?[./A-Za-z0-9]{1,16}'
               r'\$[./A-Za-z0-9]{43}\Z'),
    # yescrypt: $y$<params>$<salt>$<hash>, all in crypt's base64.
    re.compile(r'\$y\$[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{1,86}'
               r'\$[./A-Za-z0-9]{43}\Z'),
)
_COMPONENT = re.compile(r'[A-Za-z0-9._@+=,:~-]{1,%d}\Z' % MAX_PATH)
_INSTANCE_ID = re.compile(r'[A-Za-z0-9._-]{1,64}\Z')


def _refuse(instance, reason):
    raise exception.InvalidProvisionSpec(instance=instance, reason=reason)


def check_ssh_key(instance, key):
    if not isinstance(key, str) or '\n' in key or '\r' in key:
        _refuse(instance, "an ssh key is not one line of text")
    if len(key) > MAX_KEY_LINE:
        _refuse(instance, "an ssh key is over %d characters" % MAX_KEY_LINE)
    parts = key.strip().split(' ', 2)
    if len(parts) < 2:
        _refuse(instance, "an ssh key is not '<type> <base64> [comment]'")
    ktype, body = parts[0], parts[1]
    if ktype not in KEY_TYPES:
        _refuse(instance, "ssh key type %r is not one of %s"
                % (ktype[:40], ', '.join(sorted(KEY_TYPES))))
    if not _B64.match(body) or len(body) % 4:
        _refuse(instance, "an ssh key's body is not base64")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        _refuse(instance, "an ssh key's body is not base64")
    # The blob names its own type first (RFC 4253 string).
    want = ktype.encode()
    if blob[:4] != len(want).to_bytes(4, 'big') or \
            blob[4:4 + len(want)] != want:
        _refuse(instance, "an ssh key's body is not a %s key" % ktype)
    if len(parts) == 3 and not _COMMENT.match(parts[2]):
        _refuse(instance, "an ssh key's comment has characters outside "
                "[A-Za-z0-9@._+=:,-] and single spaces")
    return ' '.join(parts)


def check_path(instance, path):
    if not isinstance(path, str) or not path.startswith('/'):
        _refuse(instance, "injected file path %r is not absolute"
                % (path if isinstance(path, str) else type(path)))
    if len(path) > MAX_PATH:
        _refuse(instance, "an injected file path is over %d characters"
                % MAX_PATH)
    parts = path.split('/')[1:]
    if not parts or any(p in ('', '.', '..') for p in parts):
        _refuse(instance, "injected file path %r is not normalized (empty, "
                "'.' or '..' component)" % path)
    for p in parts:
        if not _COMPONENT.match(p):
            _refuse(instance, "injected file path %r has characters outside "
                    "[A-Za-z0-9._@+=,:~-]" % path)
    return path


def nocloud_meta_data(instance_id, local_hostname):
    """cloud-init's NoCloud meta-data, the same bytes on both routes.

    JSON strings are YAML strings: no value can add a key or a line.
    """
    return ('instance-id: %s\nlocal-hostname: %s\n' % (
        json.dumps(str(instance_id)),
        json.dumps(str(local_hostname)))).encode('ascii')


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the layer carries for one instance; validated on creation.

    ``instance`` names the instance in every error and is the NoCloud
    instance-id. ``files`` is a sequence of (absolute path, bytes).
    ``local_hostname`` is the seed's local-hostname (the request's full
    hostname, or the instance's name, as the host route writes it; any
    text up to 255 characters, JSON-quoted); by default ``hostname``, else
    the instance id.
    """

    instance: str
    ssh_keys: typing.Sequence[str] = ()
    hostname: typing.Optional[str] = None
    password_hash: typing.Optional[str] = None
    user_data: typing.Optional[bytes] = None
    files: typing.Sequence[typing.Tuple[str, bytes]] = ()
    grow: bool = False
    local_hostname: typing.Optional[str] = None

    def __post_init__(self):
        inst = self.instance
        if not isinstance(inst, str) or not _INSTANCE_ID.match(inst):
            _refuse(repr(str(inst)[:64]), "the instance id is not 1-64 "
                    "characters of [A-Za-z0-9._-]")
        if isinstance(self.ssh_keys, str):
            _refuse(inst, "ssh_keys must be a list of keys")
        if len(self.ssh_keys) > MAX_KEYS:
            _refuse(inst, "%d ssh keys, over the limit of %d"
                    % (len(self.ssh_keys), MAX_KEYS))
        object.__setattr__(self, 'ssh_keys', tuple(
            check_ssh_key(inst, k) for k in self.ssh_keys))
        if self.hostname is not None and (
                not isinstance(self.hostname, str) or
                not _HOSTNAME.match(self.hostname)):
            _refuse(inst, "hostname %r is not an RFC 1123 label "
                    "(1-63 of [A-Za-z0-9-], no leading or trailing '-')"
                    % str(self.hostname)[:70])
        if self.local_hostname is not None and (
                not isinstance(self.local_hostname, str) or
                len(self.local_hostname) > MAX_LOCAL_HOSTNAME):
            _refuse(inst, "the seed's local-hostname is not a string of at "
                    "most %d characters" % MAX_LOCAL_HOSTNAME)
        if self.password_hash is not None and (
                not isinstance(self.password_hash, str) or
                not any(c.match(self.password_hash) for c in _CRYPT)):
            _refuse(inst, "the password hash is not a $6$, $5$ or $y$ "
                    "crypt hash")
        if self.user_data is not None:
            if not isinstance(self.user_data, bytes):
                _refuse(inst, "user data must be bytes")
            if len(self.user_data) > MAX_USER_DATA:
                _refuse(inst, "user data is %d bytes, over the limit of %d"
                        % (len(self.user_data), MAX_USER_DATA))
        if len(self.files) > MAX_FILES:
            _refuse(inst, "%d injected files, over the limit of %d"
                    % (len(self.files), MAX_FILES))
        files, total, seen = [], 0, set()
        for item in self.files:
            try:
                path, content = item
            except (TypeError, ValueError):
                _refuse(inst, "an injected file is not (path, content)")
            check_path(inst, path)
            if path in seen:
                _refuse(inst, "%s is injected twice" % path)
            seen.add(path)
            if not isinstance(content, bytes):
                _refuse(inst, "the content of %s must be bytes" % path)
            if len(content) > MAX_FILE_SIZE:
                _refuse(inst, "%s is %d bytes, over the limit of %d"
                        % (path, len(content), MAX_FILE_SIZE))
            total += len(content)
            files.append((path, content))
        if total > MAX_FILES_TOTAL:
            _refuse(inst, "injected files total %d bytes, over the limit "
                    "of %d" % (total, MAX_FILES_TOTAL))
        object.__setattr__(self, 'files', tuple(files))
        object.__setattr__(self, 'grow', bool(self.grow))

    def members(self):
        """{relative name: bytes} of the layer's files (format v1)."""
        m = {'version': b'%d\n' % FORMAT_VERSION}
        m['instance-id'] = self.instance.encode() + b'\n'
        if self.grow:
            m['grow'] = b'1\n'
        if self.hostname:
            m['hostname'] = self.hostname.encode() + b'\n'
        if self.ssh_keys:
            m['ssh-keys'] = ''.join(k + '\n' for k in self.ssh_keys).encode()
        if self.password_hash:
            m['password-hash'] = self.password_hash.encode() + b'\n'
        if self.user_data is not None:
            m['seed/meta-data'] = nocloud_meta_data(
                self.instance,
                self.local_hostname or self.hostname or self.instance)
            m['seed/user-data'] = self.user_data
        for i, (path, content) in enumerate(self.files):
            m['files/%04d/path' % i] = path.encode() + b'\n'
            m['files/%04d/content' % i] = content
        return m


def digest(spec):
    """The layer's SHA-256, as the ARI's /init computes it (hex).

    Of each member, in the order of their full names: "NAME SIZE\\n" and
    its bytes. /init keeps it in the guest (/var/lib/amiboot/provisioned)
    once it applied the layer, and applies the same layer only once.
    """
    h = hashlib.sha256()
    for name, data in sorted(spec.members().items(),
                             key=lambda kv: PREFIX + '/' + kv[0]):
        h.update(b'%s %d\n' % (name.encode(), len(data)))
        h.update(data)
    return h.hexdigest()


def _newc_entry(ino, name, mode, data=b''):
    name_b = name.encode() + b'\0'
    hdr = '070701' + ''.join('%08X' % v for v in (
        ino, mode, 0, 0, 2 if mode & 0o040000 else 1, EPOCH, len(data),
        0, 0, 0, 0, len(name_b), 0))
    out = hdr.encode() + name_b
    out += b'\0' * (-len(out) % 4)
    out += data + b'\0' * (-len(data) % 4)
    return out


def archive(spec):
    """The layer as bytes: an uncompressed newc cpio, sorted, fixed."""
    files = {PREFIX + '/' + k: v for k, v in spec.members().items()}
    dirs = set()
    for name in files:
        parts = name.split('/')[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add('/'.join(parts[:i]))
    out, ino = [], 1
    for name in sorted(dirs | set(files)):
        if name in dirs:
            out.append(_newc_entry(ino, name, 0o040700))
        else:
            out.append(_newc_entry(ino, name, 0o100600, files[name]))
        ino += 1
    out.append(_newc_entry(0, 'TRAILER!!!', 0))
    data = b''.join(out)
    return data + b'\0' * (-len(data) % 512)


def write_instance_ramdisk(ari_path, dest_path, spec, xattrs=None):
    """Write ``dest_path``: the ARI, padding, then the layer of ``spec``.

    Atomic (a temporary file in the same directory, fsync'd, renamed):
    whole or absent. Mode 0644 and owned by the writer (root on a compute
    node), as the instance's private ramdisk copy is today
    (spawn.private_copy): libvirt hands it to QEMU while the guest runs.
    The kernel reads an uncompressed archive only at a 4-byte offset, so
    the ARI is padded with NULs (which the kernel skips) first.
    ``xattrs``: {name: bytes} set on the file before it is renamed into
    place (the cache's mark of the base it was made from); one the
    filesystem refuses is left out.
    """
    if not isinstance(spec, Spec):
        raise TypeError("spec must be a layer.Spec")
    layer = archive(spec)
    tmp = '%s.part' % dest_path
    try:
        with open(ari_path, 'rb') as src, \
                open(tmp, 'wb') as dst:
            # Shared extents where the filesystem has them: then only
            # the layer is new bytes.
            utils.clone_or_copy(src, dst)
            pad = -dst.tell() % 512
            dst.write(b'\0' * pad)
            dst.write(layer)
            dst.flush()
            os.fchmod(dst.fileno(), 0o644)
            for name, value in (xattrs or {}).items():
                try:
                    os.setxattr(dst.fileno(), name, value)
                except OSError:
                    pass
            os.fsync(dst.fileno())
        os.rename(tmp, dest_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    utils.fsync_dir(os.path.dirname(os.path.abspath(dest_path)))
    return dest_path
