"""The amiboot command's terminal output."""

import io
import unittest

from nova_amiboot.cmd import amiboot


class TestTransferBar(unittest.TestCase):

    def test_bar_draws_and_closes(self):
        out = io.StringIO()
        bar = amiboot.TransferBar(out)
        bar('fetching x', 50 * 1024, 100 * 1024)
        bar('fetching x', 100 * 1024, 100 * 1024)
        bar('converting x to raw', 0, None)
        bar.close()
        text = out.getvalue()
        self.assertIn('fetching x: 100%', text)
        self.assertIn('100k/100k', text)
        self.assertIn('converting x to raw', text)
        self.assertTrue(text.endswith('\n'))
        self.assertEqual(2, text.count('\n'))
        self.assertIsNone(bar.bar)


class TestFlat(unittest.TestCase):

    def test_nested_values_for_tables(self):
        self.assertEqual('{"kind": "user"}',
                         amiboot._flat({'kind': 'user'}, 'table'))
        self.assertEqual({'kind': 'user'},
                         amiboot._flat({'kind': 'user'}, 'json'))
        self.assertEqual('a b', amiboot._flat(['a', 'b'], 'value'))
        self.assertEqual(3, amiboot._flat(3, 'table'))
