"""e2fsprogs failures become one bounded error line, on both routes.

The file route runs the real e2fsck on a real, damaged filesystem. The nbd
route needs /dev/nbdN, which these machines cannot have: its privileged
call is mocked to fail as it does (ProcessExecutionError with the tool's
stderr).
"""

import os
import shutil
import subprocess
import tempfile
import unittest
from unittest import mock

from oslo_concurrency import processutils

from nova_amiboot import attach
from nova_amiboot import exception
from nova_amiboot.privileged import nbd as priv_nbd


class TestE2fsErrorsOneLine(unittest.TestCase):

    def test_file_route_multiline_stderr_is_one_line(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        img = os.path.join(tmp, 'fs.img')
        with open(img, 'wb') as f:
            f.truncate(8 * 1024 * 1024)
        subprocess.run(['mkfs.ext4', '-q', img], check=True)
        # A root inode that is no directory: e2fsck -p gives up with a
        # message on several lines of stderr.
        subprocess.run(['debugfs', '-w', '-R', 'sif <2> mode 0100644', img],
                       check=True, capture_output=True)
        target = attach.Target(img, 'file')
        with self.assertRaises(exception.CommandFailed) as ctx:
            target.run('e2fsck', ['-fp'])
        msg = str(ctx.exception)
        self.assertIn('UNEXPECTED INCONSISTENCY', msg)
        self.assertIn('exit code 4', msg)
        self.assertNotIn('\n', msg)
        self.assertNotIn('\t', msg)

    def test_nbd_route_long_stderr_is_bounded(self):
        err = ('line of output\n\t' * 1000)
        with mock.patch.object(
                priv_nbd, 'run_e2fs',
                side_effect=processutils.ProcessExecutionError(
                    exit_code=8, cmd='e2fsck', stderr=err)):
            with self.assertRaises(exception.CommandFailed) as ctx:
                attach.Target('/dev/nbd0', 'nbd').run('e2fsck', ['-fn'])
        msg = str(ctx.exception)
        self.assertNotIn('\n', msg)
        self.assertLess(len(msg), 600)
        self.assertIn('exit code 8', msg)
