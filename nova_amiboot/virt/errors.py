"""Our errors as the nova exceptions that end a build instead of
rescheduling it (nova reschedules on anything it does not know, and the
user then sees only "No valid host")."""

import contextlib

from nova import exception as nova_exception

from nova_amiboot import exception


@contextlib.contextmanager
def as_nova_errors(image_id):
    try:
        yield
    except exception.BootParameterDenied as e:
        raise nova_exception.InvalidInput(reason=e.message)
    except exception.FlavorDiskTooSmall as e:
        raise nova_exception.FlavorDiskSmallerThanImage(
            flavor_size=e.kwargs['flavor'], image_size=e.kwargs['needed'])
    except (exception.UnsafeImage, exception.InvalidImage,
            exception.ImageNotFound, exception.ImageChecksumMismatch,
            exception.ImageSizeMismatch, exception.FilesystemCorrupt,
            exception.InjectionFailed) as e:
        raise nova_exception.ImageUnacceptable(image_id=image_id,
                                               reason=e.message)
