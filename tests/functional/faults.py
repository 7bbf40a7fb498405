"""Helpers of the fault and fuzz tests: figures and leak checks."""

import os
import sys

from tests.functional import base


# Shown at the end of the pytest run by conftest.py (pytest captures what
# a test prints).
FIGURES = []


def figure(line):
    """Report a reliability figure.

    pytest prints them in its summary (see conftest.py); run alone they go
    to stderr; they are also appended to $AMIBOOT_FIGURES when set.
    """
    FIGURES.append(line)
    sys.stderr.write('\n%s\n' % line)
    path = os.environ.get('AMIBOOT_FIGURES')
    if path:
        with open(path, 'a') as f:
            f.write(line + '\n')


def processes_mentioning(name, text):
    """PIDs of live ``name`` processes with ``text`` in their command line.

    Other tests on this host run their own daemons; a test looks for those
    that name its own paths.
    """
    found = []
    for pid in base.live_processes(name):
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                if text.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def owner_pid(path):
    """The pid in a scratch dir's owner file (utils.owned_tempdir)."""
    try:
        with open(os.path.join(path, 'owner')) as f:
            return int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def mounts_under(text):
    """FUSE mount points whose path contains ``text``."""
    with open('/proc/self/mountinfo') as f:
        return [line.split()[4] for line in f
                if text in line.split()[4]]


def orphaned_daemons(pids):
    """qemu-storage-daemons of an export made by one of ``pids``.

    Their export dir names the process that made it (owner file); a dir
    already removed means the daemon outlived its clean-up.
    """
    found = []
    for pid in base.live_processes('qemu-storage-daemon'):
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as f:
                args = f.read().decode(errors='replace').split('\0')
        except OSError:
            continue
        if '--pidfile' not in args:
            continue
        workdir = os.path.dirname(args[args.index('--pidfile') + 1])
        if 'amiboot-export-' not in workdir:
            continue
        if not os.path.isdir(workdir) or owner_pid(workdir) in pids:
            found.append(pid)
    return found
