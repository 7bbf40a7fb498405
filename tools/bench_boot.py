"""Boot to guest: ``amiboot boot --wait`` of the test bed AMI, timed.

From the command's start to the guest's first report line on the serial
console, and its parts, seen from outside while the command runs:

- prepare: command start (Python start-up included) until the instance's
  ``libvirt.xml`` exists (the end of spawn.prepare);
- define: until libvirt knows the domain;
- qemu start: until the domain is active;
- kernel: until the kernel hands over to the ramdisk's /init
  ("Run /init" on the console);
- init: until the first AMIBOOT-REPORT line (the ramdisk mounted the AMI
  and switched to its init, which reports).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import libvirt

REPORT = 'AMIBOOT-REPORT'
RUN_INIT = 'Run /init'


def amiboot_cmd():
    return os.path.join(os.path.dirname(sys.executable), 'amiboot')


def boot_to_guest(testbed, timeout=600):
    """Returns ({part: seconds, 'total': seconds}, None) or (None, why)."""
    state = tempfile.mkdtemp(prefix='amiboot-bench-boot-', dir='/var/tmp')
    config = os.path.join(state, 'amiboot.conf')
    with open(config, 'w') as f:
        f.write('[local]\nvirt_type = qemu\n')
    name = 'bench-%s' % uuid.uuid4().hex[:6]
    base = [amiboot_cmd(), '--state-dir', state, '--config-file', config]
    # Lookups of the domain fail until the command defines it: quietly.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open('qemu:///system')
    try:
        subprocess.run(base + ['image', 'import', 'benchtb', '--kernel',
                               testbed['kernel'], '--ramdisk',
                               testbed['ramdisk'], '--root',
                               testbed['root']],
                       check=True, capture_output=True)
        marks = {}
        t0 = time.monotonic()
        proc = subprocess.Popen(base + ['boot', name, '--image', 'benchtb',
                                        '--flavor', 'm1.tiny', '--wait'],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        console = None
        while time.monotonic() - t0 < timeout:
            now = time.monotonic() - t0
            if 'prepare' not in marks and glob.glob(
                    os.path.join(state, '*', '*', 'libvirt.xml')):
                marks['prepare'] = now
            if 'define' not in marks or 'qemu_start' not in marks:
                try:
                    dom = conn.lookupByName('amiboot-' + name)
                    marks.setdefault('define', now)
                    if dom.isActive():
                        marks.setdefault('qemu_start', now)
                except libvirt.libvirtError:
                    pass
            if console is None:
                found = glob.glob(os.path.join(state, '*', '*',
                                               'console.log'))
                console = found[0] if found else None
            if console:
                try:
                    with open(console, 'rb') as f:
                        text = f.read().decode('utf-8', 'replace')
                except FileNotFoundError:
                    text = ''
                if RUN_INIT in text:
                    marks.setdefault('kernel', now)
                if REPORT in text:
                    marks['report'] = now
                    break
            if proc.poll() is not None and 'report' not in marks:
                break
            time.sleep(0.005)
        proc.wait(timeout=timeout)
        if 'report' not in marks:
            err = proc.stderr.read().decode('utf-8', 'replace').strip()
            return None, "no report line: %s" % err[-300:]
        order = ['prepare', 'define', 'qemu_start', 'kernel', 'report']
        parts, last = {}, 0.0
        for key in order:
            if key in marks:
                label = 'init' if key == 'report' else key
                parts[label] = round(marks[key] - last, 3)
                last = marks[key]
        parts['total'] = round(marks['report'], 3)
        return parts, None
    finally:
        subprocess.run(base + ['delete', name], capture_output=True)
        conn.close()
        shutil.rmtree(state, ignore_errors=True)
