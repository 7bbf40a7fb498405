"""The nbd attach path (the privileged helpers: test_privileged_nbd).

These machines have no nbd kernel module, so /dev/nbdN cannot exist here:
the device list and the two privileged calls that touch the device
(connect, disconnect) are mocked. Everything else is the real code.
"""

import tempfile
import unittest
from unittest import mock

from oslo_concurrency import processutils

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot import e2fs
from nova_amiboot.privileged import nbd as priv_nbd
from tests.functional.base import make_conf


class TestNbdAttach(unittest.TestCase):

    def setUp(self):
        self.conf = make_conf(attach_timeout=1)
        lockdir = tempfile.mkdtemp()
        patcher = mock.patch.dict('os.environ', {'AMIBOOT_LOCK_PATH':
                                                 lockdir})
        patcher.start()
        self.addCleanup(patcher.stop)
        # Mocked: the kernel's nbd devices.
        for target, value in (('_free_nbd_devices', ['/dev/nbd3',
                                                     '/dev/nbd4']),
                              ('_wait_for_nbd', None)):
            p = mock.patch.object(attach, target,
                                  return_value=value if value is None
                                  else iter(value))
            p.start()
            self.addCleanup(p.stop)
        self.connect = mock.patch.object(priv_nbd, 'connect').start()
        self.disconnect = mock.patch.object(priv_nbd, 'disconnect').start()
        self.addCleanup(mock.patch.stopall)

    def test_auto_picks_fuse_unless_only_nbd_exists(self):
        # Stand-ins for /dev/fuse and /sys/block/nbd0 (no nbd module here).
        for fuse, nbd, want in ((True, True, 'fuse'), (True, False, 'fuse'),
                                (False, True, 'nbd'), (False, False, 'fuse')):
            exists = {'/dev/fuse': fuse, '/sys/block/nbd0': nbd}
            with mock.patch('os.path.exists', side_effect=exists.get):
                self.assertEqual(want, attach.choose_method(self.conf))
        self.conf.set_override('attach_method', 'fuse', 'amiboot')
        with mock.patch('os.path.exists', return_value=True):
            self.assertEqual('fuse', attach.choose_method(self.conf))

    def test_connect_use_disconnect(self):
        with attach.attached('/i/disk', 'qcow2', self.conf, 'nbd') as tg:
            self.assertEqual('/dev/nbd3', tg.path)
            self.assertEqual('nbd', tg.method)
            self.disconnect.assert_not_called()
        self.connect.assert_called_once_with('/dev/nbd3', '/i/disk',
                                             'qcow2')
        self.disconnect.assert_called_once_with('/dev/nbd3')

    def test_busy_device_skipped_and_disconnect_on_error(self):
        self.connect.side_effect = [
            processutils.ProcessExecutionError(stderr='busy'), None]
        with self.assertRaises(RuntimeError):
            with attach.attached('/i/disk', 'raw', self.conf, 'nbd') as tg:
                self.assertEqual('/dev/nbd4', tg.path)
                raise RuntimeError('grow failed')
        self.disconnect.assert_called_once_with('/dev/nbd4')

    def test_no_free_device(self):
        self.connect.side_effect = processutils.ProcessExecutionError(
            stderr='busy')
        with self.assertRaises(exception.AttachFailed) as cm:
            with attach.attached('/i/disk', 'raw', self.conf, 'nbd'):
                pass
        self.assertIn('no free nbd device', str(cm.exception))
        self.disconnect.assert_not_called()

    def test_tools_go_through_the_privileged_helper(self):
        with mock.patch.object(priv_nbd, 'run_e2fs',
                               return_value=(b'ext4\n', '', False)) as run:
            with attach.attached('/i/disk', 'raw', self.conf, 'nbd') as tg:
                self.assertEqual(('ext4\n', ''), tg.run('blkid', ['-p']))
                tg.debugfs([('imap', '/etc')])
        self.assertEqual([
            mock.call('blkid', '/dev/nbd3', ['-p'], ok_codes=(0,),
                      size=None, limits=mock.ANY),
            mock.call('debugfs', '/dev/nbd3', [], requests=[('imap', '/etc')],
                      out_limit=e2fs.DEFAULT_OUT, limits=mock.ANY)],
            run.call_args_list)
        # The sandbox's limits travel with every request.
        self.assertEqual(self.conf.amiboot.tool_memory_mb,
                         run.call_args_list[0][1]['limits']['memory_mb'])
