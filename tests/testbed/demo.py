"""The main job: the ``amiboot`` command end to end on this host.

Builds the test bed's triplet, imports it into amiboot's local image store,
boots it with an SSH key on a 1 GiB flavor, waits for it and prints the
report the guest sends from inside. Each amiboot command is shown as it
runs, so this doubles as a walk-through.
"""

import json
import os
import shlex
import subprocess
import sys
import time

from tests.testbed import build
from tests.testbed import report

STATE = os.environ.get('AMIBOOT_DEMO_STATE', '/var/lib/amiboot-demo')
# These machines cannot run KVM guests; a host that can may say kvm.
VIRT_TYPE = os.environ.get('AMIBOOT_VIRT_TYPE', 'qemu')
AMIBOOT = os.path.join(os.path.dirname(sys.executable), 'amiboot')


def amiboot(*args, check=True):
    argv = [AMIBOOT, '--state-dir', STATE, '--config-file',
            os.path.join(STATE, 'amiboot.conf')] + list(args)
    print('$ amiboot %s' % ' '.join(shlex.quote(a) for a in args))
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit("demo failed: %s" % p.stderr.strip())
    return p


def main():
    t0 = time.monotonic()
    info = build.build()
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, 'amiboot.conf'), 'w') as f:
        f.write('[local]\nvirt_type = %s\n' % VIRT_TYPE)
    key = os.path.join(STATE, 'demo_key')
    if not os.path.exists(key):
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                        'amiboot-demo', '-f', key], check=True)
    # A rerun starts from a clean slate.
    amiboot('server', 'delete', 'demo', check=False)
    amiboot('image', 'delete', 'testbed', check=False)
    amiboot('image', 'import', 'testbed', '--kernel', info['kernel'],
            '--ramdisk', info['ramdisk'], '--root', info['root'])
    t1 = time.monotonic()
    p = amiboot('server', 'create', 'demo', '--image', 'testbed',
                '--flavor', 'm1.tiny', '--key-file', key + '.pub',
                '--boot-param', 'amiboot.demo=1', '--wait', '-f', 'json')
    inst = json.loads(p.stdout)
    booted = time.monotonic() - t1
    print(amiboot('server', 'list').stdout)
    rep = report.parse(amiboot('server', 'console', 'demo').stdout)
    print("instance %s (%s) booted and reported in %.1f s; the guest says:"
          % (inst['name'], inst['uuid'], booted))
    print(json.dumps(rep, indent=1, sort_keys=True))
    amiboot('server', 'delete', 'demo')
    print("whole job %.1f s" % (time.monotonic() - t0))
    return 0


if __name__ == '__main__':
    sys.exit(main())
