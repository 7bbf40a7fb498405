"""The amiboot command's terminal output."""

import io
import unittest

from nova_amiboot.cmd import amiboot


class TestTransferBar(unittest.TestCase):

    def test_bar_draws_and_closes(self):
        out = io.StringIO()
        bar = amiboot.TransferBar(out)
        bar('fetching x', 50, 100)
        bar('fetching x', 100, 100)
        bar('converting x to raw', 0, None)
        bar.close()
        text = out.getvalue()
        self.assertIn('[' + '#' * 15 + '.' * 15 + ']  50%', text)
        self.assertIn('100%', text)
        self.assertIn('converting x to raw', text)
        self.assertTrue(text.endswith('\n'))
        self.assertEqual(2, text.count('\n'))
