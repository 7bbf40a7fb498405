"""Where an instance is provisioned: [amiboot] provision and the image."""

import base64
import os
import tempfile
import unittest
from unittest import mock

from oslo_config import cfg

from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot import exception
from nova_amiboot import images
from nova_amiboot import layer
from nova_amiboot import spawn


def _conf(**overrides):
    conf = cfg.ConfigOpts()
    amiboot_conf.register_opts(conf)
    conf([], project='nova-amiboot-tests', default_config_files=[])
    for k, v in overrides.items():
        conf.set_override(k, v, group='amiboot')
    return conf


def _meta(image_id, name=None, **props):
    return images.ImageMeta(id=image_id, name=name or image_id,
                            disk_format='ami', container_format='ami',
                            size=1, properties=props)


def _key():
    blob = b'\0\0\0\x0bssh-ed25519\0\0\0\x20' + b'k' * 32
    return 'ssh-ed25519 %s me@host' % base64.b64encode(blob).decode()


GUEST = {'amiboot_provision': 'guest'}
HOST = {'amiboot_provision': 'host'}


class ProvisionModeTest(unittest.TestCase):

    def mode(self, setting, ami_props=None, ari_props=None, ari=True):
        ami = _meta('ami-1', 'my-ami', ramdisk_id='ari-1',
                    **(ami_props or {}))
        ramdisk = _meta('ari-1', 'my-ari', **(ari_props or {})) \
            if ari else None
        return spawn.provision_mode(_conf(provision=setting), ami, ramdisk,
                                    instance='vm1')

    def test_default_is_auto(self):
        self.assertEqual('auto', _conf().amiboot.provision)

    def test_auto(self):
        self.assertEqual('host', self.mode('auto'))
        self.assertEqual('host', self.mode('auto', ari=False))
        self.assertEqual('guest', self.mode('auto', ari_props=GUEST))
        self.assertEqual('guest', self.mode('auto', ami_props=GUEST))
        self.assertEqual('host', self.mode('auto', ami_props=HOST))
        # The AMI's own declaration wins over its ARI's.
        self.assertEqual('host', self.mode('auto', ami_props=HOST,
                                           ari_props=GUEST))
        self.assertEqual('guest', self.mode('auto', ami_props=GUEST,
                                            ari_props=HOST))

    def test_host_is_forced(self):
        for props in ({}, GUEST, HOST):
            self.assertEqual('host', self.mode('host', ami_props=props,
                                               ari_props=props))
        # Even a bad declaration: host mode does not read it.
        self.assertEqual('host', self.mode(
            'host', ami_props={'amiboot_provision': 'yes'}))

    def test_guest_when_declared(self):
        self.assertEqual('guest', self.mode('guest', ari_props=GUEST))
        self.assertEqual('guest', self.mode('guest', ami_props=GUEST))

    def test_guest_refuses_undeclared(self):
        for kw in ({}, {'ari': False}, {'ami_props': HOST},
                   {'ami_props': HOST, 'ari_props': GUEST},
                   {'ari_props': HOST}):
            with self.assertRaises(exception.GuestProvisionNotDeclared) as cm:
                self.mode('guest', **kw)
            msg = str(cm.exception)
            self.assertNotIn('\n', msg)
            self.assertTrue(msg.startswith(
                'Instance vm1: [amiboot] provision = guest, but image '
                'my-ami (ami-1) does not declare guest provisioning'), msg)
            self.assertIn('amiboot_provision=guest', msg)
            self.assertIsInstance(cm.exception, exception.InvalidImage)

    def test_bad_declaration(self):
        for where in ('ami_props', 'ari_props'):
            with self.assertRaises(exception.InvalidImage) as cm:
                self.mode('auto', **{where: {'amiboot_provision': 'Guest'}})
            image = 'my-ami (ami-1)' if where == 'ami_props' \
                else 'my-ari (ari-1)'
            self.assertEqual(
                "Image %s cannot be used: property amiboot_provision=Guest "
                "is not one of guest, host" % image, str(cm.exception))

    def test_option_choices(self):
        conf = _conf()
        self.assertRaises(ValueError, conf.set_override, 'provision',
                          'both', group='amiboot')

    def test_ramdisk_meta(self):
        source = mock.Mock()
        self.assertIsNone(spawn.ramdisk_meta(source, _meta('ami-1')))
        source.get_meta.assert_not_called()
        ami = _meta('ami-1', ramdisk_id='ari-1')
        self.assertIs(source.get_meta.return_value,
                      spawn.ramdisk_meta(source, ami))
        source.get_meta.assert_called_once_with('ari-1')


class ProvisionSpecTest(unittest.TestCase):

    def req(self, **kw):
        kw.setdefault('uuid', '0f0e0d0c-0b0a-4908-8706-050403020100')
        kw.setdefault('name', 'vm1')
        kw.setdefault('image_id', 'ami-1')
        kw.setdefault('flavor', spawn.Flavor('f', 1, 256, 1))
        return spawn.InstanceRequest(**kw)

    def test_what_goes_in(self):
        spec = spawn.provision_spec(
            self.req(key=_key(), hostname='vm1.example.org',
                     user_data=b'#cloud-config\n', password='secret'),
            _conf(), files=[('/etc/motd', b'hi\n')])
        self.assertEqual('0f0e0d0c-0b0a-4908-8706-050403020100',
                         spec.instance)
        self.assertEqual((_key(),), spec.ssh_keys)
        self.assertEqual('vm1', spec.hostname)
        # The seed names the full hostname, as the host route's does.
        self.assertEqual('vm1.example.org', spec.local_hostname)
        self.assertEqual(b'#cloud-config\n', spec.user_data)
        self.assertEqual((('/etc/motd', b'hi\n'),), spec.files)
        self.assertTrue(spec.grow)
        # inject_password is off by default, as in nova.
        self.assertIsNone(spec.password_hash)

    def test_options_decide(self):
        spec = spawn.provision_spec(
            self.req(key=_key(), hostname='vm1', password='secret'),
            _conf(inject_key=False, inject_hostname=False,
                  grow_filesystem=False, inject_password=True))
        self.assertEqual((), spec.ssh_keys)
        self.assertIsNone(spec.hostname)
        # inject_hostname is about /etc/hostname; the seed still names it,
        # as on the host route.
        self.assertEqual('vm1', spec.local_hostname)
        self.assertEqual('vm2', spawn.provision_spec(
            self.req(name='vm2'), _conf()).local_hostname)
        self.assertFalse(spec.grow)
        self.assertTrue(spec.password_hash.startswith('$6$'))
        self.assertNotIn(b'secret', layer.archive(spec))

    def test_a_key_pair_ends_in_a_newline(self):
        # As nova stores an imported or generated key pair's public key.
        spec = spawn.provision_spec(self.req(key=_key() + '\n'), _conf())
        self.assertEqual((_key(),), spec.ssh_keys)
        with self.assertRaises(exception.InvalidProvisionSpec):
            spawn.provision_spec(
                self.req(key=_key() + '\n' + _key()), _conf())

    def test_refusal_names_the_instance(self):
        with self.assertRaises(exception.InvalidProvisionSpec) as cm:
            spawn.provision_spec(self.req(key='ssh-dss AAAA x'), _conf())
        self.assertTrue(str(cm.exception).startswith(
            'Instance vm1: refusing the provisioning layer: ssh key type'),
            cm.exception)


class InstanceRamdiskTest(unittest.TestCase):

    def test_marked_as_a_copy_of_its_base(self):
        with tempfile.TemporaryDirectory(dir='/var/tmp') as d:
            ari = os.path.join(d, 'abc123')
            with open(ari, 'wb') as f:
                f.write(b'ARI')
            dest = os.path.join(d, 'ramdisk')
            spawn.instance_ramdisk(ari, dest, layer.Spec(instance='i'))
            with open(dest, 'rb') as f:
                self.assertEqual(b'ARI', f.read(3))
            try:
                mark = os.getxattr(dest, 'user.amiboot.base')
            except OSError:
                self.skipTest("no user xattrs on /var/tmp")
            self.assertEqual(b'abc123', mark)
