"""Run spawn.prepare() in a process of its own (for the fault tests).

    python -m tests.functional.faultdriver INSTANCES STORE IMAGE UUID

prints the prepared disk's path. With tests/functional/faulthook on
PYTHONPATH the fault hook can kill it at any step. With
AMIBOOT_DOWNLOAD_LOG set, each download appends the image id to that file.
"""

import os
import sys

from nova_amiboot import cache as cache_mod
from nova_amiboot import exception
from nova_amiboot.local import store
from nova_amiboot import spawn
from tests.functional import base

KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFault fault@amiboot'


class LoggingStore(store.LocalImageStore):

    def download(self, image_id, fileobj):
        log = os.environ.get('AMIBOOT_DOWNLOAD_LOG')
        if log:
            with open(log, 'a') as f:
                f.write(image_id + '\n')
        super().download(image_id, fileobj)


def main(argv):
    instances, store, image_id, uuid = argv[:4]
    conf = base.make_conf()
    cache = cache_mod.ImageCache(instances, LoggingStore(store), conf)
    req = spawn.InstanceRequest(
        uuid=uuid, name='fault-vm', image_id=image_id,
        flavor=spawn.Flavor('t', 1, 256, 1), key=KEY, hostname='fault-vm',
        user_data=b'#cloud-config\n')
    try:
        prepared = spawn.prepare(conf, cache, req, virt_type='qemu')
    except exception.AmibootException as e:
        # As the amiboot command reports it: one line, exit code 1.
        sys.stderr.write('error: %s\n' % e)
        return 1
    # What a caller does once the domain is defined.
    spawn.finished(prepared.instance_dir)
    print(prepared.disk)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
