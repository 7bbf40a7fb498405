"""Per-instance boot parameters: where they come from, read as hostile.

Three sources, one grammar: ``amiboot boot --boot-param``, the server
metadata key ``amiboot_boot_params`` and ``bootparams=`` lines of the user
data (the Eucalyptus recipe). The readers here only extract the text;
domain.build_cmdline() splits it on the ASCII space, checks every
parameter against the positive grammar and ``[amiboot]
allowed_boot_params``, and builds the kernel command line. Both front ends
(the amiboot command and the nova driver) use these.
"""

from nova_amiboot import domain
from nova_amiboot import exception

METADATA_KEY = 'amiboot_boot_params'


def from_metadata(metadata):
    """The ``amiboot_boot_params`` value of server metadata, as a list."""
    value = (metadata or {}).get(METADATA_KEY)
    return [value] if value else []


def from_user_data(user_data, instance='?'):
    """The ``bootparams=`` lines of user data (the Eucalyptus recipe).

    User data is hostile and may be any bytes, so it is read as bytes and
    cut at b'\n' only (str.splitlines() would also cut at \v, \f, \x1c..
    and U+2028). A line counts when it starts with ``bootparams=``; a
    trailing CR is dropped, and one pair of double or single quotes around
    the whole value is removed (``bootparams="quiet loglevel=3"``); no
    other quote or escape processing. The value must be ASCII; its
    parameters are then split and checked by domain.build_cmdline.
    """
    params = []
    if isinstance(user_data, str):
        user_data = user_data.encode('utf-8')
    for line in (user_data or b'').split(b'\n'):
        if line.endswith(b'\r'):
            line = line[:-1]
        if not line.startswith(b'bootparams='):
            continue
        value = line[len(b'bootparams='):]
        if len(value) >= 2 and value[:1] == value[-1:] and \
                value[:1] in (b'"', b"'"):
            value = value[1:-1]
        try:
            params.append(value.decode('ascii'))
        except UnicodeDecodeError:
            raise exception.InvalidBootParameter(
                instance=instance, param=domain.shown(value),
                reason="user data bootparams= must be ASCII")
    return params
