"""First-boot provisioning in the guest (issue 18), checked from inside.

For each root filesystem (ext4, XFS, btrfs): the project's ARI (from the
Debian cloud kernel of the test bed) followed by a per-instance layer
(key, hostname, password hash, NoCloud seed, a file, grow), a qcow2
overlay at 1 GiB over the small reporting AMI; booted with libvirt, the
AMI's init reports what it finds. A second boot of the same disk applies
nothing again (the layer's digest, kept in the guest, says it was); the
overlay then grows to 3 GiB and the next boot grows the root to it; a new
layer (another key) is applied. The guest-side cost, seconds from the kernel's
"Run /init" to switch_root, is printed for the 1 -> 3 GiB boot.

A hostile AMI whose /root/.ssh, /etc/hostname, seed directory and an
injected file's directory are links (inside the guest, or out of it)
gets none of them followed: the targets are reported untouched.
"""

import base64
import dataclasses
import os
import re
import subprocess
import sys
import unittest
import uuid

from nova_amiboot import guest
from nova_amiboot import inject
from nova_amiboot import layer
from tests.testbed import boot
from tests.testbed import build

GiB = 1 << 30
MiB = 1 << 20
# What df does not count of a grown root, at most: ext4 and btrfs a few
# per cent; XFS its internal log too, sized by mkfs for the small AMI
# (64 MiB) and not grown with the data section.
OVERHEAD = {'ext4': lambda size: 0.05 * size,
            'btrfs': lambda size: 0.05 * size,
            'xfs': lambda size: 0.03 * size + 64 * MiB}
HASH = '$6$amibootsalt$' + 'Q' * 86
INJECTED = '/etc/amiboot-test/injected.txt'
STAMP = '/var/lib/amiboot/provisioned'
# Guest-side seconds "Run /init" -> switch_root, by (fs, boot), printed.
TIMES = {}


def _key(n=0):
    blob = b'\0\0\0\x0bssh-ed25519\0\0\0\x20' + bytes([n]) * 32
    return 'ssh-ed25519 %s amiboot-test' % base64.b64encode(blob).decode()


def guest_seconds(text):
    """Seconds from "Run /init" to the ARI's switch_root line."""
    run = re.search(r'\[\s*([0-9.]+)\] Run /init as init process', text)
    sw = re.search(r'amiboot-ari: switch_root at ([0-9.]+) s', text)
    if not (run and sw):
        return None
    return float(sw.group(1)) - float(run.group(1))


# The digest the ARI keeps in the guest once it applied the layer.
layer_digest = layer.digest


def ari_lines(text):
    return [line.strip() for line in text.splitlines()
            if line.startswith('amiboot-ari: ')]


class GuestBootCase(unittest.TestCase):
    """The test bed and a libvirt connection, for tests that boot it."""

    @classmethod
    def setUpClass(cls):
        cls.testbed = build.build()
        cls.host = guest.Host()

    @classmethod
    def tearDownClass(cls):
        cls.host.close()


class ProvisionGuestTest(GuestBootCase):

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        if TIMES:
            print('\nguest-side seconds, "Run /init" to switch_root:',
                  file=sys.stderr)
            for (fs, what), secs in sorted(TIMES.items()):
                print('  %-6s %-22s %.2f s' % (fs, what, secs),
                      file=sys.stderr)

    def _boot(self, d, ramdisk, disk, report=(),
              consoles='console=tty0 console=ttyS0'):
        log = os.path.join(d, 'console.log')
        if os.path.exists(log):
            os.unlink(log)
        cmdline = 'root=/dev/vda %s ro' % consoles
        if report:
            cmdline += ' amiboot.report=' + ','.join(report)
        name = 'amiboot-test-%s' % uuid.uuid4().hex[:8]
        rep, text = boot.boot(self.host, name, self.testbed['kernel'],
                              ramdisk, disk, d, cmdline)
        self.assertIsNone(self.host.lookup(name))
        return rep, text

    def _check_provisioned(self, fs, rep, text, disk_bytes):
        self.assertEqual(fs, rep['root_dev'].split()[1])
        # The command line said ro: the guest gets its root read-only.
        self.assertIn('ro', rep['root_dev'].split()[2].split(','))
        self.assertEqual(disk_bytes, int(rep['disk_bytes']))
        total_kb = int(rep['root_df_kb'].split()[0])
        # Grown to the device: an ungrown root (32-300 MiB) fails here.
        self.assertGreater(total_kb * 1024,
                           disk_bytes - OVERHEAD[fs](disk_bytes), text)
        self.assertLessEqual(total_kb * 1024, disk_bytes)
        self.assertEqual('700 0 0 directory', rep['ssh_dir'])
        self.assertEqual('600 0 0 regular file', rep['authorized_keys_stat'])
        self.assertEqual('%s\n%s\n' % (inject.KEY_MARKER, _key()),
                         rep['authorized_keys'])
        self.assertEqual('provtest', rep['hostname'])
        self.assertEqual('provtest\n', rep['etc_hostname'])
        self.assertEqual('root:%s:19000:0:99999:7:::\n' % HASH,
                         rep['shadow_root'])
        self.assertEqual('#cloud-config\nhostname: provtest\n',
                         rep['user_data'])
        self.assertEqual('instance-id: "inst-%s"\nlocal-hostname: '
                         '"provtest"\n' % fs, rep['meta_data'])
        self.assertEqual('644 0 0 regular file', rep['stat:' + INJECTED])
        self.assertEqual('injected by the layer\n', rep['file:' + INJECTED])
        self.assertFalse([x for x in ari_lines(text)
                          if 'cannot' in x or 'refusing' in x], text)

    def _provision(self, fs):
        spec = layer.Spec(
            instance='inst-' + fs, ssh_keys=[_key()], hostname='provtest',
            password_hash=HASH,
            user_data=b'#cloud-config\nhostname: provtest\n',
            files=[(INJECTED, b'injected by the layer\n')], grow=True)
        with boot.instance_dir() as d:
            ramdisk = layer.write_instance_ramdisk(
                self.testbed['ramdisk'], os.path.join(d, 'ramdisk'), spec)
            disk = boot.overlay(self.testbed['roots'][fs],
                                os.path.join(d, 'disk'), 1)
            digest = layer_digest(spec)
            report = [INJECTED, STAMP]
            rep, text = self._boot(d, ramdisk, disk, report)
            self._check_provisioned(fs, rep, text, GiB)
            lines = ari_lines(text)
            self.assertTrue(any(re.match(
                r'amiboot-ari: grew / from [0-9]+ MiB to [0-9.]+ [MG]iB '
                r'\(%s\) in [0-9.]+ s$' % fs, x)
                for x in lines), text)
            self.assertIn('amiboot-ari: layer %s applied' % digest[:12],
                          lines)
            # The layer's digest, kept in the guest: as the host computes.
            self.assertEqual('600 0 0 regular file', rep['stat:' + STAMP])
            self.assertEqual(digest + '\n', rep['file:' + STAMP])
            TIMES[fs, 'first boot, to 1 GiB'] = guest_seconds(text)

            # Again: the layer is not applied twice (what the tenant
            # changed stays changed); the files are as they were. The
            # serial console is not the last console= this time (as
            # under nova, whose last is hvc0): the ARI's lines are on
            # it all the same.
            rep, text = self._boot(d, ramdisk, disk, report,
                                   consoles='console=ttyS0 console=tty0')
            self._check_provisioned(fs, rep, text, GiB)
            lines = ari_lines(text)
            self.assertIn('amiboot-ari: layer %s applied already'
                          % digest[:12], lines)
            self.assertFalse([x for x in lines if 'ssh keys' in x or
                              'hostname' in x or 'written' in x], text)
            TIMES[fs, 'second boot, 1 GiB'] = guest_seconds(text)

            # A bigger disk (a resize): the next boot grows the root.
            subprocess.run(['qemu-img', 'resize', '-q', disk, '3G'],
                           check=True)
            rep, text = self._boot(d, ramdisk, disk, report)
            self._check_provisioned(fs, rep, text, 3 * GiB)
            lines = ari_lines(text)
            self.assertTrue(any(re.match(
                r'amiboot-ari: grew / from [0-9.]+ [MG]iB to [23]\.[0-9] GiB '
                r'\(%s\)' % fs, x) for x in lines), text)
            self.assertIn('amiboot-ari: layer %s applied already'
                          % digest[:12], lines)
            TIMES[fs, 'grow 1 -> 3 GiB'] = guest_seconds(text)
            print('\n'.join(lines), file=sys.stderr)

            # A new layer (a rebuild with another key) is applied.
            spec2 = dataclasses.replace(spec, ssh_keys=[_key(), _key(2)])
            layer.write_instance_ramdisk(self.testbed['ramdisk'], ramdisk,
                                         spec2)
            rep, text = self._boot(d, ramdisk, disk, report)
            self.assertIn('amiboot-ari: ssh keys in /root/.ssh/'
                          'authorized_keys: 1 added, 1 already there',
                          '\n'.join(ari_lines(text)))
            self.assertEqual(layer_digest(spec2) + '\n',
                             rep['file:' + STAMP])
            self.assertTrue(any(re.match(
                r'amiboot-ari: / fills its device already: [23]\.[0-9] GiB '
                r'\(%s\)' % fs, x) for x in ari_lines(text)), text)
            TIMES[fs, 'new layer, 3 GiB'] = guest_seconds(text)

    def test_ext4(self):
        self._provision('ext4')

    def test_xfs(self):
        self._provision('xfs')

    def test_btrfs(self):
        self._provision('btrfs')

    def test_links_are_not_followed(self):
        def plant(tree):
            os.makedirs(os.path.join(tree, 'etc/sshvictim'))
            with open(os.path.join(tree, 'etc/sshvictim/authorized_keys'),
                      'w') as f:
                f.write('untouched\n')
            # Inside the guest, relative; out of the root from the ARI's
            # view, absolute.
            os.symlink('../etc/sshvictim', os.path.join(tree, 'root/.ssh'))
            os.unlink(os.path.join(tree, 'etc/hostname'))
            with open(os.path.join(tree, 'etc/hostvictim'), 'w') as f:
                f.write('victim\n')
            os.symlink('/etc/hostvictim', os.path.join(tree, 'etc/hostname'))
            os.makedirs(os.path.join(tree, 'opt'))
            os.symlink('../../../etc', os.path.join(tree, 'opt/link'))
            os.rmdir(os.path.join(tree, 'var/lib/cloud'))
            os.makedirs(os.path.join(tree, 'etc/cloudvictim'))
            os.symlink('../../etc/cloudvictim',
                       os.path.join(tree, 'var/lib/cloud'))

        spec = layer.Spec(instance='hostile', ssh_keys=[_key(1)],
                          hostname='provtest', password_hash=HASH,
                          user_data=b'#cloud-config\n',
                          files=[('/opt/link/injected', b'x\n')], grow=True)
        report = ['/root/.ssh', '/etc/sshvictim/authorized_keys',
                  '/etc/hostname', '/etc/hostvictim', '/etc/injected',
                  '/opt/link', '/etc/cloudvictim/seed']
        with boot.instance_dir() as d:
            ami = os.path.join(d, 'hostile.img')
            build.build_ami(ami, fstype='ext4', customize=plant)
            ramdisk = layer.write_instance_ramdisk(
                self.testbed['ramdisk'], os.path.join(d, 'ramdisk'), spec)
            disk = boot.overlay(ami, os.path.join(d, 'disk'), 1)
            rep, text = self._boot(d, ramdisk, disk, report)
        lines = '\n'.join(ari_lines(text))
        self.assertEqual('777 0 0 symbolic link', rep['stat:/root/.ssh'])
        self.assertEqual('untouched\n',
                         rep['file:/etc/sshvictim/authorized_keys'])
        self.assertEqual('777 0 0 symbolic link', rep['stat:/etc/hostname'])
        self.assertEqual('victim\n', rep['file:/etc/hostvictim'])
        self.assertEqual('', rep['stat:/etc/injected'])
        self.assertEqual('', rep['stat:/etc/cloudvictim/seed'])
        for msg in ('refusing /root/.ssh/authorized_keys: /root/.ssh is a '
                    'symbolic link',
                    'refusing /etc/hostname: it is a symbolic link',
                    'refusing /opt/link/injected: /opt/link is a symbolic '
                    'link',
                    'refusing /var/lib/cloud/seed/nocloud/meta-data: '
                    '/var/lib/cloud is a symbolic link'):
            self.assertIn('amiboot-ari: ' + msg, lines)
        self.assertIn('amiboot-ari: layer %s applied in part; again at '
                      'the next boot' % layer_digest(spec)[:12], lines)
        # What is not behind a link is still done, and the guest boots.
        self.assertEqual('root:%s:19000:0:99999:7:::\n' % HASH,
                         rep['shadow_root'])
        self.assertIn('amiboot-ari: grew / from 27 MiB to 1016 MiB (ext4)',
                      lines)
