"""kill -9 at every step of the nova route's create_image, then retry.

The nova route makes an AMI's root disk in AmibootQcow2.create_image,
called by nova's Image.cache() (imagebackend). Here it runs through nova's
own classes in a process of its own (``python -m
tests.functional.test_nova_kill INSTANCES STORE AMI UUID``: nova's config
with only instances_path set, nova's Instance and Flavor objects, the
backend's cache() as nova's driver calls it for the root disk), killed by
the test-only fault hook of the core's fault tests (tests/functional/
faulthook) at each step, then run again for the same instance.

What stands in for a real part: the image source. The nova route reads
Glance through nova's API; no Glance runs in this tier, so the child's
cache reads the local image store the core's fault tests use (the same
cache, downloads, inspection and conversion). Everything else is real:
qemu-img, qemu-storage-daemon, FUSE, e2fsprogs.
"""

import os
import shutil
import subprocess
import sys
import uuid

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot import grow
from nova_amiboot import inject
from tests.functional import base
from tests.functional import faultdriver
from tests.functional import test_faults

GiB = 1024 ** 3


def child(instances, store_path, image_id, inst_uuid):
    """nova's driver making the root disk of one AMI instance."""
    import nova.conf
    from nova import context as nova_context
    from nova import exception as nova_exception
    from nova import objects
    import nova.privsep
    from oslo_utils import fileutils

    from nova_amiboot import exception
    from nova_amiboot.local import store
    from nova_amiboot import privileged
    from nova_amiboot.virt import imagebackend

    conf = nova.conf.CONF
    conf([], project='nova', default_config_files=[])
    conf.set_override('instances_path', instances)
    # Root here: nova's and our privileged calls run in this process, as in
    # tests/nova_functional.
    for ctx in (nova.privsep.sys_admin_pctxt, privileged.nbd_pctxt,
                privileged.net_pctxt):
        ctx.set_client_mode(False)
    objects.register_all()
    local = store.LocalImageStore(store_path)
    meta = local.get_meta(image_id)

    def image_cache(context, trusted_certs=None):
        return cache_mod.ImageCache(
            conf.instances_path, faultdriver.LoggingStore(store_path), conf,
            base_dir_name=conf.image_cache.subdirectory_name)
    imagebackend.image_cache = image_cache

    inst = objects.Instance(
        uuid=inst_uuid, image_ref=image_id, kernel_id=meta.kernel_id,
        ramdisk_id=meta.ramdisk_id, key_data=faultdriver.KEY,
        hostname='fault-vm', trusted_certs=None,
        flavor=objects.Flavor(name='t', root_gb=1, memory_mb=256, vcpus=1,
                              ephemeral_gb=0, swap=0))
    # What nova's LibvirtDriver._create_image does for the root disk.
    fileutils.ensure_tree(os.path.join(instances, inst_uuid))
    backend = imagebackend.AmibootQcow2(instance=inst, disk_name='disk')

    def no_fetch(*args, **kwargs):
        raise AssertionError("nova's own fetch must not run for an AMI")
    try:
        backend.cache(fetch_func=no_fetch,
                      context=nova_context.get_admin_context(),
                      filename=cache_mod.base_name(image_id),
                      image_id=image_id, size=inst.flavor.root_gb * GiB,
                      trusted_certs=None)
    except (exception.AmibootException, nova_exception.NovaException) as e:
        sys.stderr.write('error: %s\n' % e)
        return 1
    print(backend.path)
    return 0


class TestKillNovaCreateImage(test_faults.FaultTestCase):
    """AmibootQcow2.create_image killed at each step, then run again."""

    def drive(self, instances, ami, inst_uuid, **env):
        env['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'
        p = subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.test_nova_kill',
             instances, self.store.path, ami.id, inst_uuid],
            cwd=test_faults.TOP, env=test_faults.hooked_env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=600)
        return p.pid, p.returncode, out, err

    def assertDiskGood(self, disk, base_path):
        self.run_cmd('qemu-img', 'check', '-q', '-f', 'qcow2', disk)
        self.assertEqual(base_path, cache_mod.backing_file(disk))
        with attach.attached(disk, 'qcow2', self.conf) as target:
            target.run('e2fsck', ['-fn'])
            out = target.run('dumpe2fs', ['-h'])[0]
            fields = dict(line.split(':', 1) for line in out.splitlines()
                          if ':' in line)
            self.assertEqual(GiB, int(fields['Block count'])
                             * int(fields['Block size']))
            keys = inject.GuestFS(target).read('/root/.ssh/authorized_keys')
            self.assertIn(faultdriver.KEY.encode(), keys)

    def test_kill_create_image_at_every_step(self):
        ami, _aki, _ari = self.qcow2_triplet()
        ref = self.scratch('ref')
        plan, names = self.kill_plan(ami, ref)
        # The first disk of this (base, size): fetch (download, inspection,
        # conversion, the base check), the grown template's build, then
        # its copy, attached for the key (debugfs).
        for needed in ('download', 'inspect', 'run:qemu-img info',
                       'run:qemu-img convert', 'fetched',
                       'run:qemu-img create', 'run:qemu-storage-daemon',
                       'attached', 'run:e2fsck', 'run:resize2fs',
                       'run:debugfs'):
            self.assertIn(needed, names)
        self.assertEqual(1, len(test_faults.templates(ref)))
        # Every step (the tail is nova's size check after the disk is
        # whole: a kill there must leave the disk usable as it is).
        expected = test_faults.base_digests(ref)
        base_path = os.path.join(ref, '_base', cache_mod.base_name(ami.id))
        kills = recovered = 0
        leaked = []
        for warm_start, step in plan:
            inst = self.scratch('kill-%d' % kills)
            inst_uuid = str(uuid.uuid4())
            if warm_start:
                self.copy_bases(ref, inst)
            daemons_before = base.live_processes('qemu-storage-daemon')
            pid, rc, _out, err = self.drive(inst, ami, inst_uuid,
                                            AMIBOOT_KILL_AT=step)
            self.assertEqual(-9, rc, "%s: not killed: %s" % (step, err))
            kills += 1
            disk = os.path.join(inst, inst_uuid, 'disk')
            # nova's Image.cache() takes a disk that exists as done: a kill
            # before the disk was complete must leave none (a kill after,
            # in nova's size check, leaves it whole; checked below, as the
            # retry does not touch it).
            rpid, rc, out, err = self.drive(inst, ami, inst_uuid)
            self.assertEqual(0, rc, "retry after kill at %s: %s"
                             % (step, err))
            self.assertEqual(disk, out.strip())
            self.assertCacheWhole(inst, expected, step)
            self.assertDiskGood(disk, base_path.replace(ref, inst))
            left = self.leftovers(inst, {pid, rpid}, daemons_before)
            left += [n for n in os.listdir(inst)
                     if n.startswith(grow.CHECK_PREFIX)]
            if left:
                leaked.append((step, left))
            else:
                recovered += 1
            shutil.rmtree(inst)
        shutil.rmtree(ref)
        self.assertKillFigure('nova route create_image', len(plan), kills,
                              recovered, leaked)


if __name__ == '__main__':
    sys.exit(child(*sys.argv[1:5]))
