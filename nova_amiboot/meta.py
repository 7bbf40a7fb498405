"""What nova-amiboot keeps on disk beside the bytes: xattrs and marks.

Every extended attribute it puts on a file and every marker file it leaves
in a directory is named here, with the way to read and write it. A value
that is absent or unreadable reads as None: the caller does the work again
(or goes without), never trusts half a record.
"""

import json
import os

from oslo_log import log as logging
import psutil

LOG = logging.getLogger(__name__)

# --- extended attributes ---------------------------------------------------

# On an instance's private copy of a kernel or ramdisk: the base it came
# from (its file name in the cache), so the cache counts the base as used.
USED_BASE = 'user.amiboot.base'
# On a base: the disk_format it was fetched as.
DISK_FORMAT = 'user.amiboot.disk_format'
# On a base: facts about its filesystem (JSON, grow.base_facts). They derive
# from its content, which never changes once it is in the cache.
FS_FACTS = 'user.amiboot.fs'
# On a base: a random identity of its inode. A template records the one it
# was made from, so a base removed and fetched again (a new inode, maybe
# other bytes) never meets a template of its predecessor.
BASE_ID = 'user.amiboot.id'
# On a grown template: facts about it (JSON).
TEMPLATE = 'user.amiboot.template'
# On an overlay: the base it was made over. A trusted xattr: root alone
# reads and writes that namespace, so the guest's QEMU, which owns the disk
# while it runs and may rewrite its qcow2 header, cannot change it.
BACKING = 'trusted.amiboot.backing'


def get(path, name):
    """The bytes of xattr ``name`` on ``path`` (a path or an fd), or None."""
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def get_text(path, name):
    """An ASCII xattr as text, or None (absent or not ASCII)."""
    value = get(path, name)
    try:
        return None if value is None else value.decode('ascii')
    except UnicodeDecodeError:
        return None


def get_json(path, name):
    """A JSON xattr, decoded, or None (absent or not JSON)."""
    value = get(path, name)
    try:
        return None if value is None else json.loads(value)
    except ValueError:
        return None


def put(path, name, value, create=False):
    """Set xattr ``name`` (bytes, str or, for a dict, JSON); OSError raised.

    ``create``: only if it is not there yet (EEXIST otherwise).
    """
    if isinstance(value, dict):
        value = json.dumps(value)
    if isinstance(value, str):
        value = value.encode()
    os.setxattr(path, name, value, os.XATTR_CREATE if create else 0)


def record(path, name, value):
    """put(), where a filesystem without (user) xattrs is no error.

    Returns True if it was recorded; readers then find None and do the work
    again.
    """
    try:
        put(path, name, value)
        return True
    except OSError as e:
        LOG.debug("Cannot record %(name)s on %(path)s: %(err)s",
                  {'name': name, 'path': path, 'err': e})
        return False


def record_backing(path, base):
    """Record on the overlay ``path`` the base it was made over."""
    record(path, BACKING, os.fsencode(os.path.abspath(base)))


def recorded_backing(path):
    """The base recorded when the overlay ``path`` (or fd) was made."""
    value = get(path, BACKING)
    return None if value is None else os.fsdecode(value)


# --- marker files ----------------------------------------------------------

# In an instance directory while its spawn builds it (an owner record):
# one naming a dead process is what a killed spawn left.
BUILDING = '.amiboot-building'
# In a scratch directory of utils.owned_tempdir (an owner record).
OWNER = 'owner'


def start_time(pid):
    """The kernel's start time of process ``pid`` (tells pid reuse apart).

    In clock ticks since boot (field 22 of /proc/<pid>/stat), as owner
    files have always recorded it; read through psutil.
    """
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None
    return str(round((created - psutil.boot_time()) *
                     os.sysconf('SC_CLK_TCK')))


def write_owner(path):
    """Record this process (pid and start time) in file ``path``."""
    pid = os.getpid()
    with open(path, 'w') as f:
        f.write('%d %s\n' % (pid, start_time(pid)))


def owner_dead(path):
    """True if owner file ``path`` names a process that is gone.

    False when there is no such file (or it is being written).
    """
    try:
        with open(path) as f:
            pid, start = f.read().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False
    return start_time(pid) != start
