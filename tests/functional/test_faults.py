"""Faults to survive: kill -9 at every step, concurrent boots against the
cache cleaner, a full disk at every step.

Each prints its figure (see faults.figure). Processes, not threads: the
spawns run in processes of their own (faultdriver, the amiboot command),
killed by the test-only fault hook in tests/functional/faulthook (a
sitecustomize on their PYTHONPATH; production code has no hook).
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from oslo_concurrency import lockutils

from nova_amiboot import cache as cache_mod
from tests.functional import base
from tests.functional import faults

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HOOK = os.path.join(TOP, 'tests', 'functional', 'faulthook')
AMIBOOT = os.path.join(os.path.dirname(sys.executable), 'amiboot')
FETCH_STEPS = ('download', 'inspect', 'run:qemu-img info',
               'run:qemu-img convert')
TOOLS = ('qemu-storage-daemon', 'qemu-img', 'e2fsck', 'resize2fs',
         'debugfs', 'blkid', 'fusermount3')


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def hooked_env(**env):
    out = dict(os.environ)
    out['PYTHONPATH'] = os.pathsep.join(
        [HOOK, TOP] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    out.pop('AMIBOOT_KILL_AT', None)
    out.pop('AMIBOOT_FAULT_LOG', None)
    out.update(env)
    return out


class FaultTestCase(base.RealToolsTestCase):

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
        return found

    def assertLocksFree(self, instances):
        for name in os.listdir(os.path.join(instances, '_base')):
            with lockutils.lock(name, lock_file_prefix=cache_mod.LOCK_PREFIX,
                                external=True, blocking=False,
                                lock_path=os.path.join(instances, 'locks')):
                pass


class TestKill(FaultTestCase):
    """kill -9 at every step of the pipeline, then the same boot again."""

    def drive(self, instances, ami, inst_uuid, **env):
        p = subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.faultdriver',
             instances, self.store.path, ami.id, inst_uuid],
            cwd=TOP, env=hooked_env(**env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=300)
        return p.pid, p.returncode, out, err

    def test_kill_prepare_at_every_step(self):
        ami, _aki, _ari = self.qcow2_triplet()
        ref = self.scratch('ref')
        log = self.scratch('steps.log')
        _pid, rc, _out, err = self.drive(ref, ami, str(uuid.uuid4()),
                                         AMIBOOT_FAULT_LOG=log)
        self.assertEqual(0, rc, err)
        with open(log) as f:
            steps = f.read().splitlines()
        names = {s.rsplit(' ', 1)[0] for s in steps}
        for needed in ('download', 'inspect', 'run:qemu-img info',
                       'run:qemu-img convert', 'run:qemu-img create',
                       'run:qemu-storage-daemon', 'attached', 'run:e2fsck',
                       'run:resize2fs', 'run:debugfs', 'xml'):
            self.assertIn(needed, names)
        expected = {n: _sha256(os.path.join(ref, '_base', n))
                    for n in os.listdir(os.path.join(ref, '_base'))}
        kills = recovered = 0
        leaked = []
        for step in steps:
            inst = self.scratch('kill-%d' % kills)
            inst_uuid = str(uuid.uuid4())
            if step.split()[0] not in FETCH_STEPS:
                # Past the fetch, a spawn finds the bases there; copies
                # (without the reference run's xattrs) save a download and
                # conversion per step and keep the step numbering.
                os.makedirs(os.path.join(inst, '_base'))
                for n in expected:
                    shutil.copyfile(os.path.join(ref, '_base', n),
                                    os.path.join(inst, '_base', n))
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
            base_now = {n: _sha256(os.path.join(inst, '_base', n))
                        for n in os.listdir(os.path.join(inst, '_base'))}
            self.assertEqual(expected, base_now, step)
            self.assertLocksFree(inst)
            self.run_cmd('qemu-img', 'check', '-q', '-f', 'qcow2',
                         out.strip())
            left = self.leftovers(inst, {pid, rpid}, daemons_before)
            if left:
                leaked.append((step, left))
            else:
                recovered += 1
            shutil.rmtree(inst)
        shutil.rmtree(ref)
        faults.figure('kill -9 (core prepare, %d steps): kills: %d, '
                      'recovered: %d, leaked: %d'
                      % (len(steps), kills, recovered, len(leaked)))
        self.maxDiff = None
        self.assertEqual([], leaked)
        self.assertEqual(kills, recovered)
