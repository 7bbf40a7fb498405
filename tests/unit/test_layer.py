"""The per-instance provisioning layer: validation and the archive."""

import base64
import os
import shutil
import stat
import tempfile
import unittest
from unittest import mock

from nova_amiboot import exception
from nova_amiboot import layer


def _key(ktype='ssh-ed25519', comment='alice@example'):
    blob = len(ktype).to_bytes(4, 'big') + ktype.encode() + \
        (32).to_bytes(4, 'big') + b'k' * 32
    line = '%s %s' % (ktype, base64.b64encode(blob).decode())
    return line + (' ' + comment if comment else '')


SHA512 = '$6$saltsalt$' + 'a' * 86
YESCRYPT = '$y$j9T$abcdefghijklmnop$' + 'B' * 43


def read_newc(data):
    """{name: (mode, uid, gid, mtime, bytes)} of a newc archive."""
    out, pos = {}, 0
    while True:
        hdr = data[pos:pos + 110]
        assert hdr[:6] == b'070701', hdr[:6]
        f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == 'TRAILER!!!':
            return out, pos
        out[name] = (f[1], f[2], f[3], f[5], body)


class SpecValidationTest(unittest.TestCase):

    def assertRefused(self, fragment, **kw):
        kw.setdefault('instance', 'inst-1')
        with self.assertRaises(exception.InvalidProvisionSpec) as cm:
            layer.Spec(**kw)
        msg = str(cm.exception)
        self.assertNotIn('\n', msg)
        self.assertTrue(msg.startswith('Instance %s: ' % kw['instance']) or
                        msg.startswith('Instance %r: ' % kw['instance'][:64]),
                        msg)
        self.assertIn(fragment, msg)
        return msg

    def test_good_spec(self):
        spec = layer.Spec(instance='inst-1', ssh_keys=[_key(), _key(
            'ssh-rsa', None)], hostname='web-01', password_hash=SHA512,
            user_data=b'#cloud-config\n', files=[('/etc/motd', b'hi\n')],
            grow=1)
        self.assertEqual(2, len(spec.ssh_keys))
        self.assertIs(True, spec.grow)
        layer.Spec(instance='x', password_hash=YESCRYPT)
        layer.Spec(instance='x', password_hash='$5$salt$' + 'c' * 43)

    def test_hostile_keys(self):
        for bad, why in [
                (_key() + '\nssh-rsa AAAA', 'one line'),
                ('ssh-dss ' + _key().split()[1], 'type'),
                ('ssh-ed25519 !!!notbase64', 'base64'),
                (_key('ssh-rsa').replace('ssh-rsa', 'ssh-ed25519', 1),
                 'not a ssh-ed25519 key'),
                (_key(comment='x; rm -rf /'), 'comment'),
                (_key(comment='a\x1b[2J'), 'comment'),
                ('command="/bin/sh" ' + _key(), 'type'),
                ('ssh-ed25519', "'<type> <base64>"),
                ('ssh-ed25519 ' + 'A' * 20000, 'over')]:
            self.assertRefused(why, ssh_keys=[bad])
        self.assertRefused('list', ssh_keys=_key())
        self.assertRefused('over the limit', ssh_keys=[_key()] * 17)

    def test_hostile_hostname(self):
        for bad in ('-lead', 'trail-', 'a' * 64, 'a.b', 'a b', '',
                    'x\n', 'x;reboot', '\u00e9t\u00e9'):
            self.assertRefused('RFC 1123', hostname=bad)

    def test_hostile_password_hash(self):
        for bad in ('plain', '$1$salt$abc', SHA512 + '\nroot2::0',
                    SHA512 + ':0:0', '$6$salt$short', '$6$a:b$' + 'a' * 86):
            self.assertRefused('crypt', password_hash=bad)

    def test_hostile_files(self):
        for path, why in [
                ('etc/x', 'absolute'), ('/etc/../root/x', 'normalized'),
                ('/etc//x', 'normalized'), ('/etc/./x', 'normalized'),
                ('/', 'normalized'), ('/etc/x\n', 'characters'),
                ('/etc/x\0', 'characters'), ('/etc/a b', 'characters'),
                ('/etc/$(reboot)', 'characters'), ('/' + 'a' * 300, 'over')]:
            self.assertRefused(why, files=[(path, b'')])
        self.assertRefused('bytes', files=[('/etc/x', 'text')])
        self.assertRefused('twice', files=[('/a', b''), ('/a', b'')])
        self.assertRefused('over the limit', files=[
            ('/f%d' % i, b'') for i in range(17)])
        self.assertRefused('over the limit', files=[
            ('/big', b'x' * (layer.MAX_FILE_SIZE + 1))])
        self.assertRefused('total', files=[
            ('/f%d' % i, b'x' * layer.MAX_FILE_SIZE) for i in range(5)])
        self.assertRefused('(path, content)', files=['/etc/x'])

    def test_user_data_and_instance(self):
        self.assertRefused('over the limit',
                           user_data=b'x' * (layer.MAX_USER_DATA + 1))
        self.assertRefused('bytes', user_data='text')
        self.assertRefused('instance id', instance='a/b\nc')
        self.assertRefused('instance id', instance='a' * 65)
        self.assertRefused('local-hostname', local_hostname=b'web')
        self.assertRefused('local-hostname', local_hostname='a' * 256)

    def test_seed_meta_data(self):
        def meta(**kw):
            spec = layer.Spec(instance='inst-1', user_data=b'', **kw)
            return spec.members()['seed/meta-data']
        # The full name, JSON-quoted: a hostile one adds no key or line.
        self.assertEqual(
            b'instance-id: "inst-1"\nlocal-hostname: "host\\nuser: evil"\n',
            meta(hostname='web', local_hostname='host\nuser: evil'))
        self.assertEqual(b'instance-id: "inst-1"\nlocal-hostname: '
                         b'"web.example.org"\n',
                         meta(hostname='web',
                              local_hostname='web.example.org'))
        self.assertEqual(b'instance-id: "inst-1"\nlocal-hostname: "web"\n',
                         meta(hostname='web'))
        self.assertEqual(b'instance-id: "inst-1"\nlocal-hostname: '
                         b'"inst-1"\n', meta())
        self.assertEqual(b'instance-id: "inst-1"\nlocal-hostname: '
                         b'"\\u00e9t\\u00e9"\n',
                         meta(local_hostname='\xe9t\xe9'))
        # No user data, no seed.
        self.assertNotIn('seed/meta-data', layer.Spec(
            instance='i', local_hostname='x').members())


class ArchiveTest(unittest.TestCase):

    def setUp(self):
        self.spec = layer.Spec(
            instance='inst-1', ssh_keys=[_key()], hostname='web-01',
            password_hash=SHA512, user_data=b'\x00\xffraw',
            files=[('/etc/b', b'B'), ('/etc/a', b'A\n')], grow=True)

    def test_members_and_format(self):
        data = layer.archive(self.spec)
        self.assertEqual(0, len(data) % 512)
        members, end = read_newc(data)
        self.assertEqual(b'\0' * (len(data) - end), data[end:])
        p = 'amiboot/provision/'
        self.assertEqual(b'1\n', members[p + 'version'][4])
        self.assertEqual(b'inst-1\n', members[p + 'instance-id'][4])
        self.assertEqual(b'1\n', members[p + 'grow'][4])
        self.assertEqual(b'web-01\n', members[p + 'hostname'][4])
        self.assertEqual((_key() + '\n').encode(), members[p + 'ssh-keys'][4])
        self.assertEqual((SHA512 + '\n').encode(),
                         members[p + 'password-hash'][4])
        self.assertEqual(b'\x00\xffraw', members[p + 'seed/user-data'][4])
        self.assertEqual(b'instance-id: "inst-1"\nlocal-hostname: "web-01"\n',
                         members[p + 'seed/meta-data'][4])
        self.assertEqual(b'/etc/b\n', members[p + 'files/0000/path'][4])
        self.assertEqual(b'B', members[p + 'files/0000/content'][4])
        self.assertEqual(b'/etc/a\n', members[p + 'files/0001/path'][4])
        names = list(members)
        self.assertEqual(sorted(names), names)
        for name, (mode, uid, gid, mtime, _body) in members.items():
            self.assertEqual((0, 0, layer.EPOCH), (uid, gid, mtime), name)
            self.assertTrue(name == 'amiboot' or name.startswith(p) or
                            name == p.rstrip('/'), name)
            self.assertIn(stat.S_IFMT(mode), (stat.S_IFDIR, stat.S_IFREG))

    def test_reproducible_and_minimal(self):
        self.assertEqual(layer.archive(self.spec), layer.archive(self.spec))
        members, _end = read_newc(layer.archive(layer.Spec(instance='i')))
        self.assertEqual(['amiboot', 'amiboot/provision',
                          'amiboot/provision/instance-id',
                          'amiboot/provision/version'], list(members))
        # Two instances never share a layer (nor its digest).
        self.assertNotEqual(layer.archive(layer.Spec(instance='i')),
                            layer.archive(layer.Spec(instance='j')))


class WriteInstanceRamdiskTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.ari = os.path.join(self.tmp, 'ari')
        with open(self.ari, 'wb') as f:
            f.write(b'\x1f\x8b' + b'z' * 1001)
        self.spec = layer.Spec(instance='inst-1', hostname='h', grow=True)

    def test_ari_padding_layer(self):
        dest = os.path.join(self.tmp, 'ramdisk')
        layer.write_instance_ramdisk(self.ari, dest, self.spec)
        with open(dest, 'rb') as f:
            data = f.read()
        self.assertEqual(b'\x1f\x8b' + b'z' * 1001, data[:1003])
        self.assertEqual(b'\0' * (1024 - 1003), data[1003:1024])
        self.assertEqual(layer.archive(self.spec), data[1024:])
        st = os.stat(dest)
        self.assertEqual(0o644, stat.S_IMODE(st.st_mode))
        self.assertEqual(os.getuid(), st.st_uid)
        self.assertEqual(['ari', 'ramdisk'], sorted(os.listdir(self.tmp)))

    def test_failure_leaves_nothing(self):
        dest = os.path.join(self.tmp, 'ramdisk')
        with mock.patch.object(os, 'fsync', side_effect=OSError('EIO')):
            self.assertRaises(OSError, layer.write_instance_ramdisk,
                              self.ari, dest, self.spec)
        self.assertEqual(['ari'], os.listdir(self.tmp))
        self.assertRaises(TypeError, layer.write_instance_ramdisk,
                          self.ari, dest, {'hostname': 'h'})
