"""The ARI's /init and the host agree on a layer's digest.

The shell function of ari.INIT_SCRIPT runs under the host's busybox on the
layer unpacked from layer.archive(): the digest it prints is
layer.digest()'s (so the host knows what a guest records as applied).
"""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

from nova_amiboot.imagetools import ari
from nova_amiboot import layer
from tests.unit import test_layer

BUSYBOX = '/bin/busybox'


def _function(name):
    m = re.search(r'^%s\(\) \{\n.*?^\}\n' % name, ari.INIT_SCRIPT,
                  re.M | re.S)
    return m.group(0)


@unittest.skipUnless(os.path.exists(BUSYBOX), "no busybox on this host")
class DigestTest(unittest.TestCase):

    def shell_digest(self, spec):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        members, _end = test_layer.read_newc(layer.archive(spec))
        for name, (mode, _uid, _gid, _mtime, body) in members.items():
            path = os.path.join(tmp, name)
            if mode & 0o040000:
                os.makedirs(path, exist_ok=True)
            else:
                with open(path, 'wb') as f:
                    f.write(body)
        # Busybox's applets, as in the ARI, not the host's tools.
        bindir = os.path.join(tmp, 'bin')
        os.makedirs(bindir)
        for applet in ('find', 'sort', 'wc', 'cat', 'cut', 'sha256sum'):
            os.symlink(BUSYBOX, os.path.join(bindir, applet))
        script = 'P=%s/amiboot/provision\n%slayer_digest\n' % (
            tmp, _function('layer_digest'))
        out = subprocess.run([BUSYBOX, 'sh', '-c', script], check=True,
                             capture_output=True, env={'PATH': bindir})
        return out.stdout.decode().strip()

    def test_same_digest(self):
        specs = [
            layer.Spec(instance='i'),
            layer.Spec(instance='inst-1', ssh_keys=[test_layer._key()],
                       hostname='web-01', password_hash=test_layer.SHA512,
                       user_data=b'\x00\xffraw\n\n',
                       files=[('/etc/b', b'B'), ('/etc/a', b'A\n'),
                              ('/e/z', b'')], grow=True),
        ]
        for spec in specs:
            self.assertEqual(layer.digest(spec), self.shell_digest(spec))
        self.assertNotEqual(layer.digest(specs[0]),
                            layer.digest(layer.Spec(instance='j')))
