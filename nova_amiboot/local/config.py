"""The embedded default's inputs: state directory, flavors, names, keys.

Everything the ``amiboot`` command takes from its user is checked here,
before any work, against a positive grammar.
"""

import os
import re

from nova_amiboot import domain
from nova_amiboot import exception
from nova_amiboot import spawn

# fullmatch: a '$' anchor lets a trailing newline through.
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,62}')
# An SSH public key file is a few lines; refuse anything much larger.
MAX_KEY_FILE = 64 * 1024

BUILTIN_FLAVORS = {
    # nova's classic defaults
    'm1.tiny': spawn.Flavor('m1.tiny', 1, 512, 1),
    'm1.small': spawn.Flavor('m1.small', 20, 2048, 1),
    'm1.medium': spawn.Flavor('m1.medium', 40, 4096, 2),
    'm1.large': spawn.Flavor('m1.large', 80, 8192, 4),
}


def default_state_dir():
    if os.geteuid() == 0:
        return '/var/lib/amiboot'
    data = os.environ.get('XDG_DATA_HOME') or os.path.expanduser(
        '~/.local/share')
    return os.path.join(data, 'amiboot')


def flavors(conf):
    result = dict(BUILTIN_FLAVORS)
    for item in conf.local.flavors:
        try:
            name, root_gb, memory_mb, vcpus = item.split(':')
            result[name] = spawn.Flavor(name, int(root_gb), int(memory_mb),
                                        int(vcpus))
        except ValueError:
            raise exception.InvalidInput(
                reason="[local] flavors: %r is not NAME:ROOT_GB:MEMORY_MB:"
                       "VCPUS" % item)
    return result


def check_name(kind, name):
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise exception.InvalidInput(
            reason="%s name %s: use letters, digits, '.', '_' and '-' "
                   "(at most 63)" % (kind, domain.shown(name)))


def read_key_file(path, instance):
    """The public key text of ``path``: bounded, UTF-8, or a clear error."""
    if not os.path.isfile(path):
        raise exception.InvalidInput(
            reason="Instance %s: key file %s not found" % (instance, path))
    with open(path, 'rb') as f:
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise exception.InvalidInput(
            reason="Instance %s: key file %s is over %d bytes"
                   % (instance, path, MAX_KEY_FILE))
    try:
        return data.decode('utf-8').strip()
    except UnicodeDecodeError:
        raise exception.InvalidInput(
            reason="Instance %s: key file %s is not UTF-8 text"
                   % (instance, path))
