"""nova's own load_compute_driver loads our driver from a normal install.

The package is built as a wheel and installed (not editable) into a scratch
directory; a fresh interpreter imports it from there, runs the wrapper's
registration the way nova-compute-amiboot does and asks nova to load
``compute_driver = amiboot.AmibootLibvirtDriver``.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

SCRIPT = r'''
import sys
from nova.cmd import compute  # nova picks its concurrency mode here
import nova_amiboot
assert nova_amiboot.__file__.startswith(sys.argv[1]), nova_amiboot.__file__
from nova_amiboot.virt import compute as wrapper
wrapper.register()
import nova.conf
from nova import config
config.parse_args([], default_config_files=[])
nova.conf.CONF.set_override('compute_driver', 'amiboot.AmibootLibvirtDriver')
from nova.virt import driver, virtapi
d = driver.load_compute_driver(virtapi.VirtAPI())
print(type(d).__module__, type(d).__name__)
print(d.image_backend.BACKEND['qcow2'].__name__,
      d.image_backend.BACKEND['default'].__name__)
print('eventlet' in sys.modules)
'''


class TestLoadThroughNova(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_normal_install_loads(self):
        dist, site = self.tmp + '/dist', self.tmp + '/site'
        pip = [sys.executable, '-m', 'pip', '-q']
        subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation',
                              '-w', dist, REPO], check=True,
                       capture_output=True)
        (wheel,) = glob.glob(dist + '/nova_amiboot-*.whl')
        subprocess.run(pip + ['install', '--no-deps', '--target', site,
                              wheel], check=True, capture_output=True)
        (ep,) = glob.glob(site + '/nova_amiboot-*.dist-info/'
                          'entry_points.txt')
        with open(ep) as f:
            entry_points = f.read()
        self.assertIn('nova-compute-amiboot = nova_amiboot.virt.compute:main',
                      entry_points)
        self.assertIn('nova_amiboot = nova_amiboot.conf.opts:list_opts',
                      entry_points)
        env = dict(os.environ, PYTHONPATH=site)
        p = subprocess.run([sys.executable, '-c', SCRIPT, site], env=env,
                           capture_output=True, text=True, cwd=self.tmp)
        self.assertEqual(0, p.returncode, p.stderr)
        lines = p.stdout.split('\n')
        self.assertEqual('nova_amiboot.virt.driver AmibootLibvirtDriver',
                         lines[0])
        self.assertEqual('AmibootQcow2 AmibootQcow2', lines[1])
        # nova-compute runs with native threads; eventlet stays out.
        self.assertEqual('False', lines[2])
