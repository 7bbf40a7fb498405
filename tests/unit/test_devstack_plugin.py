"""The devstack plugin's configure step, run by bash with devstack's own
functions replaced by recorders (devstack itself needs systemd), against
the settings tools/cloud applies: both come from devstack/amiboot-compute.sh.
"""

import os
import subprocess
import tempfile
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _bash(script, **env):
    return subprocess.run(
        ['bash', '-c', script], check=True, capture_output=True, text=True,
        env=dict(os.environ, NOVA_AMIBOOT_DIR=TOP, **env)).stdout


class DevstackPluginTest(unittest.TestCase):

    def test_post_config_writes_the_shared_settings_and_filter(self):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, 'nova-cpu.conf')
            open(conf, 'w').close()
            os.makedirs(os.path.join(tmp, 'rootwrap.d'))
            out = _bash(
                'iniset() { echo "iniset $*"; }\n'
                'sudo() { "$@"; }\n'
                'is_service_enabled() { return 1; }\n'
                'echo_summary() { :; }\n'
                'source "$NOVA_AMIBOOT_DIR/devstack/settings"\n'
                'source "$NOVA_AMIBOOT_DIR/devstack/plugin.sh" stack '
                'post-config\n',
                NOVA_CONF=conf, NOVA_CPU_CONF='/nonexistent',
                NOVA_CONF_DIR=tmp, DEST=tmp, DATA_DIR=tmp)
            shared = _bash('source "$NOVA_AMIBOOT_DIR/devstack/'
                           'amiboot-compute.sh"; amiboot_compute_settings')
            expected = ['iniset %s %s' % (conf, line)
                        for line in shared.splitlines()
                        if ' compute_driver ' not in line]
            self.assertEqual(expected, out.splitlines())
            self.assertIn('libvirt images_type qcow2', shared)
            self.assertIn('amiboot allowed_boot_params', shared)
            with open(os.path.join(tmp, 'rootwrap.d',
                                   'amiboot.filters')) as f:
                filters = f.read()
            self.assertIn('nova_amiboot.privileged.nbd_pctxt', filters)

    def test_privsep_helper_for_every_context(self):
        out = _bash('source "$NOVA_AMIBOOT_DIR/devstack/amiboot-compute.sh";'
                    ' amiboot_compute_settings /v/privsep-helper /e/n.conf')
        for group in ('nova_sys_admin', 'privsep_osbrick',
                      'nova_amiboot_privileged',
                      'nova_amiboot_privileged_net'):
            self.assertIn('%s helper_command /v/privsep-helper '
                          '--config-file /e/n.conf' % group, out)

    def _upload(self, **env):
        # "openstack" records its calls; "image list" finds nothing, so
        # each part is created, and "image create" prints a made-up id.
        out = _bash(
            'openstack() {\n'
            '  echo "CALL $*" >&2\n'
            '  [[ $2 == create ]] && echo "id-${@: -1}"\n'
            '  return 0\n'
            '}\n'
            'source "$NOVA_AMIBOOT_DIR/devstack/amiboot-compute.sh"\n'
            'amiboot_upload_triplet s /k /r /a --property os_distro=x '
            '2>&1\n', **env)
        return [line[5:] for line in out.splitlines()
                if line.startswith('CALL image create')]

    def test_sample_ari_declares_guest_provisioning(self):
        kernel, ramdisk, ami = self._upload()
        self.assertNotIn('amiboot_provision', kernel)
        self.assertIn('--property amiboot_provision=guest', ramdisk)
        self.assertTrue(ramdisk.endswith(' s-ramdisk'), ramdisk)
        self.assertNotIn('amiboot_provision', ami)
        self.assertIn('--property kernel_id=id-s-kernel', ami)
        self.assertIn('--property ramdisk_id=id-s-ramdisk', ami)
        self.assertIn('--property os_distro=x', ami)

    def test_an_undeclared_ari_on_request(self):
        _, ramdisk, _ = self._upload(NOVA_AMIBOOT_ARI_PROVISION='')
        self.assertNotIn('amiboot_provision', ramdisk)
        self.assertTrue(ramdisk.endswith(' s-ramdisk'), ramdisk)
