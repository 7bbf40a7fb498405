"""nova-rootwrap with nova's rootwrap.conf and filters plus ours.

nova starts an oslo.privsep context as ``sudo nova-rootwrap
/etc/nova/rootwrap.conf privsep-helper --config-file ... --privsep_context
<context> --privsep_sock_path ...``. This runs the real nova-rootwrap (we
are root here, so no sudo) against nova's shipped rootwrap.conf and
rootwrap.d plus etc/nova/rootwrap.d/amiboot.filters: our nbd context is
admitted. Our filter file, read by oslo.rootwrap's own loader, admits that
context and nothing else.

oslo.rootwrap 7.x (what nova 34 installs) appends a filter admitting
``privsep-helper`` with any arguments to every filter list, so nova's
filters alone no longer refuse our context there; the filter file is for
rootwrap versions and packagings that do not, and says what nova-compute
may start.
"""

import configparser
import os
import subprocess
import sys
import tempfile
import unittest

from oslo_rootwrap import wrapper

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
OURS = os.path.join(TOP, 'etc', 'nova', 'rootwrap.d')
NOVA_ETC = os.path.join(sys.prefix, 'etc', 'nova')
BIN = os.path.dirname(sys.executable)
# oslo.rootwrap's exit code for a command no filter admits.
UNAUTHORIZED = 99


class TestRootwrapFilters(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix='amiboot-rootwrap-')
        self.addCleanup(self.tmp.cleanup)
        conf = configparser.ConfigParser()
        conf.read(os.path.join(NOVA_ETC, 'rootwrap.conf'))
        # nova's file as shipped, with its filters and ours where this
        # installation keeps them, and privsep-helper where it is.
        conf['DEFAULT']['filters_path'] = ','.join(
            [os.path.join(NOVA_ETC, 'rootwrap.d'), OURS])
        conf['DEFAULT']['exec_dirs'] = BIN + ',' + \
            conf['DEFAULT']['exec_dirs']
        self.conf = os.path.join(self.tmp.name, 'rootwrap.conf')
        with open(self.conf, 'w') as f:
            conf.write(f)

    def _run(self, context, config_file='/etc/nova/nova.conf'):
        sock = os.path.join('/tmp', 'amiboot-rootwrap-absent', 'sock')
        return subprocess.run(
            [os.path.join(BIN, 'nova-rootwrap'), self.conf, 'privsep-helper',
             '--config-file', config_file, '--privsep_context', context,
             '--privsep_sock_path', sock],
            capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)

    def _assert_admitted(self, context):
        p = self._run(context)
        # Admitted: privsep-helper itself ran (and failed to reach the
        # absent socket), rootwrap did not refuse.
        self.assertNotEqual(UNAUTHORIZED, p.returncode, p.stderr)
        self.assertNotIn('Unauthorized command', p.stderr)

    def test_our_nbd_context_is_admitted(self):
        self._assert_admitted('nova_amiboot.privileged.nbd_pctxt')

    def test_nova_contexts_still_admitted(self):
        self._assert_admitted('nova.privsep.sys_admin_pctxt')

    def test_filter_admits_exactly_our_context(self):
        ours = [f for f in wrapper.load_filters([OURS])
                if f.name != 'privsep-helper']   # the built-in one
        self.assertEqual(['privsep-rootwrap-nova_amiboot_nbd'],
                         [f.name for f in ours])

        def admitted(context, config_file='/etc/nova/nova.conf'):
            try:
                wrapper.match_filter(
                    ours, ['privsep-helper', '--config-file', config_file,
                           '--privsep_context', context,
                           '--privsep_sock_path', '/tmp/tmpabc/privsep.sock'],
                    exec_dirs=[BIN])
            except wrapper.NoFilterMatched:
                return False
            return True
        self.assertTrue(admitted('nova_amiboot.privileged.nbd_pctxt'))
        for context in ('nova_amiboot.privileged.net_pctxt',
                        'nova_amiboot.privileged.nbd_pctxtX',
                        'nova_amiboot-privileged-nbd_pctxt',
                        'nova_amiboot.privileged.nbd',
                        'nova.privsep.sys_admin_pctxt',
                        'os.system'):
            with self.subTest(context=context):
                self.assertFalse(admitted(context))
        self.assertFalse(admitted('nova_amiboot.privileged.nbd_pctxt',
                                  config_file='/etc/../tmp/evil.conf'))
