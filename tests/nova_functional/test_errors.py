"""Every error of ours that reaches nova is one of nova's exceptions."""

import inspect
import unittest

from nova import exception as nova_exception

from nova_amiboot import exception
from nova_amiboot.virt import errors

IMAGE = 'c0ffee00-0000-4000-8000-000000000001'
# Arguments for every message template.
KWARGS = dict(cmd='qemu-img', code=1, stderr='boom', tool='debugfs',
              image=IMAGE, source='Glance', reason='bad', algo='sha512',
              actual=1, expected=2, claimed='raw', detected='qcow2',
              size=3, limit=2, path='/x', users='i1', instance='i1',
              flavor=1024, needed=2048, action='fetching', what='key',
              params='init=/bin/sh', module='virtio_blk', name='n',
              id='x', instances='i1')

EXPECTED = {
    exception.ImageNotFound: nova_exception.ImageNotFound,
    exception.ImageDownloadFailed: nova_exception.ImageUnacceptable,
    exception.ImageChecksumMismatch: nova_exception.ImageUnacceptable,
    exception.ImageSizeMismatch: nova_exception.ImageUnacceptable,
    exception.UnsafeImage: nova_exception.ImageUnacceptable,
    exception.ImageFormatMismatch: nova_exception.ImageUnacceptable,
    exception.ImageTooLarge: nova_exception.ImageUnacceptable,
    exception.InvalidImage: nova_exception.ImageUnacceptable,
    exception.FilesystemCorrupt: nova_exception.ImageUnacceptable,
    exception.InjectionFailed: nova_exception.ImageUnacceptable,
    exception.UnsafeInjectionPath: nova_exception.ImageUnacceptable,
    exception.FlavorDiskTooSmall: nova_exception.FlavorDiskSmallerThanImage,
    exception.BootParameterDenied: nova_exception.InvalidInput,
    exception.InvalidInput: nova_exception.InvalidInput,
    exception.DiskFull: nova_exception.ComputeResourcesUnavailable,
    exception.AttachFailed: nova_exception.ComputeResourcesUnavailable,
    exception.CommandFailed: nova_exception.ComputeResourcesUnavailable,
    exception.ToolMissing: nova_exception.ComputeResourcesUnavailable,
}


def _classes():
    return [c for _n, c in inspect.getmembers(exception, inspect.isclass)
            if issubclass(c, exception.AmibootException)]


class TestErrors(unittest.TestCase):

    def test_every_class_is_placed(self):
        missing = [c.__name__ for c in _classes()
                   if c not in errors.NOVA_EXCEPTION]
        self.assertEqual([], missing)

    def test_mapping(self):
        for cls in _classes():
            with self.subTest(cls=cls.__name__):
                e = cls(**KWARGS)
                with self.assertRaises(nova_exception.NovaException) as cm:
                    with errors.as_nova_errors(IMAGE):
                        raise e
                nova_e = cm.exception
                self.assertIsInstance(nova_e, EXPECTED.get(
                    cls, nova_exception.NovaException))
                self.assertIs(e, nova_e.__cause__)
                if isinstance(nova_e, nova_exception.ImageNotFound):
                    self.assertIn(IMAGE, nova_e.format_message())
                elif not isinstance(
                        nova_e, nova_exception.FlavorDiskSmallerThanImage):
                    # The operator reads our message in the fault.
                    self.assertIn(e.message, nova_e.format_message())

    def test_image_problems_end_a_build_host_problems_reschedule(self):
        # The classes nova's _build_and_run_instance turns into
        # BuildAbortException (no reschedule) vs RescheduledException.
        abort = (nova_exception.ImageUnacceptable,
                 nova_exception.FlavorDiskTooSmall,
                 nova_exception.InvalidInput)
        for cls, nova_cls in EXPECTED.items():
            with self.subTest(cls=cls.__name__):
                if nova_cls is nova_exception.ComputeResourcesUnavailable:
                    self.assertFalse(issubclass(nova_cls, abort))
                elif nova_cls is not nova_exception.ImageNotFound:
                    self.assertTrue(issubclass(nova_cls, abort))
