"""Filesystem fuzzing of the full prepare (check, grow, inject).

The test bed AMI (shrunk to its minimum so that a case is cheap) is mutated
with a seeded generator: bit flips in the superblock, the group
descriptors, the inode table, directory blocks and the extent trees in the
inodes, and truncations; and crafted with debugfs, as an attacker would
(the classes of security round 3): a name given to entries in two blocks
of one directory, a directory or file extent moved to a huge logical
block, large or many extended attributes, the inline-data flag on files
with blocks, and a journal transaction (replayed at the guest's mount)
that overwrites the block of /root, where the key goes.

Each case goes through spawn.prepare() in this process with a key, a
hostname, a password and user data. Every case must end prepared or
refused with an AmibootException that names the instance or image; never
a hang (each tool runs under [amiboot] fs_tool_timeout), a traceback of
another kind, a touched host file or a leaked daemon, mount, sandboxed
process or temporary file; a case with a journal to replay that is
prepared must still hold the key after the replay (what the guest's
kernel does at mount).

CI runs AMIBOOT_FUZZ_CASES (default 200) cases from AMIBOOT_FUZZ_SEED; a
longer run by hand: AMIBOOT_FUZZ_CASES=5000 .venv/bin/python -m pytest -s
tests/functional/test_fuzz.py
"""

import collections
import glob
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid

from nova_amiboot import exception
from nova_amiboot import sandbox
from nova_amiboot import spawn
from tests.functional import base
from tests.functional import faults

CASES = int(os.environ.get('AMIBOOT_FUZZ_CASES', '200'))
SEED = int(os.environ.get('AMIBOOT_FUZZ_SEED', '8'))
KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuzz fuzz@amiboot'
# Host files a confused debugfs or a followed symlink would reach first.
WATCHED = ('/etc/shadow', '/etc/passwd', '/etc/hostname', '/etc/hosts',
           '/root/.ssh/authorized_keys')


def _digest(path):
    try:
        with open(path, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def _scratch_dirs():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), 'amiboot-*')))


class Layout(object):
    """Where the structures of the pristine image are.

    Read with e2fsprogs from our own, trusted copy.
    """

    def __init__(self, path):
        out = subprocess.run(['dumpe2fs', path], check=True,
                             capture_output=True, text=True).stdout
        field = dict(line.split(':', 1) for line in out.splitlines()
                     if ':' in line and not line.startswith(' '))
        self.block = int(field['Block size'])
        self.inode_size = int(field['Inode size'])
        self.size = os.path.getsize(path)
        self.inode_tables = [
            (int(a), int(b)) for a, b in
            re.findall(r'Inode table at (\d+)-(\d+)', out)]
        self.gdt_bytes = 64 * len(self.inode_tables)
        self.dirs, self.inodes = [], []
        for p in ('/', '/etc', '/root', '/bin', '/sbin', '/var/lib/cloud',
                  '/etc/shadow', '/etc/hostname', '/bin/busybox'):
            stat = self._debugfs(path, 'stat %s' % p)
            ino = int(re.search(r'Inode: (\d+)', stat).group(1))
            self.inodes.append(ino)
            if 'Type: directory' in stat:
                blocks = self._debugfs(path, 'blocks %s' % p).split()
                self.dirs += [int(b) for b in blocks]

        self.tables = {p: [int(b) for b in self._debugfs(
            path, 'blocks %s' % p).split()] for p in ('/root', '/etc/many')}

    def blocks_of(self, p):
        return self.tables[p]

    @staticmethod
    def _debugfs(path, cmd):
        return subprocess.run(['debugfs', '-R', cmd, path], check=True,
                              capture_output=True, text=True).stdout

    def inode_offset(self, ino):
        # All inodes asked about are in group 0.
        return self.inode_tables[0][0] * self.block + \
            (ino - 1) * self.inode_size


def _flip(data, start, length, rng, flips):
    for _ in range(flips):
        off = start + rng.randrange(length)
        if off < len(data):
            data[off] ^= 1 << rng.randrange(8)


CRAFTED = ('dup_name', 'far_extent', 'xattr', 'inline_data', 'journal')


def craft(path, layout, rng, scratch):
    """Make one crafted change to the image at ``path``; return its kind.

    Made with debugfs, as an attacker would make it.
    """
    kind = rng.choice(CRAFTED)
    if kind == 'dup_name':
        # /etc/many spans several blocks: give an entry of another block
        # the name of one in the first.
        blocks = layout.blocks_of('/etc/many')
        with open(path, 'r+b') as f:
            b = rng.choice(blocks[1:])
            f.seek(b * layout.block + 6)
            name = b'f-%03d' % rng.randrange(100)
            f.write(bytes([len(name)]))
            f.seek(b * layout.block + 8)
            f.write(name)
        return kind
    if kind == 'far_extent':
        # i_block[3]: the first extent's first logical block (a leaf in
        # the inode): moved far, up to the format's 2^32 - 1.
        target = rng.choice(('/etc', '/root', '/etc/many', '/etc/shadow'))
        far = rng.choice((2 ** 24, 2 ** 31, 2 ** 32 - 1,
                          rng.randrange(2 ** 20, 2 ** 32)))
        script = 'sif %s block[3] %d\n' % (target, far)
    elif kind == 'xattr':
        target = rng.choice(('/etc/shadow', '/root', '/etc', '/etc/hostname'))
        value = os.path.join(scratch, 'xattr')
        with open(value, 'wb') as f:
            f.write(bytes(rng.randrange(256) for _ in range(
                rng.choice((1, 100, 3000, 4000)))))
        script = ''.join('ea_set -f %s %s user.x%d\n' % (value, target, i)
                         for i in range(rng.choice((1, 2, 8))))
    elif kind == 'inline_data':
        target = rng.choice(('/etc/shadow', '/etc/hostname', '/root',
                             '/etc/passwd'))
        script = 'sif %s flags 0x10000000\n' % target
    else:
        garbage = os.path.join(scratch, 'journal-block')
        with open(garbage, 'wb') as f:
            f.write(bytes(rng.randrange(256) for _ in range(layout.block)))
        script = 'jo\njw -b %d %s\njc\n' % (
            rng.choice(layout.blocks_of('/root')), garbage)
    subprocess.run(['debugfs', '-w', '-f', '-', path], input=script,
                   text=True, capture_output=True, check=True)
    return kind


def mutate(pristine, layout, rng):
    """A mutated copy of ``pristine`` (bytes) and what was done."""
    data = bytearray(pristine)
    kinds = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(('superblock', 'group_desc', 'inode_table',
                           'directory', 'extent', 'truncate'))
        flips = rng.choice((1, 1, 2, 4, 16))
        if kind == 'superblock':
            _flip(data, 1024, 1024, rng, flips)
        elif kind == 'group_desc':
            _flip(data, layout.block, layout.gdt_bytes, rng, flips)
        elif kind == 'inode_table':
            ino = rng.choice(layout.inodes + list(range(1, 32)))
            _flip(data, layout.inode_offset(ino), layout.inode_size, rng,
                  flips)
        elif kind == 'directory':
            _flip(data, rng.choice(layout.dirs) * layout.block,
                  layout.block, rng, flips)
        elif kind == 'extent':
            # i_block (60 bytes at offset 40): the extent header and the
            # first extents, or a fast symlink's target.
            ino = rng.choice(layout.inodes)
            _flip(data, layout.inode_offset(ino) + 40, 60, rng, flips)
        else:
            del data[rng.randrange(len(data)):]
        kinds.append(kind)
    return bytes(data), kinds


class TestFuzz(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        # A hang shows as a timeout, long before CI's; an honest run still
        # fits (the whole prepare of this image takes well under a second).
        self.conf.set_override('fs_tool_timeout', 30, 'amiboot')
        self.conf.set_override('inject_password', True, 'amiboot')

    def pristine(self):
        img = self.scratch('pristine.img')
        shutil.copyfile(self.testbed['root'], img)
        # A directory of several blocks, for names repeated across blocks.
        many = self.scratch('many')
        os.mkdir(many)
        for i in range(300):
            open(os.path.join(many, 'f-%03d' % i), 'w').close()
        subprocess.run(['debugfs', '-w', '-f', '-', img], text=True,
                       check=True, capture_output=True, input='mkdir '
                       '/etc/many\n' + ''.join(
                           'write %s/f-%03d /etc/many/f-%03d\n' % (many, i, i)
                           for i in range(300)))
        self.run_cmd('e2fsck', '-fy', img)
        self.run_cmd('resize2fs', '-M', img)
        out = self.run_cmd('dumpe2fs', '-h', img)
        field = dict(line.split(':', 1) for line in out.splitlines()
                     if ':' in line)
        os.truncate(img, int(field['Block count'])
                    * int(field['Block size']))
        return img

    def test_fuzz_prepare(self):
        img = self.pristine()
        layout = Layout(img)
        with open(img, 'rb') as f:
            pristine = f.read()
        _ami, aki, ari = self.add_triplet(root=img)
        cache = self.make_cache()
        watched = {p: _digest(p) for p in WATCHED}
        scratch_before = _scratch_dirs()
        outcomes = collections.Counter()
        kinds_seen = collections.Counter()
        crashes, leaks, slowest = [], [], (0, None)
        t_start = time.monotonic()
        sandbox.reset_stats()
        journal_lost = []
        for case in range(CASES):
            rng = random.Random(SEED * 1000003 + case)
            case_img = self.scratch('case.img')
            if rng.random() < 0.4:
                with open(case_img, 'wb') as f:
                    f.write(pristine)
                kinds = [craft(case_img, layout, rng, self.instances)]
            else:
                data, kinds = mutate(pristine, layout, rng)
                with open(case_img, 'wb') as f:
                    f.write(data)
            kinds_seen.update(kinds)
            # Sometimes nothing is grown: nothing else checks the disk
            # before writing (a journal to replay must still be).
            self.conf.set_override('grow_filesystem', rng.random() < 0.75,
                                   'amiboot')
            ami = self.store.add('fuzz-%d' % case, case_img, 'ami',
                                 {'kernel_id': aki.id,
                                  'ramdisk_id': ari.id})
            req = spawn.InstanceRequest(
                uuid=str(uuid.uuid4()), name='fuzz-%d' % case,
                image_id=ami.id, flavor=spawn.Flavor('t', 1, 256, 1),
                key=KEY, hostname='fuzz-%d' % case, password='s3cret',
                user_data=b'#cloud-config\n')
            t = time.monotonic()
            try:
                spawn.prepare(self.conf, cache, req, virt_type='qemu')
                outcomes['prepared'] += 1
                if 'journal' in kinds and not self.key_survives_replay(
                        req.uuid):
                    journal_lost.append(case)
            except exception.AmibootException as e:
                msg = str(e)
                if isinstance(e, exception.CommandTimeout) or \
                        'did not finish within' in msg:
                    outcomes['timeout'] += 1
                else:
                    outcomes['refused: %s' % type(e).__name__] += 1
                if '\n' in msg.strip() or not (
                        req.name in msg or ami.id in msg or
                        req.uuid in msg):
                    crashes.append((case, kinds, 'unclear error: %r'
                                    % msg[:300]))
            except Exception as e:   # noqa: B902 - what the fuzzer hunts
                crashes.append((case, kinds, '%s: %s'
                                % (type(e).__name__, e)))
            took = time.monotonic() - t
            if took > slowest[0]:
                slowest = (took, case)
            leaked = self.leaks(scratch_before)
            if leaked:
                leaks.append((case, kinds, leaked))
            shutil.rmtree(os.path.join(self.instances, req.uuid), True)
            os.unlink(cache.path_for(ami.id)) \
                if os.path.exists(cache.path_for(ami.id)) else None
            self.store.delete(ami.id)
        touched = [p for p, d in watched.items() if _digest(p) != d]
        tools = sandbox.stats()
        peak = max(tools.items(), key=lambda kv: kv[1]['peak_rss'])
        longest = max(tools.items(), key=lambda kv: kv[1]['longest'])
        refused = sum(v for k, v in outcomes.items()
                      if k.startswith('refused'))
        faults.figure(
            'fuzz: cases %d (seed %d, %.0fs), prepared %d, refused %d, '
            'timeouts %d, crashes %d, leaks %d, host files touched %d, '
            'keys lost to a journal replay %d; slowest case %.2fs; '
            'peak tool RSS %d KiB (%s), longest tool run %.2fs (%s); '
            'mutations %s; refusals %s'
            % (CASES, SEED, time.monotonic() - t_start,
               outcomes['prepared'], refused, outcomes['timeout'],
               len(crashes), len(leaks), len(touched), len(journal_lost),
               slowest[0], peak[1]['peak_rss'] // 1024, peak[0],
               longest[1]['longest'], longest[0],
               dict(kinds_seen),
               {k[9:]: v for k, v in outcomes.items()
                if k.startswith('refused')}))
        self.assertEqual([], crashes)
        self.assertEqual([], leaks)
        self.assertEqual([], touched)
        self.assertEqual([], journal_lost)
        self.assertEqual(CASES, sum(outcomes.values()))
        # Each crafted class was tried.
        self.assertEqual(set(CRAFTED), set(CRAFTED) & set(kinds_seen))
        # The fuzzer reaches both ends.
        self.assertGreater(outcomes['prepared'], 0)
        self.assertGreater(refused, 0)

    def key_survives_replay(self, uuid_):
        """Whether the key is in the guest's view after a journal replay.

        A raw copy of the prepared disk, e2fsck -fy (which replays the
        journal as the guest's kernel does at mount), then the file read
        back.
        """
        disk = os.path.join(self.instances, uuid_, 'disk')
        copy = self.scratch('replayed.img')
        self.run_cmd('qemu-img', 'convert', '-q', '-U', '-f', 'qcow2', '-O',
                     'raw', disk, copy)
        try:
            subprocess.run(['e2fsck', '-fy', copy], capture_output=True)
            keys = subprocess.run(
                ['debugfs', '-R', 'cat /root/.ssh/authorized_keys', copy],
                capture_output=True, text=True).stdout
            return KEY in keys
        finally:
            os.unlink(copy)

    def leaks(self, scratch_before):
        found = []
        tools = base.tool_processes()
        if tools:
            found.append('sandboxed processes %s' % tools)
        daemons = faults.processes_mentioning('qemu-storage-daemon',
                                              self.instances)
        if daemons:
            found.append('qemu-storage-daemon %s' % daemons)
        # Scratch dirs in /tmp (exports) and in the instances dir (base
        # checks, grown template builds).
        mine = [d for d in (_scratch_dirs() - scratch_before) | set(
                glob.glob(os.path.join(self.instances, 'amiboot-check-*')))
                if faults.owner_pid(d) == os.getpid()]
        if mine:
            found.append('scratch dirs %s' % mine)
        parts = [n for n in self.base_dir_entries() if '.part' in n]
        tdir = os.path.join(self.instances, '_base', 'amiboot-grown')
        if os.path.isdir(tdir):
            parts += [n for n in os.listdir(tdir) if '.part' in n]
        if parts:
            found.append('partial files %s' % parts)
        return found


class TestJournalReplay(base.RealToolsTestCase):
    """A journal left to replay cannot undo what the prepare wrote.

    The image's journal holds a valid transaction that rewrites the block
    of /root with its own pristine copy (no .ssh). Without a check before
    writing, the guest's kernel replays it at mount and the key's
    directory entry is gone. Grow is off, so nothing else runs e2fsck.
    """

    def test_key_survives_the_replay(self):
        self.conf.set_override('grow_filesystem', False, 'amiboot')
        img = self.scratch('journal.img')
        shutil.copyfile(self.testbed['root'], img)
        block = int(self.run_cmd('debugfs', '-R', 'blocks /root',
                                 img).split()[0])
        copy = self.scratch('root-block')
        with open(img, 'rb') as f, open(copy, 'wb') as out:
            f.seek(block * 4096)
            out.write(f.read(4096))
        subprocess.run(['debugfs', '-w', '-f', '-', img], text=True,
                       check=True, capture_output=True,
                       input='jo\njw -b %d %s\njc\n' % (block, copy))
        self.assertIn('needs_recovery', self.run_cmd('dumpe2fs', '-h', img))
        ami, _aki, _ari = self.add_triplet(root=img)
        req = spawn.InstanceRequest(
            uuid=str(uuid.uuid4()), name='journal-vm', image_id=ami.id,
            flavor=spawn.Flavor('t', 1, 256, 1), key=KEY)
        spawn.prepare(self.conf, self.make_cache(), req, virt_type='qemu')
        self.assertTrue(TestFuzz.key_survives_replay(self, req.uuid))
