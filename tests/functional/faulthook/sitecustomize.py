"""Test-only fault hook: SIGKILL this process at a chosen pipeline step.

Imported at start-up by every Python process whose PYTHONPATH has this
directory (the fault tests run ``amiboot`` and faultdriver that way);
production code carries no hook. Environment:

- AMIBOOT_FAULT_LOG: append each step reached (``name n``, n counting
  from 1 per name) to this file; a run without a kill lists the steps.
- AMIBOOT_KILL_AT: ``name n``: SIGKILL ourselves at the n-th ``name``.
- AMIBOOT_FILL_AT and AMIBOOT_FILL_FILE: at step ``name n`` fill the
  filesystem of AMIBOOT_FILL_FILE (writing that file until ENOSPC) and go
  on: what follows meets a full disk.

Steps: ``download`` (first chunk written), ``inspect``, ``fetched`` (a
base renamed into the cache, checked), ``run:<tool>``
(the tool started and still running, in its sandbox: qemu-img
info/convert/create, qemu-storage-daemon, blkid, e2fsck, resize2fs,
debugfs, dumpe2fs, all through nova_amiboot.sandbox), ``attached``
(the FUSE export is up, inside its sandbox), ``xml`` (libvirt.xml
written, not yet renamed into place), ``define`` (the domain defined).
"""

import collections
import os
import signal
import subprocess


def _install():
    import functools

    from nova_amiboot import attach
    from nova_amiboot import cache
    from nova_amiboot import guest
    from nova_amiboot import safety
    from nova_amiboot import sandbox
    from nova_amiboot import utils

    log = os.environ.get('AMIBOOT_FAULT_LOG')
    kill_at = os.environ.get('AMIBOOT_KILL_AT')
    fill_at = os.environ.get('AMIBOOT_FILL_AT')
    seen = collections.Counter()

    def reached(name):
        """Record step ``name``; True if this is where to die."""
        seen[name] += 1
        step = '%s %d' % (name, seen[name])
        if log:
            with open(log, 'a') as f:
                f.write(step + '\n')
        if step == fill_at:
            fill(os.environ['AMIBOOT_FILL_FILE'])
        return step == kill_at

    def fill(path):
        block = b'\xa5' * (1 << 16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, block)
        except OSError:
            pass
        try:
            while True:
                os.write(fd, b'\xa5')
        except OSError:
            pass
        finally:
            os.close(fd)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def step_before(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if reached(name):
                die()
            return fn(*args, **kwargs)
        return wrapper

    def step_after(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            if reached(name):
                die()
            return result
        return wrapper

    real_execute = utils.execute

    def execute(*cmd, **kwargs):
        name = 'run:' + (' '.join(cmd[:2]) if cmd[0] == 'qemu-img'
                         else os.path.basename(cmd[0]))
        if reached(name):
            # Die with the tool running: it is orphaned mid-work.
            kwargs['on_execute'] = lambda proc: die()
        return real_execute(*cmd, **kwargs)

    utils.execute = execute

    # Every tool on untrusted bytes runs through the sandbox's runner
    # (nova_amiboot.sandbox._bounded); same step names as above.
    real_bounded = sandbox._bounded
    real_popen = sandbox.subprocess.Popen

    class DyingPopen(real_popen):
        # Die with the tool started (its stdin script possibly unread):
        # it is orphaned mid-work, as with execute above.
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            die()

    class DyingSubprocess(object):
        Popen = DyingPopen

        def __getattr__(self, name):
            return getattr(subprocess, name)

    def step_name(argv, tool):
        if tool == 'qemu-img':
            return 'run:qemu-img ' + argv[argv.index('qemu-img') + 1]
        return 'run:' + tool

    def bounded(argv, *args, **kwargs):
        if reached(step_name(argv, kwargs.get('tool'))):
            sandbox.subprocess = DyingSubprocess()
        return real_bounded(argv, *args, **kwargs)

    sandbox._bounded = bounded
    real_enter = sandbox.Session.__enter__

    def enter(self):
        if reached('run:qemu-storage-daemon'):
            sandbox.subprocess = DyingSubprocess()
        result = real_enter(self)
        if reached('attached'):
            die()
        return result

    sandbox.Session.__enter__ = enter

    class Writer(cache._HashingWriter):
        def write(self, chunk):
            super().write(chunk)
            if self.size == len(chunk) and reached('download'):
                self.f.flush()
                die()

    cache._HashingWriter = Writer
    safety.inspect = step_before('inspect', safety.inspect)
    # A base is in the cache (renamed into place, checked).
    cache.ImageCache._download = step_after('fetched',
                                            cache.ImageCache._download)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith('libvirt.xml') and reached('xml'):
            die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    guest.Host.define_and_start = step_after(
        'define', guest.Host.define_and_start)
    del attach


if any(os.environ.get(v) for v in ('AMIBOOT_FAULT_LOG', 'AMIBOOT_KILL_AT',
                                   'AMIBOOT_FILL_AT')):
    _install()
