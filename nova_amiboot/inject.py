"""Write into the guest filesystem from user space (e2fsprogs' debugfs).

The guest image is untrusted: it is never mounted in the host kernel, and
paths resolve inside the image only. Every path is absolute, normalised and
plain (no '..', whitespace or quotes: OSSA-2012-008), and every existing
component on the way to the target must be a real directory (the target a
regular file): a symlink anywhere (for example /root/.ssh -> /etc) is
refused, never followed (OSSA-2012-011).

debugfs exits 0 even when a command fails, so its stderr is read: anything
but its version banner is an error.
"""

import os
import re
import shutil
import subprocess
import tempfile

from oslo_log import log as logging

from nova_amiboot import exception

LOG = logging.getLogger(__name__)

KEY_MARKER = '# The following ssh key was injected by nova-amiboot'
_PLAIN = re.compile(r'^[A-Za-z0-9._@+:-]+$')
_HOSTNAME = re.compile(r'^(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$')
_BANNER = re.compile(r'^debugfs [0-9.]+ \(.*\)$')
_TYPES = {'directory': 'dir', 'regular': 'file', 'symlink': 'link'}


def _parse_stats(out):
    """{path: 'dir'|'file'|'link'|...} from debugfs 'stat' output."""
    types, current = {}, None
    for line in out.splitlines():
        m = re.match(r'^debugfs: stat (\S+)$', line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r'^Inode: \d+\s+Type: (\S+)', line)
        if m and current:
            types[current] = _TYPES.get(m.group(1), m.group(1))
            current = None
    return types


def staging_dir():
    # The privileged nbd helper accepts debugfs 'write' sources only from
    # directories named like this.
    return tempfile.mkdtemp(prefix='amiboot-inject-')


class GuestFS(object):
    """An ext2/3/4 filesystem on an attached Target, edited with debugfs."""

    def __init__(self, target, instance='?'):
        self.target = target
        self.instance = instance
        self._checked = {}

    def _fail(self, what, reason):
        raise exception.InjectionFailed(instance=self.instance, what=what,
                                        reason=reason)

    def debugfs(self, script, write=False, what='files'):
        args = (['-w'] if write else []) + ['-f', '-']
        try:
            out, err = self.target.run('debugfs', args,
                                       process_input=script)
        except exception.CommandFailed as e:
            self._fail(what, str(e))
        errors = [line for line in err.splitlines()
                  if line.strip() and not _BANNER.match(line.strip())]
        return out, errors

    def _prefixes(self, path):
        norm = os.path.normpath(path)
        if not path.startswith('/') or norm != path or path == '/':
            raise exception.UnsafeInjectionPath(
                instance=self.instance, path=path,
                reason="not an absolute, normalised file path")
        names = path.strip('/').split('/')
        for name in names:
            if name in ('.', '..') or not _PLAIN.match(name):
                raise exception.UnsafeInjectionPath(
                    instance=self.instance, path=path,
                    reason="component %r is not a plain name" % name)
        return ['/' + '/'.join(names[:i + 1]) for i in range(len(names))]

    def _judge(self, path, prefixes, types):
        result, missing = [], False
        for i, p in enumerate(prefixes):
            kind = None if missing else types.get(p)
            if kind is None:
                missing = True
            elif kind == 'link':
                raise exception.UnsafeInjectionPath(
                    instance=self.instance, path=path,
                    reason="%s is a symbolic link" % p)
            elif i < len(prefixes) - 1 and kind != 'dir':
                raise exception.UnsafeInjectionPath(
                    instance=self.instance, path=path,
                    reason="%s is not a directory" % p)
            elif i == len(prefixes) - 1 and kind != 'file':
                raise exception.UnsafeInjectionPath(
                    instance=self.instance, path=path,
                    reason="%s exists and is not a regular file" % p)
            result.append((p, kind))
        return result

    def check_path(self, path):
        """Validate ``path``; return the parts and their types.

        Returns [(path_so_far, 'dir'|'file'|None)] for each component,
        None where it does not exist (and so neither does what follows).
        """
        prefixes = self._prefixes(path)
        return self._judge(path, prefixes, self._stat_types(prefixes))

    def _stat_types(self, paths):
        out, _errors = self.debugfs(''.join('stat %s\n' % p for p in paths))
        return _parse_stats(out)

    def stat(self, path):
        """(mode, uid, gid) of an existing file checked by check_path."""
        out, errors = self.debugfs('stat %s\n' % path)
        if errors:
            self._fail(path, '; '.join(errors))
        mode = re.search(r'Mode:\s+(0[0-7]+)', out)
        owner = re.search(r'User:\s+(\d+)\s+Group:\s+(\d+)', out)
        return int(mode.group(1), 8), int(owner.group(1)), \
            int(owner.group(2))

    def read(self, path):
        """Text content of a regular file, or None if absent.

        One debugfs run checks the path and reads the file; the check is
        remembered for a following write() of the same path.
        """
        prefixes = self._prefixes(path)
        script = ''.join('stat %s\n' % p for p in prefixes)
        out, errors = self.debugfs(script + 'cat %s\n' % path)
        stats, _sep, content = out.partition('debugfs: cat %s\n' % path)
        parts = self._judge(path, prefixes, _parse_stats(stats))
        self._checked[path] = parts
        if parts[-1][1] is None:
            return None
        if errors:
            self._fail(path, '; '.join(errors))
        return content.encode()

    def write(self, path, data, mode=0o644, uid=0, gid=0, dir_mode=0o755,
              parent_mode=None):
        """Create or replace a regular file; create missing directories.

        Directories it creates get ``dir_mode`` and owner 0:0; with
        ``parent_mode`` the file's directory gets that mode and 0:0 too.
        """
        parts = self._checked.pop(path, None) or self.check_path(path)
        script = []
        for p, kind in parts[:-1]:
            if kind is None:
                script += ['mkdir %s' % p,
                           'sif %s mode 0%o' % (p, 0o40000 | dir_mode),
                           'sif %s uid 0' % p, 'sif %s gid 0' % p]
        parent, name = os.path.split(path)
        if parent_mode is not None:
            script += ['sif %s mode 0%o' % (parent, 0o40000 | parent_mode),
                       'sif %s uid 0' % parent, 'sif %s gid 0' % parent]
        if parts[-1][1] == 'file':
            script.append('rm %s' % path)
        stage = staging_dir()
        try:
            src = os.path.join(stage, 'f0')
            with open(src, 'wb') as f:
                f.write(data)
            script += ['cd %s' % parent,
                       'write %s %s' % (src, name),
                       'sif %s mode 0%o' % (name, 0o100000 | mode),
                       'sif %s uid %d' % (name, uid),
                       'sif %s gid %d' % (name, gid)]
            _out, errors = self.debugfs('\n'.join(script) + '\n',
                                        write=True, what=path)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if errors:
            self._fail(path, '; '.join(errors))

    def is_dir(self, path):
        return self._stat_types([path]).get(path) == 'dir'


def inject_key(fs, key):
    """Append ``key`` to /root/.ssh/authorized_keys (0600, dir 0700, 0:0)."""
    key = key.strip()
    if not key or '\n' in key:
        raise exception.InjectionFailed(instance=fs.instance, what='SSH key',
                                        reason="not a single-line key")
    path = '/root/.ssh/authorized_keys'
    current = (fs.read(path) or b'').decode('utf-8', 'replace')
    if key in (line.strip() for line in current.splitlines()):
        LOG.debug("Instance %s: key already in %s", fs.instance, path)
        return False
    if current and not current.endswith('\n'):
        current += '\n'
    fs.write(path, (current + KEY_MARKER + '\n' + key + '\n').encode(),
             mode=0o600, dir_mode=0o700, parent_mode=0o700)
    return True


def inject_hostname(fs, hostname):
    short = hostname.split('.')[0]
    if not _HOSTNAME.match(short):
        raise exception.InjectionFailed(instance=fs.instance,
                                        what='hostname',
                                        reason="%r is not a valid hostname"
                                        % hostname)
    fs.write('/etc/hostname', (short + '\n').encode(), mode=0o644)


def hash_password(password):
    """SHA-512 crypt ($6$), as /etc/shadow wants it."""
    # openssl reads the password from stdin: it never shows in ps.
    p = subprocess.run(['openssl', 'passwd', '-6', '-stdin'],
                       input=password + '\n', capture_output=True, text=True,
                       check=True)
    return p.stdout.strip()


def inject_password(fs, password, user='root'):
    path = '/etc/shadow'
    content = fs.read(path)
    if content is None:
        raise exception.InjectionFailed(instance=fs.instance,
                                        what='password',
                                        reason="the image has no /etc/shadow")
    mode, uid, gid = fs.stat(path)
    lines, found = [], False
    for line in content.decode('utf-8').splitlines():
        fields = line.split(':')
        if fields[0] == user and len(fields) > 2:
            fields[1] = hash_password(password)
            line, found = ':'.join(fields), True
        lines.append(line)
    if not found:
        raise exception.InjectionFailed(instance=fs.instance,
                                        what='password',
                                        reason="no %s in /etc/shadow" % user)
    fs.write(path, ('\n'.join(lines) + '\n').encode(), mode=mode & 0o7777,
             uid=uid, gid=gid)


def inject_user_data(fs, user_data, instance_id, hostname):
    """cloud-init's NoCloud seed, which cloud-init images read at boot."""
    base = '/var/lib/cloud/seed/nocloud'
    fs.write(base + '/meta-data',
             ('instance-id: %s\nlocal-hostname: %s\n'
              % (instance_id, hostname)).encode(), mode=0o600)
    fs.write(base + '/user-data', user_data, mode=0o600)


def arrange_relabel(fs):
    """SELinux guests relabel on the next boot when /.autorelabel exists."""
    if fs.is_dir('/etc/selinux'):
        fs.write('/.autorelabel', b'', mode=0o644)
        return True
    return False


def inject_files(fs, files):
    """nova's injected files: [(path, bytes)], each a regular file 0644.

    Paths are checked by GuestFS.write like every other write (absolute,
    plain names, no symbolic link on the way).
    """
    for path, content in files:
        if isinstance(content, str):
            content = content.encode('utf-8')
        fs.write(path, content, mode=0o644)
