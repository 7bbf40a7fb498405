"""The main job until the ``amiboot`` command exists.

Builds the test bed's triplet, puts it in a local image store, prepares an
instance through the spawn pipeline (cache, qcow2 overlay, grow to a 1 GiB
flavor, key injection), boots it through libvirt and prints the report the
guest sends back from inside.
"""

import json
import os
import shutil
import sys
import tempfile
import time
import uuid

from oslo_config import cfg

from nova_amiboot import cache as cache_mod
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import guest
from nova_amiboot import images
from nova_amiboot import spawn
from tests.testbed import boot
from tests.testbed import build

DEMO_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyOnly demo@amiboot'


def main():
    t0 = time.monotonic()
    info = build.build()
    print("triplet: kernel %s\n         ramdisk %s (loads %s)\n"
          "         root %s" % (info['kernel'], info['ramdisk'],
                                ' '.join(info['modules']), info['root']))
    conf = cfg.ConfigOpts()
    amiboot_conf.register_opts(conf)
    conf([], default_config_files=[])
    state = tempfile.mkdtemp(prefix='amiboot-demo-', dir='/var/tmp')
    os.chmod(state, 0o755)
    host = guest.Host()
    try:
        store = images.LocalImageStore(os.path.join(state, 'images'))
        aki = store.add('demo-aki', info['kernel'], 'aki')
        ari = store.add('demo-ari', info['ramdisk'], 'ari')
        ami = store.add('demo-ami', info['root'], 'ami',
                        {'kernel_id': aki.id, 'ramdisk_id': ari.id})
        cache = cache_mod.ImageCache(os.path.join(state, 'instances'),
                                     store, conf)
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='amiboot-demo', image_id=ami.id,
            flavor=spawn.Flavor('m1.demo', 1, 256, 1), key=DEMO_KEY,
            hostname='amiboot-demo', boot_params=('amiboot.demo=1',))
        prepared = spawn.prepare(conf, cache, req, virt_type='qemu')
        print("prepared in %.3f s: %s"
              % (prepared.timings['total'],
                 ', '.join('%s %.3f s' % kv
                           for kv in prepared.timings.items())))
        t1 = time.monotonic()
        rep, _text = boot.boot_prepared(host, prepared, req.name)
    finally:
        host.destroy('amiboot-demo')
        host.close()
        shutil.rmtree(state, ignore_errors=True)
    print("guest booted and reported in %.1f s (whole job %.1f s):"
          % (time.monotonic() - t1, time.monotonic() - t0))
    print(json.dumps(rep, indent=1, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
