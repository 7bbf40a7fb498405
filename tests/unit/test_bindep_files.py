"""bindep.txt: devstack's copy is the same file, and tools/setup-host.sh
reads it the way bindep does."""

import os
import subprocess
import tempfile
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The lines of setup-host.sh that define bindep_packages, run on their own.
_FUNCTION = r'''
set -euo pipefail
log() { echo "$*" >&2; }
eval "$(sed -n '/^bindep_packages() {/,/^}/p' "$TOP/tools/setup-host.sh")"
bindep_packages "$@"
'''


def _packages(path, *profiles):
    return subprocess.run(
        ['bash', '-c', _FUNCTION, 'bindep', path] + list(profiles),
        check=True, capture_output=True, text=True,
        env=dict(os.environ, TOP=TOP)).stdout.split()


class BindepFilesTest(unittest.TestCase):

    def test_devstack_copy_is_the_same_file(self):
        path = os.path.join(TOP, 'devstack', 'files', 'bindep.txt')
        self.assertFalse(os.path.islink(path))
        with open(path, 'rb') as f, \
                open(os.path.join(TOP, 'bindep.txt'), 'rb') as g:
            self.assertEqual(g.read(), f.read())

    def test_devstack_settings_define_the_plugin(self):
        out = subprocess.run(
            ['bash', '-c', 'define_plugin() { echo "define $*"; }; '
             'source "$TOP/devstack/settings"'], check=True,
            capture_output=True, text=True,
            env=dict(os.environ, TOP=TOP, DEST='/d', DATA_DIR='/d')).stdout
        self.assertEqual(['define nova-amiboot'], out.splitlines())

    def test_selectors(self):
        with tempfile.NamedTemporaryFile('w', suffix='.txt') as f:
            f.write('# a comment\n'
                    'always\n'
                    'deb [platform:dpkg]  # and a comment\n'
                    'rpm [platform:rpm]\n'
                    'tested [platform:dpkg test]\n'
                    'untested [!test]\n'
                    'versioned >= 1.0 [platform:dpkg build]\n'
                    'either [platform:rpm platform:dpkg]\n'
                    'notdeb [!platform:dpkg]\n')
            f.flush()
            self.assertEqual(['always', 'deb', 'untested', 'either'],
                             _packages(f.name))
            self.assertEqual(['always', 'deb', 'tested', 'versioned',
                              'either'], _packages(f.name, 'build', 'test'))

    def test_groups_are_refused(self):
        with tempfile.NamedTemporaryFile('w', suffix='.txt') as f:
            f.write('grouped [test (ceph !lvm)]\n')
            f.flush()
            with self.assertRaises(subprocess.CalledProcessError):
                _packages(f.name)

    def test_default_profile_is_the_run_time(self):
        packages = _packages(os.path.join(TOP, 'bindep.txt'))
        for p in ('qemu-utils', 'e2fsprogs', 'fuse3', 'busybox-static'):
            self.assertIn(p, packages)
        for p in ('gcc', 'debootstrap'):
            self.assertNotIn(p, packages)
