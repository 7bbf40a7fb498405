"""Run spawn.prepare() in a process of its own (for the fault tests).

    python -m tests.functional.faultdriver INSTANCES STORE IMAGE UUID

prints the prepared disk's path. With tests/functional/faulthook on
PYTHONPATH the fault hook can kill it at any step.
"""

import sys

from nova_amiboot import cache as cache_mod
from nova_amiboot import images
from nova_amiboot import spawn
from tests.functional import base

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFault fault@amiboot'


def main(argv):
    instances, store, image_id, uuid = argv[:4]
    conf = base.make_conf()
    cache = cache_mod.ImageCache(instances, images.LocalImageStore(store),
                                 conf)
    req = spawn.InstanceRequest(
        uuid=uuid, name='fault-vm', image_id=image_id,
        flavor=spawn.Flavor('t', 1, 256, 1), key=KEY, hostname='fault-vm',
        user_data=b'#cloud-config\n')
    prepared = spawn.prepare(conf, cache, req, virt_type='qemu')
    # What a caller does once the domain is defined.
    spawn.finished(prepared.instance_dir)
    print(prepared.disk)


if __name__ == '__main__':
    main(sys.argv[1:])
