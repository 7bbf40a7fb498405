"""Our errors as the nova exceptions nova acts on.

nova decides what to do by exception class: during a build, an image or
input problem (ImageUnacceptable, InvalidInput, FlavorDiskTooSmall) ends the
build with the message as the instance fault, ComputeResourcesUnavailable
reschedules to another host, and anything it does not know reschedules too
(the user then sees only "No valid host"). ImageNotFound is what nova's own
fallbacks look for (``_try_fetch_image_cache`` copies the base from the
source host on it).

Every class of nova_amiboot.exception is in NOVA_EXCEPTION, including the
ones only the ``amiboot`` command raises: a new class must be placed here
(a test checks it).
"""

import contextlib

from nova import exception as nova_exception

from nova_amiboot import exception


def _image_unacceptable(e, image_id):
    return nova_exception.ImageUnacceptable(image_id=image_id,
                                            reason=e.message)


def _host_problem(e, image_id):
    # Something on this host (a tool, a device, space): another host may
    # do; nova reschedules a build on this class.
    return nova_exception.ComputeResourcesUnavailable(reason=e.message)


def _invalid_input(e, image_id):
    return nova_exception.InvalidInput(reason=e.message)


def _image_not_found(e, image_id):
    return nova_exception.ImageNotFound(image_id=e.kwargs.get('image',
                                                              image_id))


def _flavor_too_small(e, image_id):
    return nova_exception.FlavorDiskSmallerThanImage(
        flavor_size=e.kwargs['flavor'], image_size=e.kwargs['needed'])


def _generic(e, image_id):
    return nova_exception.NovaException(message=e.message)


NOVA_EXCEPTION = {
    exception.AmibootException: _generic,
    exception.CommandFailed: _host_problem,
    exception.ToolMissing: _host_problem,
    exception.ImageNotFound: _image_not_found,
    exception.ImageDownloadFailed: _image_unacceptable,
    exception.ImageChecksumMismatch: _image_unacceptable,
    exception.ImageSizeMismatch: _image_unacceptable,
    exception.UnsafeImage: _image_unacceptable,
    exception.ImageFormatMismatch: _image_unacceptable,
    exception.ImageTooLarge: _image_unacceptable,
    exception.InvalidImage: _image_unacceptable,
    exception.BaseInUse: _generic,
    exception.FlavorDiskTooSmall: _flavor_too_small,
    exception.DiskFull: _host_problem,
    exception.FilesystemCorrupt: _image_unacceptable,
    exception.AttachFailed: _host_problem,
    # A disk whose header was rewritten to reach past itself: no other host
    # would do better, and the operation must not go on.
    exception.UnsafeInstanceDisk: _generic,
    exception.InjectionFailed: _image_unacceptable,
    exception.UnsafeInjectionPath: _image_unacceptable,
    exception.BootParameterDenied: _invalid_input,
    # The amiboot command's own; cannot come from the nova route.
    exception.ModuleNotFound: _generic,
    exception.ARIBuildFailed: _generic,
    exception.ImageExists: _generic,
    exception.ImageInUse: _generic,
    exception.InstanceNotFound: _generic,
    exception.InstanceExists: _generic,
    exception.FlavorNotFound: _generic,
    exception.InvalidInput: _invalid_input,
    # Tools run under a time limit only on image content (qemu-img info,
    # e2fsprogs on the guest filesystem): a crafted image is the likely
    # cause, and another host would only run into it again.
    exception.CommandTimeout: _image_unacceptable,
    exception.InsufficientSpace: _host_problem,
    # A tool on the image's bytes went over a sandbox limit: the image's
    # doing, and another host would only run into it again.
    exception.ToolLimitExceeded: _image_unacceptable,
    # The host cannot sandbox its tools (no bwrap, no tool user): the
    # scheduler may try another host.
    exception.SandboxUnavailable: _host_problem,
    # A full filesystem on this host, met by a tool.
    exception.ToolOutOfSpace: _host_problem,
    # The amiboot command's guests.
    exception.GuestError: _generic,
    exception.GuestStopped: _generic,
    # A request outside the e2fsprogs grammar carries a user's path (an
    # injected file's name).
    exception.E2fsRequestRefused: _invalid_input,
    exception.GuestFileTooLarge: _image_unacceptable,
    exception.InvalidBootParameter: _invalid_input,
    exception.InvalidCommandLine: _image_unacceptable,
    # The amiboot command's own domains and interfaces.
    exception.InvalidDomain: _generic,
    exception.DomainNotOwned: _generic,
    exception.InvalidInterfaceName: _generic,
    exception.DomainNameTaken: _generic,
    # Guest-mode provisioning: a request the layer's grammar refuses (a
    # user's key, hostname, files) ends the build as bad input; guest mode
    # forced on an image that does not declare it is the image's, and no
    # other host would boot it differently.
    exception.InvalidProvisionSpec: _invalid_input,
    exception.GuestProvisionNotDeclared: _image_unacceptable,
}


def to_nova(e, image_id=None):
    """The nova exception for AmibootException ``e``."""
    for cls in type(e).__mro__:
        if cls in NOVA_EXCEPTION:
            return NOVA_EXCEPTION[cls](e, image_id)
    return _generic(e, image_id)


@contextlib.contextmanager
def as_nova_errors(image_id):
    try:
        yield
    except exception.AmibootException as e:
        raise to_nova(e, image_id) from e
