"""utils.execute(_quick): time limits and one-line errors, real commands."""

import os
import time
import unittest

from nova_amiboot import exception
from nova_amiboot import utils


class TestExecute(unittest.TestCase):
    execute = staticmethod(utils.execute)

    def test_timeout_kills_the_command(self):
        t = time.monotonic()
        with self.assertRaises(exception.CommandTimeout) as cm:
            self.execute('sleep', '60', timeout=1)
        self.assertLess(time.monotonic() - t, 30)
        self.assertIn('within 1 seconds', str(cm.exception))
        # A CommandFailed: callers that map tool failures map this too.
        self.assertIsInstance(cm.exception, exception.CommandFailed)

    def test_no_orphan_after_timeout(self):
        with self.assertRaises(exception.CommandTimeout):
            self.execute('sleep', '60', timeout=1)
        time.sleep(0.2)
        alive = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open('/proc/%s/stat' % pid) as f:
                    stat = f.read()
                with open('/proc/%s/status' % pid) as f:
                    ppid = [line.split()[1] for line in f
                            if line.startswith('PPid:')][0]
            except (OSError, IndexError):
                continue
            if '(sleep)' in stat and ppid == str(os.getpid()) and \
                    ') Z' not in stat:
                alive.append(pid)
        self.assertEqual([], alive)

    def test_error_is_one_bounded_line(self):
        with self.assertRaises(exception.CommandFailed) as cm:
            self.execute('sh', '-c', 'printf "a\\nb\\n\\tc" >&2; '
                         'head -c 4000 /dev/zero | tr "\\0" x >&2; exit 3')
        msg = str(cm.exception)
        self.assertNotIn('\n', msg)
        self.assertIn('a b c', msg)
        self.assertIn('exit code 3', msg)
        self.assertLess(len(msg), 700)


class TestExecuteQuick(TestExecute):
    execute = staticmethod(utils.execute_quick)

    def test_default_sigpipe_in_the_child(self):
        # Python ignores SIGPIPE; a child that inherited that would see
        # EPIPE and complain where a shell pipeline is normally quiet.
        out, err = utils.execute_quick(
            'sh', '-c', 'yes | head -c 1 >/dev/null; echo done', timeout=30)
        self.assertEqual('done\n', out)
        self.assertEqual('', err)

    def test_missing_tool(self):
        self.assertRaises(exception.ToolMissing, utils.execute_quick,
                          'no-such-tool-amiboot', timeout=5)


class TestCloneOrCopy(unittest.TestCase):
    """The copy behind templates, kernel and ramdisk copies (real files)."""

    def _copy(self, data):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, 'src')
            with open(src, 'wb') as f:
                f.write(data)
            with open(src, 'rb') as s, open(os.path.join(d, 'dst'),
                                            'wb') as dst:
                utils.clone_or_copy(s, dst)
                # Positioned at the end: what follows is appended.
                self.assertEqual(len(data), dst.tell())
                dst.write(b'tail')
            with open(os.path.join(d, 'dst'), 'rb') as f:
                return f.read()

    def test_empty(self):
        self.assertEqual(b'tail', self._copy(b''))

    def test_small_and_large(self):
        for data in (b'x', os.urandom(4097), os.urandom(3 * 1024 ** 2 + 7)):
            self.assertEqual(data + b'tail', self._copy(data))
