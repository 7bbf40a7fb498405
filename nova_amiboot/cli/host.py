"""amiboot flavor list, amiboot doctor: this host and its flavors."""

import dataclasses
import json
import os

from nova_amiboot.cli import common
from nova_amiboot.local import config as local_config
from nova_amiboot.local import hostcheck


class ListFlavor(common.Lister):
    """List flavors."""

    def take_action(self, a):
        return self.rows(a, ('name', 'root_gb', 'memory_mb', 'vcpus'),
                         [dataclasses.asdict(f) for f in
                          local_config.flavors(self.app.conf).values()])

    needs_cloud = False


class Doctor(common.Lister):
    """Check this host's requirements: OK/FAIL and the fix for each."""

    needs_cloud = False

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--kernel', metavar='FILE',
                       help='kernel to test KVM with (default: an AKI of '
                       'the store, else the host\'s)')
        return p

    def take_action(self, a):
        state = self.app.state_dir()
        kernel = a.kernel
        if not kernel:
            store = os.path.join(state, 'images')
            for name in sorted(os.listdir(store)) if os.path.isdir(
                    store) else ():
                if name.endswith('.json'):
                    with open(os.path.join(store, name)) as f:
                        if json.load(f).get('disk_format') == 'aki':
                            kernel = os.path.join(store, name[:-5])
                            break
        os.makedirs(state, mode=0o755, exist_ok=True)
        checks = hostcheck.doctor(self.app.conf, self.app.options.connect,
                                  state, kernel)
        # KVM is optional (guests run with TCG without it): only a missing
        # requirement makes the exit status 1.
        self.app.doctor_failed = any(c.status == 'FAIL' and c.check != 'KVM'
                                     for c in checks)
        return self.rows(a, ('check', 'status', 'detail', 'fix'),
                         [dataclasses.asdict(c) for c in checks])
