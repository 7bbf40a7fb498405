"""The sandbox every host tool on untrusted bytes runs in, for real.

Real bubblewrap, prlimit, setpriv and e2fsprogs; nothing is mocked. Each
limit is driven over by a real process and must end in a one-line
ToolLimitExceeded naming the image and the limit, with no process of the
tool user left; what a tool can see and do from inside is checked from
inside (the tool's own view of its uid, /, the network, the host's files).
The e2fsck memory bomb is crafted for real (an htree directory of an
ext3-layout filesystem with large_dir mapping one far logical block) and
goes through the whole prepare, as a tenant's AMI would.
"""

import os
import pwd
import shutil
import subprocess
import threading
import uuid

from nova_amiboot import exception
from nova_amiboot import sandbox
from nova_amiboot import spawn
from tests.functional import base

# The bomb's far logical block: e2fsck's pass 1 allocates ~48 bytes for
# every logical block of an indexed directory up to the last mapped one,
# 789,732 KiB resident here for this one, unsandboxed.
FAR_BLOCK = 16777216


def make_bomb(workdir):
    """A 4 MiB ext3 image whose indexed directory /d maps FAR_BLOCK."""
    tree = os.path.join(workdir, 'tree')
    os.makedirs(os.path.join(tree, 'd'))
    for i in range(120):
        open(os.path.join(tree, 'd', 'a-rather-long-file-name-%03d' % i),
             'w').close()
    img = os.path.join(workdir, 'bomb.img')
    with open(img, 'wb') as f:
        f.truncate(4 * 1024 * 1024)

    def run(*cmd, **kw):
        return subprocess.run(cmd, check=True, capture_output=True,
                              text=True, **kw).stdout

    run('mke2fs', '-q', '-t', 'ext3', '-b', '1024', '-O',
        'large_dir,dir_index', '-d', tree, '-F', img)
    # -D indexes /d (more than one block): an htree directory.
    subprocess.run(['e2fsck', '-fyD', img], capture_output=True)
    # A sparse file with one block at FAR_BLOCK lends /d its triple
    # indirect tree; then it goes.
    sparse = os.path.join(workdir, 'far')
    with open(sparse, 'wb') as f:
        f.seek(FAR_BLOCK * 1024)
        f.write(b'X' * 1024)
    run('debugfs', '-w', '-R', 'write %s /f' % sparse, img)
    stat = run('debugfs', '-R', 'stat /f', img)
    tind = stat.split('(TIND):', 1)[1].split(',', 1)[0].strip()
    run('debugfs', '-w', '-f', '-', img, input='sif /d block[TIND] %s\n'
        'sif /f block[TIND] 0\nrm /f\n' % tind)
    assert ('(%d)' % FAR_BLOCK) in run('debugfs', '-R', 'stat /d', img)
    return img


class TestLimits(base.RealToolsTestCase):
    """Each limit stops a real process: one line, the image, the limit."""

    def setUp(self):
        super().setUp()
        self.tool_before = set(base.tool_processes())
        self.addCleanup(self.assertNoToolProcess)

    def assertNoToolProcess(self):
        self.assertEqual([], [p for p in base.tool_processes()
                              if p not in self.tool_before])

    def assertOneLine(self, err, image, limit):
        msg = str(err)
        self.assertNotIn('\n', msg)
        self.assertIn(image, msg)
        self.assertIn(limit, msg)

    def test_wall_clock(self):
        # sleep uses no CPU: only the wall clock can stop it.
        with self.assertRaises(exception.ToolLimitExceeded) as cm:
            sandbox.run(['sleep', '60'], 'img-wall', timeout=2, cpu=60)
        self.assertOneLine(cm.exception, 'img-wall', 'fs_tool_timeout')
        self.assertIn('wall-clock', str(cm.exception))

    def test_cpu_time(self):
        with self.assertRaises(exception.ToolLimitExceeded) as cm:
            sandbox.run(['sh', '-c', 'while :; do :; done'], 'img-cpu',
                        timeout=60, cpu=1)
        self.assertOneLine(cm.exception, 'img-cpu', 'CPU time')

    def test_file_size(self):
        out = self.scratch('out')
        os.mkdir(out, 0o700)
        with self.assertRaises(exception.ToolLimitExceeded) as cm:
            sandbox.run(['dd', 'if=/dev/zero', 'of=%s/big' % out, 'bs=64k',
                         'count=64'], 'img-fsize', outdir=out,
                        file_size=1024 * 1024)
        self.assertOneLine(cm.exception, 'img-fsize', 'file size')
        # The output directory went back to root.
        self.assertEqual(0, os.stat(out).st_uid)

    def test_memory_bomb_e2fsck(self):
        img = make_bomb(self.scratch('bomb'))
        with self.assertRaises(exception.ToolLimitExceeded) as cm:
            sandbox.run(['e2fsck', '-fn', img], 'img-bomb', files=[img],
                        memory_mb=256)
        self.assertOneLine(cm.exception, 'img-bomb', 'tool_memory_mb')
        self.assertIn('256 MiB', str(cm.exception))

    def test_output_is_bounded(self):
        res = sandbox.run(['dd', 'if=/dev/zero', 'bs=64k', 'count=1000'],
                          'img-out', out_limit=65536)
        self.assertTrue(res.truncated)
        self.assertEqual(65536, len(res.out))


class TestIsolation(base.RealToolsTestCase):
    """What a tool sees from inside: asked of a shell in the sandbox."""

    def inside(self, script, **kw):
        return sandbox.run(['sh', '-c', script], 'img-iso', **kw).text

    def test_unprivileged_user(self):
        uid = pwd.getpwnam(sandbox.DEFAULT_USER).pw_uid
        # The user namespace maps the tool user onto itself; the host sees
        # the same uid (checked from /proc/<pid>/status of a sleeper).
        out = self.inside('id -u; grep -E "^(Uid|CapEff|NoNewPrivs)" '
                          '/proc/self/status')
        lines = out.split('\n')
        self.assertEqual(str(uid), lines[0])
        self.assertNotEqual('0', lines[0])
        self.assertIn('CapEff:\t0000000000000000', out)

    def test_no_host_files(self):
        out = self.inside(
            'ls / | tr "\\n" " "; echo; '
            'for p in /etc/shadow /etc/passwd /root /var/lib /home /work '
            '%s /run /var/run/libvirt; do [ -e $p ] && echo "seen $p"; '
            'done; ls -A /tmp | wc -l' % self.instances)
        top = set(out.split('\n')[0].split())
        self.assertEqual(set(), top - {'usr', 'bin', 'sbin', 'lib', 'lib32',
                                       'lib64', 'libx32', 'etc', 'proc',
                                       'dev', 'tmp'})
        self.assertNotIn('seen', out)
        self.assertEqual('0', out.split('\n')[-2].strip()
                         if out.endswith('\n') else out.split('\n')[-1])

    def test_no_network(self):
        out = self.inside('cat /proc/net/dev')
        ifaces = [line.split(':')[0].strip() for line in out.splitlines()
                  if ':' in line]
        self.assertEqual(['lo'], ifaces)

    def test_no_host_processes(self):
        out = self.inside('ls /proc | grep -c "^[0-9]"')
        # bwrap's init, the shell, ls and grep: nothing of the host.
        self.assertLess(int(out.strip()), 8)

    def test_inputs_read_only_outputs_private(self):
        src = self.scratch('input')
        with open(src, 'w') as f:
            f.write('tenant bytes\n')
        os.chmod(src, 0o644)
        out = self.scratch('outdir')
        os.mkdir(out, 0o700)
        res = sandbox.run(
            ['sh', '-c', 'cat "$1"; echo x >> "$1" && echo WROTE; '
             'echo made > "$2/new"; echo $?', 'sh', src, out],
            'img-io', files=[src], outdir=out)
        self.assertIn('tenant bytes', res.text)
        self.assertNotIn('WROTE', res.text)
        with open(src) as f:
            self.assertEqual('tenant bytes\n', f.read())
        with open(os.path.join(out, 'new')) as f:
            self.assertEqual('made\n', f.read())
        # The input is handed over as a descriptor: its host path is not
        # in the sandbox, nor is its directory.
        res = sandbox.run(['sh', '-c', '[ -e "$1" ] && echo SEEN; true',
                           'sh', os.path.dirname(src) + '/other'],
                          'img-io')
        self.assertNotIn('SEEN', res.text)

    def test_link_input_refused(self):
        link = self.scratch('link')
        os.symlink('/etc/shadow', link)
        with self.assertRaises(exception.UnsafeImage) as cm:
            sandbox.run(['cat', link], 'img-link', files=[link])
        self.assertIn('img-link', str(cm.exception))


class TestBombThroughPrepare(base.RealToolsTestCase):
    """The tenant's bomb AMI through the whole prepare of an instance."""

    def test_bomb_refused_nothing_left(self):
        img = make_bomb(self.scratch('bomb'))
        ami, _aki, _ari = self.add_triplet(root=img)
        before = set(base.tool_processes())
        cache = self.make_cache()
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='bomb-vm', image_id=ami.id,
            flavor=spawn.Flavor('t', 1, 256, 1),
            key='ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBomb bomb@amiboot')
        sandbox.reset_stats()
        with self.assertRaises(exception.ToolLimitExceeded) as cm:
            spawn.prepare(self.conf, cache, req, virt_type='qemu')
        msg = str(cm.exception)
        self.assertNotIn('\n', msg)
        self.assertIn(ami.id, msg)
        self.assertIn('tool_memory_mb = 512 MiB', msg)
        # e2fsck stopped well under what it takes unbounded.
        self.assertLess(sandbox.stats()['e2fsck']['peak_rss'],
                        600 * 1024 * 1024)
        self.assertEqual([], [p for p in base.tool_processes()
                              if p not in before])
        # No instance disk, no scratch overlay of the check.
        inst = os.path.join(self.instances, req.uuid)
        self.assertFalse(os.path.exists(os.path.join(inst, 'disk')))
        self.assertEqual([], [n for n in os.listdir(self.instances)
                              if n.startswith('amiboot-check-')])
        shutil.rmtree(inst, True)


class TestWhatToolsLeave(base.RealToolsTestCase):
    """Root never trusts what a sandboxed tool left or was handed."""

    def test_fifo_or_link_in_a_dump_dir_is_refused_not_waited_on(self):
        from nova_amiboot.imagetools import diskimage
        top = self.scratch('top')
        os.mkdir(top)
        why = []
        for kind in ('fifo', 'link'):
            src = self.scratch('left-' + kind)
            if kind == 'fifo':
                os.mkfifo(src)
            else:
                os.symlink('/etc/shadow', src)

            def fail(reason):
                why.append(reason)
                raise RuntimeError(reason)
            # Would block forever in open() on a fifo without O_NONBLOCK:
            # run aside, so that a hang is a failure, not a stuck suite.
            raised = []

            def place(src=src, kind=kind):
                try:
                    diskimage._place(src, top, '', 'f-' + kind, 0o644, 10,
                                     fail)
                except RuntimeError as e:
                    raised.append(e)
            t = threading.Thread(target=place, daemon=True)
            t.start()
            t.join(10)
            if t.is_alive():
                if kind == 'fifo':
                    # Unblock the open (a writer end) before failing.
                    os.close(os.open(src, os.O_WRONLY | os.O_NONBLOCK))
                self.fail("_place waited on a %s" % kind)
            self.assertEqual(1, len(raised), kind)
            self.assertFalse(os.path.exists(os.path.join(top, 'f-' + kind)))
        self.assertEqual(2, len(why))

    def test_read_only_block_device_stays_read_only(self):
        img = self.scratch('blk.img')
        with open(img, 'wb') as f:
            f.write(b'ORIGINAL' + bytes(1024 * 1024 - 8))
        dev = subprocess.run(['losetup', '-f', '--show', img], check=True,
                             capture_output=True, text=True).stdout.strip()
        self.addCleanup(subprocess.run, ['losetup', '-d', dev])
        before = os.stat(dev)
        with sandbox.Run('img-blk', sandbox.Limits(timeout=30)) as r:
            p = r.file(dev)
            res = r.execute(['sh', '-c', 'printf PWNED | dd of=%s '
                             'conv=notrunc status=none && echo WROTE' % p],
                            ok_codes=range(256))
        self.assertNotIn('WROTE', res.text)
        with open(img, 'rb') as f:
            self.assertEqual(b'ORIGINAL', f.read(8))
        after = os.stat(dev)
        self.assertEqual((before.st_uid, before.st_mode),
                         (after.st_uid, after.st_mode))
        # And it is writable again for root (BLKROSET undone).
        with open(dev, 'r+b') as f:
            f.write(b'ROOTOK!!')
        with open(img, 'rb') as f:
            self.assertEqual(b'ROOTOK!!', f.read(8))

    def test_tenant_words_are_not_a_limit(self):
        # An image's file name that reads like an allocation failure, on a
        # filesystem e2fsck finds errors in: a failure of e2fsck, not the
        # memory limit.
        tree = self.scratch('tree')
        os.makedirs(tree)
        open(os.path.join(tree, "Cannot allocate memory"), 'w').close()
        img = self.scratch('names.img')
        self.mkfs(tree, img, '8M')
        ino = self.run_cmd('debugfs', '-R', 'stat "/Cannot allocate memory"',
                           img).split()[1]
        self.run_cmd('debugfs', '-w', '-R', 'clri <%s>' % ino, img)
        with self.assertRaises(exception.CommandFailed) as cm:
            sandbox.run(['e2fsck', '-fn', img], 'img-words', files=[img])
        self.assertNotIsInstance(cm.exception, exception.ToolLimitExceeded)
        # Repaired (exit 1, accepted): no error at all.
        sandbox.run(['e2fsck', '-fy', img], 'img-words', write=[img],
                    ok_codes=(0, 1, 2))
