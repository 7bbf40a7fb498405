"""Exceptions of nova-amiboot.

One base class with a message template, one subclass per failure, the way
nova.exception does it: callers catch the class, operators read the message.
"""

import re


class AmibootException(Exception):
    """Base of every error this project raises on purpose."""

    msg_fmt = "An unknown error occurred."

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                # A template/argument mismatch is our bug; still say
                # something useful instead of hiding the real failure.
                message = "%s (%s)" % (self.msg_fmt, kwargs)
        super().__init__(message)
        self.message = message


class CommandFailed(AmibootException):
    msg_fmt = "%(cmd)s failed (exit code %(code)s): %(stderr)s"


class CommandTimeout(CommandFailed):
    msg_fmt = "%(cmd)s did not finish within %(timeout)s seconds; killed."


class ToolOutOfSpace(CommandFailed):
    """A tool failed because a filesystem it wrote to is full."""


# What a failed tool's own words say, where they are the only signal it
# gives of why (an exit code says only "failed"). The one table of error
# texts: nothing else picks a class by message; callers choose by type.
NO_SPACE = 'no space'           # ENOSPC: a filesystem it wrote to is full
FILE_SIZE = 'file size'         # EFBIG: RLIMIT_FSIZE (or the fs's own limit)
MEMORY = 'memory'               # ENOMEM: RLIMIT_AS, or the host
TOOL_WORDS = (
    (NO_SPACE, re.compile(r'No space left on device')),
    (FILE_SIZE, re.compile(r'File too large')),
    (MEMORY, re.compile(r'Cannot allocate memory|Memory allocation failed|'
                        r'[Oo]ut of memory|[Ff]ailed to allocate|'
                        r'[Cc]ould not allocate|bad_alloc|memory exhausted|'
                        r"Can't allocate")),
)


def tool_says(text):
    """The meanings (NO_SPACE, FILE_SIZE, MEMORY) that ``text`` states.

    The caller decides which text counts (all of stderr, or only the lines
    a tool begins itself, where an image's file names cannot pose as it).
    """
    return frozenset(meaning for meaning, words in TOOL_WORDS
                     if words.search(text or ''))


def command_failed(cmd, code, stderr):
    """CommandFailed for a tool's failure, ToolOutOfSpace if it says so."""
    cls = ToolOutOfSpace if NO_SPACE in tool_says(stderr) else CommandFailed
    return cls(cmd=cmd, code=code, stderr=stderr)


class ToolMissing(AmibootException):
    msg_fmt = ("Required host tool %(tool)s is not installed; install the "
               "package that provides it (see tools/setup-host.sh).")


# --- images and the cache -------------------------------------------------

class ImageNotFound(AmibootException):
    msg_fmt = "Image %(image)s not found in %(source)s."


class ImageDownloadFailed(AmibootException):
    msg_fmt = "Image %(image)s could not be fetched: %(reason)s"


class ImageChecksumMismatch(AmibootException):
    msg_fmt = ("Image %(image)s failed verification: %(algo)s is %(actual)s, "
               "expected %(expected)s.")


class ImageSizeMismatch(AmibootException):
    msg_fmt = ("Image %(image)s failed verification: %(actual)d bytes "
               "received, expected %(expected)d.")


class UnsafeImage(AmibootException):
    msg_fmt = "Image %(image)s is refused as unsafe: %(reason)s"


class ImageFormatMismatch(UnsafeImage):
    msg_fmt = ("Image %(image)s claims format %(claimed)s but its content "
               "is %(detected)s.")


class ImageTooLarge(UnsafeImage):
    msg_fmt = ("Image %(image)s has a virtual size of %(size)d bytes, over "
               "the limit of %(limit)d bytes.")


class InvalidImage(AmibootException):
    msg_fmt = "Image %(image)s cannot be used: %(reason)s"


class BaseInUse(AmibootException):
    msg_fmt = "Cached base %(path)s is used by %(users)s."


# --- instance disks -------------------------------------------------------

class FlavorDiskTooSmall(AmibootException):
    msg_fmt = ("Instance %(instance)s: the flavor's root disk (%(flavor)d "
               "bytes) is smaller than image %(image)s (%(needed)d bytes).")


class DiskFull(AmibootException):
    msg_fmt = "No space left on %(path)s while %(action)s."


class InsufficientSpace(DiskFull):
    msg_fmt = ("Image %(image)s needs %(needed)d bytes in %(path)s, only "
               "%(free)d are free; refused before writing it.")


class FilesystemCorrupt(AmibootException):
    msg_fmt = ("Instance %(instance)s: the root filesystem of image "
               "%(image)s is corrupt: %(reason)s")


class AttachFailed(AmibootException):
    msg_fmt = "Cannot attach %(path)s to the host: %(reason)s"


class UnsafeInstanceDisk(AmibootException):
    msg_fmt = ("Instance %(instance)s: its disk %(path)s is refused as "
               "unsafe: %(reason)s")


class InjectionFailed(AmibootException):
    msg_fmt = "Instance %(instance)s: cannot inject %(what)s: %(reason)s"


class UnsafeInjectionPath(InjectionFailed):
    msg_fmt = ("Instance %(instance)s: refusing to inject into %(path)s: "
               "%(reason)s")


# --- boot -----------------------------------------------------------------

class BootParameterDenied(AmibootException):
    msg_fmt = ("Instance %(instance)s: boot parameter(s) %(params)s not in "
               "the allow-list [amiboot] allowed_boot_params.")


class ModuleNotFound(AmibootException):
    msg_fmt = "Kernel module %(module)s not found under %(path)s."


class ARIBuildFailed(AmibootException):
    msg_fmt = "Cannot build the ramdisk: %(reason)s"


# --- the embedded default (amiboot command) --------------------------------

class ImageExists(AmibootException):
    msg_fmt = "An image named %(name)s exists already (%(id)s)."


class ImageInUse(AmibootException):
    msg_fmt = "Image %(image)s is used by instance(s) %(instances)s."


class InstanceNotFound(AmibootException):
    msg_fmt = "No instance named %(name)s."


class InstanceExists(AmibootException):
    msg_fmt = "An instance named %(name)s exists already."


class FlavorNotFound(AmibootException):
    msg_fmt = "No flavor named %(name)s (see 'amiboot flavor list')."


class InvalidInput(AmibootException):
    msg_fmt = "%(reason)s"


# --- e2fsprogs requests (appended) -----------------------------------------

class E2fsRequestRefused(AmibootException):
    msg_fmt = ("Refused to run %(tool)s on %(target)s: %(reason)s")


class GuestFileTooLarge(InjectionFailed):
    msg_fmt = ("Instance %(instance)s: %(path)s in the guest is %(size)d "
               "bytes, over the limit of %(limit)d bytes for reading it.")


# --- hostile input, the embedded route's ownership of domains ---------------

class InvalidBootParameter(BootParameterDenied):
    # A subclass of BootParameterDenied: every caller that refuses a denied
    # parameter (the nova route maps it to InvalidInput) refuses these too.
    msg_fmt = ("Instance %(instance)s: boot parameter %(param)s is refused: "
               "%(reason)s.")


class InvalidCommandLine(InvalidImage):
    msg_fmt = ("Instance %(instance)s: the kernel command line of image "
               "%(image)s cannot be used: %(reason)s.")


class InvalidDomain(AmibootException):
    msg_fmt = ("Instance %(instance)s: cannot write its libvirt domain: "
               "%(reason)s")


class DomainNotOwned(AmibootException):
    msg_fmt = ("Instance %(instance)s: libvirt domain %(domain)s was not "
               "created from state directory %(state_dir)s; leaving it "
               "alone.")


class InvalidInterfaceName(InvalidInput):
    msg_fmt = ("Bad network interface name %(name)s: use 1 to 15 letters, "
               "digits, '_', '.' or '-'.")


class DomainNameTaken(InstanceExists):
    msg_fmt = ("Instance %(name)s: libvirt domain %(domain)s exists already "
               "(%(owner)s); choose another name.")


# --- the tool sandbox -------------------------------------------------------

class ToolLimitExceeded(AmibootException):
    msg_fmt = ("%(tool)s on image %(image)s went over its %(limit)s limit "
               "(%(value)s) and was stopped.")


class SandboxUnavailable(AmibootException):
    msg_fmt = ("The sandbox for host tools cannot run: %(reason)s "
               "(see tools/setup-host.sh).")


class GuestError(AmibootException):
    msg_fmt = "Guest %(name)s: %(reason)s"


class GuestStopped(GuestError):
    """The guest stopped before it was ready."""


# --- guest-side provisioning (the per-instance layer) ----------------------

class InvalidProvisionSpec(InvalidInput):
    msg_fmt = ("Instance %(instance)s: refusing the provisioning layer: "
               "%(reason)s")


class GuestProvisionNotDeclared(InvalidImage):
    msg_fmt = ("Instance %(instance)s: [amiboot] provision = guest, but "
               "image %(image)s does not declare guest provisioning (image "
               "property amiboot_provision=guest on the AMI or its ARI); "
               "boot it with provision = auto or host, or rebuild its ARI "
               "with 'amiboot image build-ari' and declare it.")
