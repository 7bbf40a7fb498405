"""The nova adapter imports only the core.

nova-compute loads nova_amiboot.virt; the embedded default (the amiboot
command's local cloud, its networking through pyroute2 and the privileged
net context), the image tooling and the CLI must not come with it.
"""

import json
import subprocess
import sys
import unittest

# The embedded default, the image tooling and the command line are
# subpackages of their own: none of them may come with the driver.
NOT_IN_NOVA = ('nova_amiboot.local', 'nova_amiboot.imagetools',
               'nova_amiboot.cli', 'nova_amiboot.privileged.net',
               'pyroute2')


class TestNovaAdapterImports(unittest.TestCase):

    def test_virt_imports_only_the_core(self):
        # A fresh interpreter: what importing the driver pulls in.
        out = subprocess.run(
            [sys.executable, '-c',
             'import json, sys; import nova_amiboot.virt.driver; '
             'print(json.dumps(sorted(sys.modules)))'],
            check=True, capture_output=True, text=True).stdout
        loaded = json.loads(out.strip().splitlines()[-1])
        self.assertIn('nova_amiboot.spawn', loaded)
        self.assertEqual([], [m for m in loaded
                              if m.startswith(NOT_IN_NOVA)])
