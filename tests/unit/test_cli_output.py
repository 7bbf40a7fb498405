"""The amiboot command's terminal output."""

import io
import unittest

from nova_amiboot.cli import common


class TestTransferBar(unittest.TestCase):

    def test_bar_draws_and_closes(self):
        out = io.StringIO()
        bar = common.TransferBar(out)
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


class TestColumns(unittest.TestCase):
    """Nested values: JSON text in a table, the structure with -f json."""

    def test_nested_values_for_tables(self):
        col = common.column({'kind': 'user'})
        self.assertEqual('{"kind": "user"}', col.human_readable())
        self.assertEqual({'kind': 'user'}, col.machine_readable())
        # A list of words keeps its order (a module load order).
        words = common.column(['virtio_pci', 'virtio_blk'])
        self.assertEqual('virtio_pci virtio_blk', words.human_readable())
        self.assertEqual(['virtio_pci', 'virtio_blk'],
                         words.machine_readable())
        self.assertEqual(3, common.column(3))
        self.assertEqual('[{"a": 1}]',
                         common.column([{'a': 1}]).human_readable())
