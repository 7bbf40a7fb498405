"""Guest console text reaches the operator's terminal escaped.

The serial log is the guest's: it may hold terminal escapes (ESC/CSI/OSC
sequences that retitle, clear or remap a terminal), carriage returns, C1
controls and bidi overrides, and any number of lines. A boot error carries
its tail as one escaped, bounded line; ``amiboot console`` escapes unless
``--raw``.
"""

import os
import tempfile
import unittest

from nova_amiboot import exception
from nova_amiboot import guest

HOSTILE = ('Linux version 6.1\n\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\n'
           'sneaky \u202etxt.exe\x9b31m\n' + 'line\n' * 200 + 'last words')


class StoppedHost(object):
    """Stand-in for libvirt: the guest has stopped (only that is asked)."""

    def is_running(self, name):
        return False


class TestConsoleText(unittest.TestCase):

    def test_escape_keeps_nothing_a_terminal_acts_on(self):
        out = guest.escape(HOSTILE)
        for c in out:
            self.assertTrue(c.isprintable() or c == '\t', repr(c))
        self.assertIn('\\x1b]0;owned\\x07', out)
        self.assertIn('\\u202e', out)
        self.assertIn('\\x9b', out)
        # Printable text is left as it is.
        self.assertEqual('plain text: é ✓', guest.escape('plain text: é ✓'))

    def test_printable_console_keeps_lines(self):
        out = guest.printable_console(HOSTILE)
        self.assertEqual(HOSTILE.count('\n'), out.count('\n'))
        self.assertNotIn('\x1b', out)
        self.assertNotIn('\r', out)
        # CR LF is a line end; a lone CR is escaped.
        self.assertEqual('a\nb\\x0dc\n',
                         guest.printable_console('a\r\nb\rc\r\n'))

    def test_boot_error_is_one_bounded_line(self):
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, 'console.log')
            with open(log, 'w') as f:
                f.write(HOSTILE)
            with self.assertRaises(exception.GuestError) as cm:
                guest.wait_for_console(StoppedHost(), 'vm1', log,
                                       lambda t: False, 30, poll=0)
        msg = str(cm.exception)
        self.assertNotIn('\n', msg)
        self.assertNotIn('\x1b', msg)
        self.assertIn('vm1', msg)
        self.assertIn('last words', msg)
        self.assertLess(len(msg), 800)
