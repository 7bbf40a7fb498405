"""qemuimg: the one reader of ``qemu-img info``, run in the sandbox."""

import json
import unittest
from unittest import mock

from nova_amiboot import qemuimg
from nova_amiboot import sandbox

INFO = {'virtual-size': 1048576, 'format': 'qcow2', 'actual-size': 200704,
        'backing-filename': 'base', 'backing-filename-format': 'raw',
        'format-specific': {'type': 'qcow2',
                            'data': {'data-file': '/etc/shadow'}}}


def result(out, truncated=False):
    return sandbox.Result(out.encode(), b'', 0, truncated, 0, 0.0)


class ParseTest(unittest.TestCase):
    def test_fields(self):
        info = qemuimg.parse(json.dumps(INFO))
        self.assertEqual(1048576, info.virtual_size)
        self.assertEqual('qcow2', info.file_format)
        self.assertEqual('base', info.backing_file)
        self.assertEqual('raw', info.backing_file_format)
        self.assertEqual(200704, info.disk_size)
        self.assertEqual('/etc/shadow', qemuimg.data_file(info))

    def test_no_data_file(self):
        info = qemuimg.parse(json.dumps({'virtual-size': 1,
                                         'format': 'raw'}))
        self.assertIsNone(qemuimg.data_file(info))
        self.assertIsNone(info.backing_file)

    def test_bad(self):
        for text in ('', 'not json', '[1]', '{"format": "raw"}',
                     '{"virtual-size": "1", "format": "raw"}'):
            self.assertRaises(ValueError, qemuimg.parse, text)

    def test_truncated(self):
        self.assertRaises(ValueError, qemuimg.result,
                          result(json.dumps(INFO), truncated=True))


class InfoTest(unittest.TestCase):
    @mock.patch.object(sandbox, 'run')
    def test_runs_in_sandbox(self, run):
        run.return_value = result(json.dumps(INFO))
        info = qemuimg.info('/d', 'qcow2', force_share=True, timeout=60)
        self.assertEqual(1048576, info.virtual_size)
        run.assert_called_once_with(
            ['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', '/d'],
            '/d', None, files=['/d'], out_limit=qemuimg.OUT_LIMIT,
            timeout=60)

    @mock.patch.object(sandbox, 'run')
    def test_no_share(self, run):
        run.return_value = result(json.dumps(INFO))
        qemuimg.info('/d', 'raw', 'img', 'conf', cpu=3)
        run.assert_called_once_with(
            ['qemu-img', 'info', '-f', 'raw', '--output=json', '/d'],
            'img', 'conf', files=['/d'], out_limit=qemuimg.OUT_LIMIT, cpu=3)
