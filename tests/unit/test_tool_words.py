"""exception.tool_says: the one table of tool error texts, and its users.

Real tools where the failure is cheap to cause (dd on /dev/full, dd under
a file size limit); the words of the others as those tools print them.
"""

import os
import tempfile
import unittest

from nova_amiboot import exception
from nova_amiboot import sandbox
from nova_amiboot import utils


class ToolSaysTest(unittest.TestCase):

    def test_words(self):
        cases = {
            "dd: error writing 'x': No space left on device":
                {exception.NO_SPACE},
            "dd: error writing 'x': File too large": {exception.FILE_SIZE},
            "e2fsck: Memory allocation failed": {exception.MEMORY},
            "qemu-img: Failed to allocate memory": {exception.MEMORY},
            "resize2fs: Cannot allocate memory": {exception.MEMORY},
            "sfdisk: out of memory": {exception.MEMORY},
            "terminate called after throwing std::bad_alloc":
                {exception.MEMORY},
            "xz: Can't allocate memory": {exception.MEMORY},
            "qemu-img: Could not open 'x': No such file or directory": set(),
            "": set(),
        }
        for text, meanings in cases.items():
            with self.subTest(text=text):
                self.assertEqual(meanings, exception.tool_says(text))
        self.assertEqual(frozenset(), exception.tool_says(None))

    def test_every_meaning_has_words(self):
        self.assertEqual({exception.NO_SPACE, exception.FILE_SIZE,
                          exception.MEMORY},
                         {meaning for meaning, _ in exception.TOOL_WORDS})


class CommandFailedTest(unittest.TestCase):

    def test_full_device_is_out_of_space(self):
        with self.assertRaises(exception.ToolOutOfSpace) as cm:
            utils.execute('dd', 'if=/dev/zero', 'of=/dev/full', 'count=1')
        self.assertIn('No space left on device', str(cm.exception))
        self.assertIsInstance(cm.exception, exception.CommandFailed)

    def test_other_failure_is_command_failed(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(exception.CommandFailed) as cm:
                utils.execute('dd', 'if=' + os.path.join(d, 'missing'),
                              'of=/dev/null')
        self.assertNotIsInstance(cm.exception, exception.ToolOutOfSpace)

    def test_file_size_limit_words(self):
        # dd under RLIMIT_FSIZE with SIGXFSZ ignored: EFBIG, in its words.
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(exception.CommandFailed) as cm:
                utils.execute('bash', '-c', 'trap "" XFSZ; ulimit -f 1; '
                              'exec dd if=/dev/zero of=%s/f bs=4k count=4'
                              % d)
        self.assertEqual({exception.FILE_SIZE},
                         exception.tool_says(cm.exception.kwargs['stderr']))


class LimitHitTest(unittest.TestCase):
    """sandbox._limit_hit reads the words through the same table."""

    lim = sandbox.Limits(file_size=4096, memory_mb=64)

    def hit(self, err, code=1, ok=False, tool='e2fsck'):
        return sandbox._limit_hit(code, ok, err, 0, 0, self.lim, tool)

    def test_file_size(self):
        self.assertEqual(('file size', '4096 bytes'),
                         self.hit('e2fsck: File too large while writing'))

    def test_memory(self):
        self.assertEqual('memory',
                         self.hit('e2fsck: Memory allocation failed')[0])
        self.assertEqual('memory', self.hit('Error allocating inode bitmap: '
                                            'Cannot allocate memory')[0])

    def test_words_only_on_a_line_the_tool_begins(self):
        # An image's file name quoted inside a line says nothing.
        self.assertIsNone(self.hit("Entry 'Cannot allocate memory' in / "
                                   "has deleted/unused inode"))
        self.assertIsNone(self.hit('other: File too large'))

    def test_words_of_a_tool_that_succeeded_say_nothing(self):
        self.assertIsNone(self.hit('e2fsck: File too large', ok=True))
        self.assertIsNone(self.hit('e2fsck: File too large', code=0))


if __name__ == '__main__':
    unittest.main()
