"""Shared set-up for tests on real tools: config, store, leak checks."""

import os
import pwd
import shutil
import subprocess
import tempfile
import unittest

from oslo_config import cfg

from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot.local import store
from nova_amiboot import sandbox
from tests.testbed import build


def make_conf(**overrides):
    conf = cfg.ConfigOpts()
    amiboot_conf.register_opts(conf)
    conf([], project='nova-amiboot-tests', default_config_files=[])
    for k, v in overrides.items():
        conf.set_override(k, v, group='amiboot')
    return conf


def live_processes(name):
    """PIDs of running (non-zombie) processes called ``name``."""
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % pid) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index('(') + 1:stat.rindex(')')]
        state = stat[stat.rindex(')') + 2]
        if comm == name[:15] and state != 'Z':
            pids.append(int(pid))
    return pids


def _ppid(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def tool_processes(mine=True):
    """PIDs of live processes of the sandbox's tool user (none if absent).

    A sandboxed tool names its files as /proc/self/fd/N: it is found by
    its user, not by a path in its command line. ``mine``: only those
    descending from this process (another test run on the host has its
    own). A sandbox cannot outlive its bwrap (the pid namespace dies with
    its init), and bwrap is a child of the process that started it.
    """
    try:
        uid = pwd.getpwnam(sandbox.DEFAULT_USER).pw_uid
    except KeyError:
        return []
    me = os.getpid()
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            st = os.stat('/proc/' + pid)
            with open('/proc/%s/stat' % pid) as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
        except OSError:
            continue
        if st.st_uid != uid or state == 'Z':
            continue
        if mine:
            p, seen = int(pid), 0
            while p > 1 and p != me and seen < 64:
                p, seen = _ppid(p), seen + 1
            if p != me:
                continue
        pids.append(int(pid))
    return pids


def fuse_exports():
    with open('/proc/self/mountinfo') as f:
        return [line.split()[4] for line in f
                if 'amiboot-export-' in line.split()[4]]


class RealToolsTestCase(unittest.TestCase):
    """A scratch instances dir with a local store holding the triplet."""

    def setUp(self):
        super().setUp()
        self.testbed = build.build()
        self.instances = tempfile.mkdtemp(prefix='amiboot-inst-',
                                          dir='/var/tmp')
        os.chmod(self.instances, 0o755)
        self.addCleanup(shutil.rmtree, self.instances, True)
        self.store = store.LocalImageStore(
            os.path.join(self.instances, 'store'))
        self.conf = make_conf()
        # Other test runs share this host: only what appeared during this
        # test is ours to account for.
        self._before = {name: set(live_processes(name))
                        for name in ('qemu-storage-daemon', 'qemu-nbd')}
        self._before_exports = set(fuse_exports())
        self._before_tools = set(tool_processes())
        self.addCleanup(self.assertNothingLeaked)

    def add_triplet(self, root=None, root_format='ami', properties=None):
        tb = self.testbed
        aki = self.store.add('k', tb['kernel'], 'aki')
        ari = self.store.add('r', tb['ramdisk'], 'ari')
        props = {'kernel_id': aki.id, 'ramdisk_id': ari.id}
        props.update(properties or {})
        ami = self.store.add('ami', root or tb['root'], root_format, props)
        return ami, aki, ari

    def make_cache(self, source=None):
        return cache_mod.ImageCache(self.instances, source or self.store,
                                    self.conf)

    def base_dir_entries(self):
        d = os.path.join(self.instances, '_base')
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def assertNoPartials(self):
        self.assertEqual([], [n for n in self.base_dir_entries()
                              if '.part' in n])

    def _ours(self, pid):
        """A process started for this test (it names our directory).

        With AMIBOOT_STRICT_LEAK_CHECK=1 (a host to oneself) every new
        process counts, scratch disks outside our directory included.
        """
        if os.environ.get('AMIBOOT_STRICT_LEAK_CHECK') == '1':
            return True
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                return self.instances.encode() in f.read()
        except OSError:
            return False

    def _export_ours(self, mountpoint, pids):
        if os.environ.get('AMIBOOT_STRICT_LEAK_CHECK') == '1':
            return True
        for pid in pids:
            try:
                with open('/proc/%d/cmdline' % pid, 'rb') as f:
                    if mountpoint.encode() in f.read():
                        return True
            except OSError:
                pass
        return False

    def assertNothingLeaked(self):
        before = getattr(self, '_before', {})
        for name in ('qemu-storage-daemon', 'qemu-nbd'):
            self.assertEqual([], [p for p in live_processes(name)
                                  if p not in before.get(name, ())
                                  and self._ours(p)])
        ours = [p for p in live_processes('qemu-storage-daemon')
                if self._ours(p)]
        self.assertEqual([], [e for e in fuse_exports()
                              if e not in getattr(self, '_before_exports',
                                                  ())
                              and self._export_ours(e, ours)])
        self.assertEqual([], [p for p in tool_processes()
                              if p not in getattr(self, '_before_tools',
                                                  ())])
        self.assertNoPartials()

    def run_cmd(self, *cmd):
        return subprocess.run(cmd, check=True, capture_output=True,
                              text=True).stdout

    def scratch(self, name):
        return os.path.join(self.instances, name)

    def mkfs(self, tree, path, size='32M'):
        subprocess.run(['mkfs.ext4', '-q', '-F', '-T', 'default', '-b',
                        '4096', '-d', tree, '-E', 'root_owner=0:0', path,
                        size], check=True, capture_output=True)
        return path
