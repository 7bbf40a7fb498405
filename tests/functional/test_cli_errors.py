"""Bad input to the amiboot command: one line naming what is wrong, exit
code 1, no traceback, nothing changed; one row per input."""

import json
import os
import uuid

from tests.functional import test_cli
from tests.functional import test_domain_owner


class TestOneLineErrors(test_domain_owner.ScopedLeakCheck,
                        test_cli.CliTestCase):

    def write(self, name, data):
        path = self.scratch(name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def test_each_bad_input(self):
        self.import_testbed()
        self.import_testbed('ctl', '--property',
                            'os_command_line=root=/dev/vda\x01 ro')
        vm = 'err-' + uuid.uuid4().hex[:6]
        bad_key = self.write('bad.pub', b'ssh-ed25519 AAAA \xff\xfe\n')
        big_key = self.write('big.pub', b'ssh-ed25519 ' + b'A' * 70000)
        nul_ud = self.write('nul-ud', b'bootparams=quiet\x00init=/bin/sh\n')
        latin_ud = self.write('latin-ud', b'bootparams=quiet\xa0init=/x\n')
        boot = ('boot', vm, '--image', 'tb', '--network', 'none')
        # (arguments, words the one line must hold)
        cases = [
            (('boot', vm + '\n', '--image', 'tb'), [vm + '\\n']),
            (('image', 'import', 'tb2\n', '--kernel', self.testbed['kernel'],
              '--ramdisk', self.testbed['ramdisk'], '--root',
              self.testbed['root']), ['tb2\\n']),
            (boot + ('--key-file', bad_key), [vm, bad_key, 'UTF-8']),
            (boot + ('--key-file', big_key), [vm, big_key]),
            (boot + ('--user-data', nul_ud), [vm, '\\x00']),
            (boot + ('--user-data', latin_ud), [vm, 'ASCII']),
            (('boot', vm, '--image', 'tb', '--network', 'bogus\n'),
             [vm, 'bogus\\n']),
            (('boot', vm, '--image', 'tb', '--network', 'bridge:br0\n'),
             [vm, 'br0\\n']),
            (('boot', vm, '--image', 'tb', '--network', 'bridge:'),
             [vm, '--network']),
            (boot + ('--boot-param', 'console=ttyS0\x0binit=/bin/sh'),
             [vm, '\\x0b']),
            (boot + ('--boot-param', 'x' * 3000), [vm]),
            (boot + ('--root-gb', '-1', '--memory-mb', '64', '--vcpus', '1'),
             [vm, 'root_gb']),
            (('boot', vm, '--image', 'ctl', '--network', 'none'),
             [vm, 'ctl', 'os_command_line']),
        ]
        before = self.state_snapshot()
        for args, words in cases:
            with self.subTest(args):
                line = self.error(*args)
                for w in words:
                    self.assertIn(w, line)
        self.assertEqual(before, self.state_snapshot())
        self.assertIsNone(self.host.lookup('amiboot-' + vm))

    def test_damaged_instance_record(self):
        self.import_testbed()
        for content in (b'{not json', b'\xff\xfe', b'[]', b'{"uuid": 1}'):
            with self.subTest(content):
                d = os.path.join(self.state, 'instances', str(uuid.uuid4()))
                os.makedirs(d)
                with open(os.path.join(d, 'amiboot.json'), 'wb') as f:
                    f.write(content)
                self.assertIn(d, self.error('list'))
                os.remove(os.path.join(d, 'amiboot.json'))
                os.rmdir(d)
        self.assertEqual([], json.loads(self.amiboot('list', '-f',
                                                     'json').stdout))

    def test_state_dir_that_xml_cannot_carry(self):
        # Operator input, still a clear error (lxml refuses the control
        # character in every path of the domain) and nothing left behind.
        odd = self.scratch('odd\x01state')
        os.makedirs(odd)
        os.chmod(odd, 0o755)
        saved = self.state
        self.state = odd
        try:
            self.import_testbed()
            vm = 'odd-' + uuid.uuid4().hex[:6]
            line = self.error('boot', vm, '--image', 'tb', '--network',
                              'none')
            self.assertIn(vm, line)
            left = set(os.listdir(os.path.join(odd, 'instances')))
            self.assertEqual(set(), left - {'_base', 'locks'})
        finally:
            self.state = saved
