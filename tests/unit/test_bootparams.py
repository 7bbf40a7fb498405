"""bootparams: the readers of per-instance boot parameters."""

import unittest

from nova_amiboot import bootparams
from nova_amiboot import exception


class FromMetadataTest(unittest.TestCase):

    def test_value_as_list(self):
        self.assertEqual(['quiet loglevel=3'], bootparams.from_metadata(
            {bootparams.METADATA_KEY: 'quiet loglevel=3', 'x': 'y'}))

    def test_absent_or_empty(self):
        self.assertEqual([], bootparams.from_metadata(None))
        self.assertEqual([], bootparams.from_metadata({'other': 'quiet'}))
        self.assertEqual([], bootparams.from_metadata(
            {bootparams.METADATA_KEY: ''}))


class FromUserDataTest(unittest.TestCase):

    def test_lines_and_quotes(self):
        data = (b'#!/bin/sh\nbootparams="quiet loglevel=3"\r\n'
                b"bootparams='console=ttyS0'\nbootparams=amiboot.x=1\n"
                b' bootparams=not-at-start\n')
        self.assertEqual(['quiet loglevel=3', 'console=ttyS0',
                          'amiboot.x=1'], bootparams.from_user_data(data))

    def test_str_input(self):
        self.assertEqual(['quiet'], bootparams.from_user_data(
            'echo hi\nbootparams=quiet'))

    def test_cut_at_newline_only(self):
        # \v and \f are not line ends: the value keeps them for the grammar
        # to refuse, and a line after them is not a separate line.
        self.assertEqual(['quiet\x0bbootparams=init=/bin/sh'],
                         bootparams.from_user_data(
                             b'bootparams=quiet\x0bbootparams=init=/bin/sh'))
        self.assertEqual([], bootparams.from_user_data(
            b'x\x0cbootparams=init=/bin/sh'))

    def test_unbalanced_quote_kept(self):
        self.assertEqual(['"quiet'], bootparams.from_user_data(
            b'bootparams="quiet'))

    def test_none(self):
        self.assertEqual([], bootparams.from_user_data(None))

    def test_non_ascii_refused(self):
        with self.assertRaises(exception.InvalidBootParameter) as cm:
            bootparams.from_user_data(
                'bootparams=console=ttyS0\u00a0init=/bin/sh', instance='i-7')
        self.assertIn('i-7', str(cm.exception))
        self.assertNotIn('\n', str(cm.exception))
