"""Faults to survive: kill -9 at every step, concurrent boots against the
cache cleaner, a full disk at every step.

Each prints its figure (see faults.figure). Processes, not threads: the
spawns run in processes of their own (faultdriver, the amiboot command),
killed by the test-only fault hook in tests/functional/faulthook (a
sitecustomize on their PYTHONPATH; production code has no hook).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from oslo_concurrency import lockutils

from nova_amiboot import attach
from nova_amiboot import cache as cache_mod
from nova_amiboot import grow
from nova_amiboot import inject
from nova_amiboot import meta
from tests.functional import base
from tests.functional import faultdriver
from tests.functional import faults
from tests.functional import test_cli
from tests.testbed import build
from tests.testbed import report

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HOOK = os.path.join(TOP, 'tests', 'functional', 'faulthook')
AMIBOOT = os.path.join(os.path.dirname(sys.executable), 'amiboot')
# Steps of a fetch (the command's kill test clears the cache for them).
FETCH_STEPS = ('download', 'inspect', 'run:qemu-img info',
               'run:qemu-img convert', 'fetched')
TOOLS = ('qemu-storage-daemon', 'qemu-img', 'e2fsck', 'resize2fs',
         'debugfs', 'blkid', 'fusermount3')


def base_digests(instances):
    """sha256 of each base file in ``instances``/_base (not templates)."""
    bdir = os.path.join(instances, '_base')
    return {n: build.sha256_file(os.path.join(bdir, n))
            for n in os.listdir(bdir)
            if os.path.isfile(os.path.join(bdir, n))}


def templates(instances):
    """Paths of the grown templates (and anything else) in the cache."""
    tdir = os.path.join(instances, '_base', grow.TEMPLATE_DIR)
    if not os.path.isdir(tdir):
        return []
    return sorted(os.path.join(tdir, n) for n in os.listdir(tdir))


def hooked_env(**env):
    out = dict(os.environ)
    out['PYTHONPATH'] = os.pathsep.join(
        [HOOK, TOP] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    out.pop('AMIBOOT_KILL_AT', None)
    out.pop('AMIBOOT_FAULT_LOG', None)
    out.update(env)
    return out


class FaultTestCase(base.RealToolsTestCase):

    def assertCacheWhole(self, inst, expected, step):
        """After a retry: bases unchanged, one whole template, locks free."""
        self.assertEqual(expected, base_digests(inst), step)
        self.assertEqual(1, len(templates(inst)),
                         "%s: %s" % (step, templates(inst)))
        self.assertTemplatesComplete(inst)
        self.assertLocksFree(inst)

    def assertKillFigure(self, what, steps, kills, recovered, leaked):
        faults.figure('kill -9 (%s, %d steps): kills: %d, recovered: %d, '
                      'leaked: %d' % (what, steps, kills, recovered,
                                      len(leaked)))
        self.maxDiff = None
        self.assertEqual([], leaked)
        self.assertEqual(kills, recovered)

    def qcow2_triplet(self):
        """The test bed triplet, the AMI as qcow2 (a conversion step)."""
        qcow = self.scratch('root.qcow2')
        self.run_cmd('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                     self.testbed['root'], qcow)
        return self.add_triplet(root=qcow, root_format='qcow2')

    def leftovers(self, instances, pids, daemons_before=()):
        """What processes ``pids`` left behind.

        Tools still working on ``instances``, daemons serving their scratch
        dirs, scratch dirs and mounts they own, partial files.
        """
        found = []
        deadline = time.monotonic() + 15
        while True:
            # An orphaned tool (killed mid-run parent) may need a moment
            # to notice that its daemon is gone.
            procs = {t: faults.processes_mentioning(t, instances)
                     for t in TOOLS}
            procs['orphaned daemons'] = [
                d for d in faults.orphaned_daemons(pids)
                if d not in daemons_before]
            procs = {t: p for t, p in procs.items() if p}
            if not procs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if procs:
            found.append('processes %s' % procs)
        for d in glob.glob(os.path.join(tempfile.gettempdir(),
                                        'amiboot-*')):
            if faults.owner_pid(d) in pids:
                found.append('scratch dir %s' % d)
        for m in faults.mounts_under('amiboot-export-'):
            if faults.owner_pid(os.path.dirname(m)) in pids:
                found.append('mount %s' % m)
        for dirpath, _dirs, names in os.walk(instances):
            found += [os.path.join(dirpath, n) for n in names
                      if '.part' in n]
        found += [d for d in os.listdir(instances) if '.new-' in d]
        # Scratch dirs of a base check or a template build (in the
        # instances dir, next to the disks they become).
        for d in glob.glob(os.path.join(instances, 'amiboot-check-*')):
            if faults.owner_pid(d) in pids:
                found.append('scratch dir %s' % d)
        return found

    def assertTemplatesComplete(self, instances):
        """Every grown template in the cache is whole: checked, sealed."""
        for tpl in templates(instances):
            self.assertTrue(tpl.endswith('.qcow2'), tpl)
            self.assertEqual(0o444, os.stat(tpl).st_mode & 0o777, tpl)
            self.run_cmd('qemu-img', 'check', '-q', '-f', 'qcow2', tpl)

    def drive(self, instances, ami, inst_uuid, **env):
        p = subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.faultdriver',
             instances, self.store.path, ami.id, inst_uuid],
            cwd=TOP, env=hooked_env(**env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=300)
        return p.pid, p.returncode, out, err

    def steps_of(self, ami, instances):
        log = self.scratch('steps-%s.log' % os.path.basename(instances))
        _pid, rc, _out, err = self.drive(instances, ami, str(uuid.uuid4()),
                                         AMIBOOT_FAULT_LOG=log)
        self.assertEqual(0, rc, err)
        with open(log) as f:
            return f.read().splitlines()

    def copy_bases(self, ref, inst):
        # Copies without the reference run's xattrs (no facts, identity
        # nor template): the base check and the template build happen
        # again, in the spawn.
        os.makedirs(os.path.join(inst, '_base'))
        for n in base_digests(ref):
            shutil.copyfile(os.path.join(ref, '_base', n),
                            os.path.join(inst, '_base', n))

    def kill_plan(self, ami, ref):
        """[(warm start, step)] for a kill at every step, and every name.

        Every step up to the last base entering the cache is a fetch's (the
        AMI's conversion and check included): killed from nothing. Past
        it, the spawn runs with the bases there already (copies, without
        the facts: a download and conversion saved per step), listed by a
        second reference run that starts so.
        """
        steps = self.steps_of(ami, ref)
        last = max(i for i, s in enumerate(steps) if s.startswith('fetched'))
        warm = self.scratch('warm')
        self.copy_bases(ref, warm)
        spawn_steps = self.steps_of(ami, warm)
        shutil.rmtree(warm)
        names = {s.rsplit(' ', 1)[0] for s in steps + spawn_steps}
        return ([(False, s) for s in steps[:last + 1]] +
                [(True, s) for s in spawn_steps]), names

    def assertLocksFree(self, instances):
        for name in os.listdir(os.path.join(instances, '_base')):
            with lockutils.lock(name, lock_file_prefix=cache_mod.LOCK_PREFIX,
                                external=True, blocking=False,
                                lock_path=os.path.join(instances, 'locks')):
                pass


class TestKill(FaultTestCase):
    """kill -9 at every step of the pipeline, then the same boot again."""

    def test_kill_prepare_at_every_step(self):
        ami, _aki, _ari = self.qcow2_triplet()
        ref = self.scratch('ref')
        plan, names = self.kill_plan(ami, ref)
        # The first prepare of this (base, size) checks the base and builds
        # its grown template (e2fsck, resize2fs there), then copies it for
        # the instance and injects (debugfs).
        for needed in ('download', 'inspect', 'run:qemu-img info',
                       'run:qemu-img convert', 'fetched',
                       'run:qemu-img create', 'run:qemu-storage-daemon',
                       'attached', 'run:e2fsck', 'run:resize2fs',
                       'run:debugfs', 'xml'):
            self.assertIn(needed, names)
        self.assertEqual(1, len(templates(ref)), templates(ref))
        expected = base_digests(ref)
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
            rpid, rc, out, err = self.drive(inst, ami, inst_uuid)
            self.assertEqual(0, rc, "retry after kill at %s: %s"
                             % (step, err))
            self.assertEqual(os.path.join(inst, inst_uuid, 'disk'),
                             out.strip())
            # The retry built (or found) the one template, whole.
            self.assertCacheWhole(inst, expected, step)
            self.run_cmd('qemu-img', 'check', '-q', '-f', 'qcow2',
                         out.strip())
            left = self.leftovers(inst, {pid, rpid}, daemons_before)
            if left:
                leaked.append((step, left))
            else:
                recovered += 1
            shutil.rmtree(inst)
        shutil.rmtree(ref)
        self.assertKillFigure('core prepare', len(plan), kills, recovered,
                              leaked)


class TestConcurrentBoots(FaultTestCase):
    """Spawns in 32 processes against one uncached image, cleaner looping."""

    N = 32

    def test_concurrent_boots_with_cleaner(self):
        ami, aki, ari = self.qcow2_triplet()
        inst = self.scratch('conc')
        os.makedirs(inst)
        downloads = self.scratch('downloads.log')
        stop, removed_log = self.scratch('stop'), self.scratch('removed')
        env = hooked_env(AMIBOOT_DOWNLOAD_LOG=downloads)
        cleaner = subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.cleaner', inst,
             self.store.path, stop, removed_log], cwd=TOP, env=env)
        self.addCleanup(cleaner.kill)
        uuids = [str(uuid.uuid4()) for _ in range(self.N)]
        procs = [subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.faultdriver', inst,
             self.store.path, ami.id, u], cwd=TOP, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for u in uuids]
        results = [p.communicate(timeout=900) + (p.returncode,)
                   for p in procs]
        open(stop, 'w').close()
        cleaner.wait(60)
        with open(removed_log) as f:
            lines = f.read().splitlines()
        removed, passes = lines[:-1], int(lines[-1].split()[1])
        with open(downloads) as f:
            fetched = sorted(f.read().split())
        c = cache_mod.ImageCache(inst, self.store, self.conf)
        valid = 0
        for u, (out, err, rc) in zip(uuids, results):
            self.assertEqual(0, rc, err)
            disk = os.path.join(inst, u, 'disk')
            self.assertEqual(disk, out.strip())
            self.run_cmd('qemu-img', 'check', '-q', '-f', 'qcow2', disk)
            self.assertEqual(c.path_for(ami.id), cache_mod.backing_file(disk))
            for part, image in (('kernel', aki), ('ramdisk', ari)):
                # A private copy (not a link: libvirt chowns it while the
                # guest runs) naming its base, which counts it as used.
                copy = os.path.join(inst, u, part)
                self.assertNotEqual(os.stat(c.path_for(image.id)).st_ino,
                                    os.stat(copy).st_ino)
                self.assertEqual(build.sha256_file(c.path_for(image.id)),
                                 build.sha256_file(copy))
                self.assertEqual(
                    os.path.basename(c.path_for(image.id)).encode(),
                    os.getxattr(copy, meta.USED_BASE))
            with attach.attached(disk, 'qcow2', self.conf) as tg:
                tg.run('e2fsck', ['-fn'])
                keys = inject.GuestFS(tg).read('/root/.ssh/authorized_keys')
                self.assertIn(faultdriver.KEY.encode(), keys)
            valid += 1
        faults.figure(
            '%d concurrent boots, cleaner at min age 0 (%d passes): '
            'downloads %d (%d image parts), bases removed while in use %d, '
            'disks valid %d/%d'
            % (self.N, passes, len(fetched), 3, len(removed), valid, self.N))
        self.assertEqual(sorted([ami.id, aki.id, ari.id]), fetched)
        self.assertEqual([], removed)
        # One (base, size): one template, built once, whole.
        self.assertEqual(1, len(templates(inst)), templates(inst))
        self.assertTemplatesComplete(inst)
        self.assertGreater(passes, 0)


class TestDiskFull(FaultTestCase):
    """The instances filesystem fills up at each step, then space is freed.

    The fault hook fills a small tmpfs (the instances path) at the chosen
    step; whatever writes next meets ENOSPC.
    """

    def test_disk_full_at_each_step(self):
        ami, _aki, _ari = self.qcow2_triplet()
        ref = self.scratch('ref')
        log = self.scratch('steps.log')
        p = subprocess.run(
            [sys.executable, '-m', 'tests.functional.faultdriver', ref,
             self.store.path, ami.id, str(uuid.uuid4())], cwd=TOP,
            env=hooked_env(AMIBOOT_FAULT_LOG=log), capture_output=True,
            text=True)
        self.assertEqual(0, p.returncode, p.stderr)
        with open(log) as f:
            all_steps = f.read().splitlines()
        # Each kind of step once: its last occurrence (for e2fsck and
        # resize2fs, the run on the grown template being built under
        # <instances>/amiboot-check-*; for the others the run on the
        # instance disk), and the first debugfs run too.
        last = {}
        for step in all_steps:
            last[step.rsplit(' ', 1)[0]] = step
        last.pop('inspect')
        steps = [s for s in all_steps if s in last.values()]
        steps.insert(-1, [s for s in all_steps
                          if s.startswith('run:debugfs')][0])
        expected = base_digests(ref)
        small = self.scratch('small')
        os.makedirs(small)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=192m', 'tmpfs',
                        small], check=True)
        self.addCleanup(subprocess.run, ['umount', '-l', small])
        filler = os.path.join(small, 'filler')
        clear = recovered = partial = 0
        outcomes = []
        for step in steps:
            inst = os.path.join(small, 'instances')
            inst_uuid = str(uuid.uuid4())
            pid, rc, _out, err = self.drive(inst, ami, inst_uuid,
                                            AMIBOOT_FILL_AT=step,
                                            AMIBOOT_FILL_FILE=filler)
            self.assertTrue(os.path.exists(filler), step)
            lines = [line for line in err.splitlines()
                     if line.startswith('error: ')]
            self.assertNotIn('Traceback', err, step)
            if rc == 1:
                self.assertEqual(1, len(lines), err)
                self.assertTrue('No space left' in lines[0] or
                                'are free' in lines[0], lines[0])
                # Names the instance or the image part it was fetching.
                self.assertTrue(any(n in lines[0] for n in (
                    'fault-vm', ami.id, ami.kernel_id, ami.ramdisk_id)),
                    lines[0])
                self.assertFalse(os.path.exists(os.path.join(inst,
                                                             inst_uuid)))
                clear += 1
                outcomes.append('%s: %s' % (step, lines[0][7:90]))
            else:
                # Nothing needed more space after that step.
                self.assertEqual(0, rc, err)
                outcomes.append('%s: prepared' % step)
            # Nothing partial: complete, checked bases or none; whole
            # templates or none.
            for n, digest in base_digests(inst).items():
                if expected.get(n) != digest:
                    partial += 1
            self.assertTemplatesComplete(inst)
            self.assertEqual([], self.leftovers(inst, {pid}), step)
            os.unlink(filler)
            pid, rc, _out, err = self.drive(inst, ami, str(uuid.uuid4()))
            self.assertEqual(0, rc, "%s: %s" % (step, err))
            self.assertEqual([], self.leftovers(inst, {pid}), step)
            recovered += 1
            shutil.rmtree(inst)
        faults.figure('disk full (%d steps): clear errors %d, prepared '
                      'anyway %d, partial files %d, next boot after freeing '
                      'space ok %d'
                      % (len(steps), clear, len(steps) - clear, partial,
                         recovered))
        faults.figure('disk full outcomes: ' + '; '.join(outcomes))
        self.assertEqual(0, partial)
        self.assertEqual(len(steps), recovered)
        self.assertGreater(clear, len(steps) // 2)


class TestKillCli(test_cli.CliTestCase, FaultTestCase):
    """``amiboot boot`` killed at a subset of the steps, then run again.

    The core prepare is killed at every step above; here the same command
    is killed at a step of each phase and at the domain definition, which
    only the command has. The last retry waits for the guest to boot.
    """

    STEPS = ('download 1', 'run:qemu-img convert 1', 'attached 1',
             'run:debugfs 2', 'xml 1', 'define 1')

    def boot_cmd(self, name, *extra):
        return [AMIBOOT, '--state-dir', self.state, '--config-file',
                self.config, 'boot', name, '--image', 'tbq', '--flavor',
                'lab.small', '--key-file', self.key + '.pub', '--network',
                'none'] + list(extra)

    def test_kill_boot_then_boot_again(self):
        qcow = self.scratch('root.qcow2')
        self.run_cmd('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                     self.testbed['root'], qcow)
        tb = self.testbed
        self.json('image', 'import', 'tbq', '--kernel', tb['kernel'],
                  '--ramdisk', tb['ramdisk'], '--root', qcow,
                  '--root-format', 'qcow2')
        name = 'kill-%s' % uuid.uuid4().hex[:6]
        self.names.append(name)
        instances = os.path.join(self.state, 'instances')
        kills = recovered = 0
        leaked = []
        for i, step in enumerate(self.STEPS):
            if step.rsplit(' ', 1)[0] in FETCH_STEPS:
                # Uncached, for the fetch steps to happen (the others run
                # with the bases (and their facts) of the previous boot).
                self.amiboot('cache', 'clean', '--min-age', '0')
            daemons_before = base.live_processes('qemu-storage-daemon')
            p = subprocess.Popen(
                self.boot_cmd(name), env=hooked_env(AMIBOOT_KILL_AT=step),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                stdin=subprocess.DEVNULL)
            _out, err = p.communicate(timeout=300)
            self.assertEqual(-9, p.returncode, "%s: %s" % (step, err))
            kills += 1
            last = i == len(self.STEPS) - 1
            r = subprocess.Popen(
                self.boot_cmd(name, *(['--wait'] if last else [])),
                env=hooked_env(), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            out, err = r.communicate(timeout=600)
            self.assertEqual(0, r.returncode, "retry after %s: %s"
                             % (step, err))
            (inst,) = self.json('list')
            self.assertEqual(name, inst['name'])
            dirs = sorted(d for d in os.listdir(instances)
                          if d not in ('_base', 'locks'))
            self.assertEqual([inst['uuid']], dirs, step)
            dom = self.host.lookup('amiboot-' + name)
            self.assertEqual(inst['uuid'], dom.UUIDString())
            if last:
                self.assertIn(report.END, self.amiboot(
                    'console', name).stdout)
            self.assertLocksFree(instances)
            left = self.leftovers(instances, {p.pid, r.pid},
                                  daemons_before)
            if left:
                leaked.append((step, left))
            else:
                recovered += 1
            self.amiboot('delete', name)
        faults.figure('kill -9 (amiboot boot, %d steps, last retry booted '
                      'to its report): kills: %d, recovered: %d, '
                      'leaked: %d' % (len(self.STEPS), kills, recovered,
                                      len(leaked)))
        self.assertEqual([], leaked)
        self.assertEqual(kills, recovered)


class TestPartAgeing(FaultTestCase):
    """Temporary files of dead fetches go with the clean-up; live ones stay."""

    def test_clean_removes_parts_of_dead_fetches_only(self):
        ami, _aki, _ari = self.qcow2_triplet()
        inst = self.scratch('parts')
        pid, rc, _out, err = self.drive(inst, ami, str(uuid.uuid4()),
                                        AMIBOOT_KILL_AT='run:qemu-img '
                                                        'convert 1')
        self.assertEqual(-9, rc, err)
        c = cache_mod.ImageCache(inst, self.store, self.conf)
        dead = sorted(glob.glob(c.path_for(ami.id) + '.part*'))
        # The download, and the probe of its head being converted.
        self.assertEqual(['%s.part-%d' % (c.path_for(ami.id), pid)],
                         [d for d in dead if not d.endswith(('.raw',
                                                             '.head'))])
        # A fetch in progress elsewhere holds its base's lock.
        live = c.path_for('other-image') + '.part-1'
        open(live, 'w').close()
        with lockutils.lock(os.path.basename(c.path_for('other-image')),
                            lock_file_prefix=cache_mod.LOCK_PREFIX,
                            external=True, lock_path=c.lock_path):
            removed = subprocess.run(
                [sys.executable, '-c', 'import sys; '
                 'from tests.functional import cleaner; '
                 'from nova_amiboot import cache; '
                 'from nova_amiboot.local import store; '
                 'from tests.functional import base; '
                 'print(cache.ImageCache(sys.argv[1], store.LocalImageStore('
                 'sys.argv[2]), base.make_conf()).clean(min_age=3600))',
                 inst, self.store.path], cwd=TOP, env=hooked_env(),
                capture_output=True, text=True, check=True).stdout
        for d in dead:
            self.assertIn(d, removed)
            self.assertFalse(os.path.exists(d))
        self.assertTrue(os.path.exists(live))
        os.unlink(live)
