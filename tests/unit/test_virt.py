"""virt.errors: every core exception becomes the nova exception nova acts on.

Needs only nova's exception module (installed), no running nova.
"""

import inspect
import unittest

from nova import exception as nova_exception

from nova_amiboot import exception
from nova_amiboot.virt import errors


def core_classes():
    return [c for _n, c in inspect.getmembers(exception, inspect.isclass)
            if issubclass(c, exception.AmibootException)]


def make(cls):
    # Missing template keys fall back to the template and the kwargs.
    return cls(image='img-7', flavor=1, needed=2)


EXPECTED = {
    errors._image_unacceptable: nova_exception.ImageUnacceptable,
    errors._host_problem: nova_exception.ComputeResourcesUnavailable,
    errors._invalid_input: nova_exception.InvalidInput,
    errors._image_not_found: nova_exception.ImageNotFound,
    errors._flavor_too_small: nova_exception.FlavorDiskSmallerThanImage,
    errors._generic: nova_exception.NovaException,
}


class ToNovaTest(unittest.TestCase):

    def test_every_class_placed(self):
        missing = [c.__name__ for c in core_classes()
                   if c not in errors.NOVA_EXCEPTION]
        self.assertEqual([], missing)

    def test_every_class_maps_to_a_nova_exception(self):
        for cls in core_classes():
            with self.subTest(cls=cls.__name__):
                out = errors.to_nova(make(cls), 'img-7')
                want = EXPECTED[errors.NOVA_EXCEPTION[cls]]
                self.assertIsInstance(out, want)
                self.assertIsInstance(out, nova_exception.NovaException)

    def test_build_ending_classes(self):
        cases = [
            (exception.UnsafeImage, nova_exception.ImageUnacceptable),
            (exception.ImageFormatMismatch, nova_exception.ImageUnacceptable),
            (exception.DiskFull, nova_exception.ComputeResourcesUnavailable),
            (exception.ToolMissing,
             nova_exception.ComputeResourcesUnavailable),
            (exception.InvalidBootParameter, nova_exception.InvalidInput),
            (exception.BootParameterDenied, nova_exception.InvalidInput),
            (exception.InvalidProvisionSpec, nova_exception.InvalidInput),
            (exception.GuestProvisionNotDeclared,
             nova_exception.ImageUnacceptable),
        ]
        for cls, want in cases:
            with self.subTest(cls=cls.__name__):
                self.assertIsInstance(errors.to_nova(make(cls), 'img-7'),
                                      want)

    def test_subclass_follows_mro(self):
        class NewUnsafe(exception.UnsafeImage):
            pass
        self.assertIsInstance(errors.to_nova(make(NewUnsafe), 'img-7'),
                              nova_exception.ImageUnacceptable)

    def test_image_named(self):
        e = exception.UnsafeImage(image='img-77', reason='it has a backing')
        out = errors.to_nova(e, 'img-77')
        self.assertIn('img-77', str(out))

    def test_image_not_found_names_image(self):
        e = exception.ImageNotFound(image='img-nf', source='glance')
        out = errors.to_nova(e, 'other')
        self.assertIsInstance(out, nova_exception.ImageNotFound)
        self.assertIn('img-nf', str(out))

    def test_as_nova_errors_chains(self):
        err = exception.DiskFull(path='/x', action='y')
        with self.assertRaises(nova_exception.ComputeResourcesUnavailable) \
                as cm:
            with errors.as_nova_errors('img-1'):
                raise err
        self.assertIs(err, cm.exception.__cause__)

    def test_as_nova_errors_leaves_others(self):
        with self.assertRaises(KeyError):
            with errors.as_nova_errors('img-1'):
                raise KeyError('k')
