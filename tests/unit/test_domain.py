"""Domain XML and kernel command line."""

import unittest

from lxml import etree

from nova_amiboot import domain
from nova_amiboot import exception

ALLOWED = ['quiet', 'console', 'loglevel', 'amiboot.*']
DEFAULT = 'root=/dev/vda console=tty0 console=ttyS0'


def _spec(**kw):
    args = dict(name='inst-1', uuid='2c9f4f3e-4f2b-4a39-9a7c-9cf0f0d0b7a1',
                memory_mb=512, vcpus=2, kernel='/b/k', initrd='/b/r',
                cmdline=DEFAULT, disk_path='/i/disk', console_log='/i/log',
                virt_type='qemu')
    args.update(kw)
    return domain.DomainSpec(**args)


class TestCmdline(unittest.TestCase):

    def test_default_plus_allowed(self):
        self.assertEqual(DEFAULT + ' quiet amiboot.x=1',
                         domain.build_cmdline(DEFAULT, None,
                                              ['quiet amiboot.x=1'],
                                              ALLOWED))

    def test_image_property_replaces_default(self):
        self.assertEqual('root=LABEL=r ro loglevel=3',
                         domain.build_cmdline(DEFAULT, 'root=LABEL=r ro',
                                              ['loglevel=3'], ALLOWED))

    def test_denied_are_named(self):
        with self.assertRaises(exception.BootParameterDenied) as cm:
            domain.build_cmdline(DEFAULT, None,
                                 ['quiet', 'init=/bin/sh', 'rd.break'],
                                 ALLOWED, instance='vm7')
        msg = str(cm.exception)
        self.assertIn('init=/bin/sh', msg)
        self.assertIn('rd.break', msg)
        self.assertIn('vm7', msg)
        self.assertNotIn('quiet', msg)

    def test_pattern_does_not_match_prefix_only(self):
        # 'amiboot.*' must not admit 'amibootx' or 'rdinit'.
        self.assertRaises(exception.BootParameterDenied,
                          domain.build_cmdline, DEFAULT, None,
                          ['amibootx=1'], ALLOWED)

    def test_quotes_refused(self):
        self.assertRaises(exception.BootParameterDenied,
                          domain.build_cmdline, DEFAULT, None,
                          [['console="ttyS0 init=/bin/sh"']], ALLOWED)


class TestDomainXML(unittest.TestCase):

    def test_direct_kernel_boot(self):
        root = etree.fromstring(domain.build_domain_xml(_spec()))
        self.assertEqual('qemu', root.get('type'))
        self.assertEqual('/b/k', root.findtext('os/kernel'))
        self.assertEqual('/b/r', root.findtext('os/initrd'))
        self.assertEqual(DEFAULT, root.findtext('os/cmdline'))
        self.assertEqual(str(512 * 1024), root.findtext('memory'))
        self.assertEqual('2', root.findtext('vcpu'))
        disk = root.find('devices/disk')
        self.assertEqual('/i/disk', disk.find('source').get('file'))
        self.assertEqual('virtio', disk.find('target').get('bus'))
        self.assertEqual('qcow2', disk.find('driver').get('type'))
        self.assertEqual('/i/log',
                         root.find('devices/serial/log').get('file'))
        self.assertIsNotNone(root.find('features/acpi'))
        self.assertEqual('virtio', root.find('devices/memballoon').get(
            'model'))
        self.assertEqual('virtio', root.find(
            'devices/interface/model').get('type'))
        self.assertIsNone(root.find('devices/graphics'))

    def test_vnc_only_on_loopback(self):
        root = etree.fromstring(domain.build_domain_xml(_spec(vnc=True)))
        g = root.find('devices/graphics')
        self.assertEqual('vnc', g.get('type'))
        self.assertEqual('127.0.0.1', g.get('listen'))

    def test_values_cannot_change_structure(self):
        evil = '</cmdline></os><devices><disk/></devices><os><cmdline>'
        root = etree.fromstring(domain.build_domain_xml(
            _spec(cmdline=evil, name='a<b>&c')))
        self.assertEqual(evil, root.findtext('os/cmdline'))
        self.assertEqual('a<b>&c', root.findtext('name'))
        self.assertEqual(1, len(root.findall('devices')))

    def test_user_network_with_port_forward(self):
        net = domain.Network('user', hostfwd=((2222, 22),),
                             mac='52:54:00:aa:bb:cc')
        root = etree.fromstring(domain.build_domain_xml(_spec(network=net)))
        args = [a.get('value') for a in root.iter(
            '{%s}arg' % domain.QEMU_NS)]
        self.assertIn('user,id=amibootnet0,hostfwd=tcp:127.0.0.1:2222-:22',
                      args)
        self.assertIsNone(root.find('devices/interface'))

    def test_user_network_through_passt(self):
        net = domain.Network('user', hostfwd=((2222, 22),), passt=True)
        root = etree.fromstring(domain.build_domain_xml(_spec(network=net)))
        iface = root.find('devices/interface')
        self.assertEqual('user', iface.get('type'))
        self.assertEqual('passt', iface.find('backend').get('type'))
        fwd = iface.find('portForward')
        self.assertEqual(('tcp', '127.0.0.1'), (fwd.get('proto'),
                                                fwd.get('address')))
        self.assertEqual(('2222', '22'), (fwd.find('range').get('start'),
                                          fwd.find('range').get('to')))
        self.assertEqual([], list(root.iter('{%s}arg' % domain.QEMU_NS)))

    def test_bridge_network(self):
        net = domain.Network('bridge', bridge='br0', tap='tap1')
        root = etree.fromstring(domain.build_domain_xml(_spec(network=net)))
        iface = root.find('devices/interface')
        self.assertEqual('ethernet', iface.get('type'))
        self.assertEqual('tap1', iface.find('target').get('dev'))

    def test_unwritable_values_are_clear_errors(self):
        # lxml refuses NUL and control characters with a ValueError; the
        # caller gets an error naming the instance instead.
        for kw in ({'disk_path': '/i/di\x00sk'}, {'console_log': '/i/\x01'},
                   {'network': domain.Network('bogus')}):
            with self.subTest(kw):
                with self.assertRaises(exception.InvalidDomain) as cm:
                    domain.build_domain_xml(_spec(**kw))
                self.assertIn('inst-1', cm.exception.message)

    def test_shared_base_is_not_relabelled(self):
        root = etree.fromstring(domain.build_domain_xml(
            _spec(backing_file='/b/base')))
        store = root.find('devices/disk/backingStore')
        self.assertEqual('raw', store.find('format').get('type'))
        src = store.find('source')
        self.assertEqual('/b/base', src.get('file'))
        self.assertEqual(('dac', 'no'), (src.find('seclabel').get('model'),
                                         src.find('seclabel').get('relabel')))
        # The chain ends there: libvirt probes nothing further.
        self.assertEqual(0, len(store.find('backingStore')))
        # The instance's own overlay keeps libvirt's labelling.
        self.assertIsNone(root.find('devices/disk/source/seclabel'))
        self.assertIsNone(etree.fromstring(domain.build_domain_xml(
            _spec())).find('devices/disk/backingStore'))


class TestOwnerMark(unittest.TestCase):

    OWNER = domain.Owner('/var/lib/amiboot', 'a6f0e2a4-0000-4000-8000-1')

    def test_spec_owner_round_trip(self):
        xml = domain.build_domain_xml(_spec(owner=self.OWNER,
                                            metadata={'image': 'i'}))
        self.assertEqual(self.OWNER, domain.parse_owner(xml))
        root = etree.fromstring(xml)
        self.assertEqual('i', root.findtext(
            'metadata/{%s}instance/{%s}image' % (domain.AMIBOOT_NS,
                                                 domain.AMIBOOT_NS)))

    def test_set_owner_replaces_and_adds(self):
        xml = domain.build_domain_xml(_spec())
        self.assertIsNone(domain.parse_owner(xml))
        marked = domain.set_owner(xml, self.OWNER)
        self.assertEqual(self.OWNER, domain.parse_owner(marked))
        other = domain.Owner('/elsewhere', 'x')
        remarked = domain.set_owner(marked, other)
        self.assertEqual(other, domain.parse_owner(remarked))
        self.assertEqual(1, remarked.count('state-dir='))
        # metadata sits after <uuid>, as libvirt expects.
        root = etree.fromstring(marked)
        self.assertEqual('uuid', root.find('metadata').getprevious().tag)

    def test_libvirt_api_form_and_garbage(self):
        # virDomainGetMetadata returns the element without its namespace.
        self.assertEqual(domain.Owner('/s', 'u'), domain.parse_owner(
            '<owner state-dir="/s" instance="u"/>'))
        for text in (None, '', '<owner/>', '<owner state-dir="/s"/>',
                     'not xml', '<other state-dir="/s" instance="u"/>'):
            with self.subTest(text):
                self.assertIsNone(domain.parse_owner(text))

    def test_state_dir_with_control_characters(self):
        with self.assertRaises(exception.InvalidDomain):
            domain.set_owner(domain.build_domain_xml(_spec()),
                             domain.Owner('/tmp/a\x01', 'u'), 'vm-z')


class TestAddBackingStore(unittest.TestCase):
    """For domains written by someone else (nova's XML)."""

    def test_marks_the_named_disk_only(self):
        xml = domain.build_domain_xml(_spec())
        out = domain.add_backing_store(xml, '/i/disk', '/b/base')
        again = domain.add_backing_store(out, '/i/disk', '/b/base2')
        for text, base in ((out, '/b/base'), (again, '/b/base2')):
            root = etree.fromstring(text)
            stores = root.findall('devices/disk/backingStore')
            self.assertEqual(1, len(stores))
            self.assertEqual(base, stores[0].find('source').get('file'))
            self.assertEqual('no', stores[0].find(
                'source/seclabel').get('relabel'))
            self.assertEqual('source',
                             stores[0].getprevious().tag)
        self.assertEqual(out, domain.add_backing_store(
            domain.build_domain_xml(_spec(backing_file='/b/base')),
            '/i/disk', '/b/base'))

    def test_unknown_disk_is_an_error(self):
        self.assertRaises(exception.InvalidDomain, domain.add_backing_store,
                          domain.build_domain_xml(_spec()), '/other',
                          '/b/base', instance='vm-q')
