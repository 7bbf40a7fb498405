"""Bridges and taps through the pyroute2 wrapper, inside a network
namespace this test creates; no traffic is sent anywhere."""

import subprocess
import unittest
import uuid

from nova_amiboot.local import cloud as local_cloud
from nova_amiboot.local import network as local_network
from nova_amiboot import exception
from nova_amiboot import privileged
from nova_amiboot.privileged import net as priv_net
from tests.functional import base


class TestBridgeTap(unittest.TestCase):

    def setUp(self):
        privileged.run_in_process()
        self.ns = 'amiboot-t-%s' % uuid.uuid4().hex[:8]
        subprocess.run(['ip', 'netns', 'add', self.ns], check=True)
        self.addCleanup(subprocess.run, ['ip', 'netns', 'del', self.ns])

    def host_has(self, name):
        return subprocess.run(['ip', 'link', 'show', name],
                              capture_output=True).returncode == 0

    def test_bridge_and_tap(self):
        self.assertTrue(priv_net.ensure_bridge('brtest0', netns=self.ns))
        self.assertFalse(priv_net.ensure_bridge('brtest0', netns=self.ns))
        info = priv_net.link_info('brtest0', netns=self.ns)
        self.assertEqual('bridge', info['kind'])
        self.assertTrue(info['up'])
        priv_net.add_tap('taptest0', 'brtest0', netns=self.ns)
        info = priv_net.link_info('taptest0', netns=self.ns)
        self.assertEqual('tun', info['kind'])
        self.assertEqual('brtest0', info['master'])
        self.assertTrue(info['up'])
        # All of it lives in the test's namespace, none on the host.
        self.assertFalse(self.host_has('brtest0'))
        self.assertFalse(self.host_has('taptest0'))
        self.assertTrue(priv_net.delete_link('taptest0', netns=self.ns))
        self.assertFalse(priv_net.delete_link('taptest0', netns=self.ns))
        self.assertIsNone(priv_net.link_info('taptest0', netns=self.ns))

    def test_bad_names_and_missing_bridge(self):
        # The root side checks every name itself (fullmatch: a trailing
        # newline passed the old '$' anchor).
        for bad in ('', 'x' * 16, 'a b', '../x', 'br0\n', '.', '..',
                    'br\x00', 'br\u00e9', None, 5):
            for call in (priv_net.ensure_bridge, priv_net.delete_link,
                         priv_net.link_info):
                self.assertRaises(exception.InvalidInterfaceName, call, bad,
                                  netns=self.ns)
            self.assertRaises(exception.InvalidInterfaceName,
                              priv_net.add_tap, bad, 'br0', netns=self.ns)
        self.assertRaises(exception.InvalidInput, priv_net.add_tap, 'tapx',
                          'nobr', netns=self.ns)


class TestCloudBridgeNetwork(base.RealToolsTestCase):

    def setUp(self):
        super().setUp()
        privileged.run_in_process()
        self.ns = 'amiboot-t-%s' % uuid.uuid4().hex[:8]
        subprocess.run(['ip', 'netns', 'add', self.ns], check=True)
        self.addCleanup(subprocess.run, ['ip', 'netns', 'del', self.ns])

    def test_instance_network_spec(self):
        cloud = local_cloud.LocalCloud(self.conf, self.scratch('state'),
                                       netns=self.ns)
        self.addCleanup(cloud.close)
        inst_uuid = str(uuid.uuid4())
        taps = []

        def network(spec):
            return local_network.guest_network(
                spec, inst_uuid, taps, cloud.host.conn, cloud.netns)

        net, record = network('bridge:brlab')
        self.assertEqual([net.tap], taps)
        tap = net.tap
        self.assertEqual('bridge', net.kind)
        self.assertEqual(record['tap'], net.tap)
        self.assertEqual('brlab', priv_net.link_info(
            net.tap, netns=self.ns)['master'])
        net, record = network('user')
        self.assertEqual(((record['ssh_port'], 22),), net.hostfwd)
        for bad in ('wifi', 'bridge:', 'bridge:br0\n', 'bridge:a b',
                    'user\n', 'bridge:' + 'x' * 16):
            self.assertRaises(exception.InvalidInput,
                              local_network.parse_network, bad)
            self.assertRaises(exception.InvalidInput, network, bad)
        self.assertEqual([tap], taps)
