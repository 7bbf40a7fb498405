"""Adversarial inputs for the kernel command line, as data.

Every row is an input an attacker tried (or a neighbour of one) and the
outcome the grammar gives it. A new bypass found later becomes a new row.
Outcomes:
  INVALID  refused by the parameter grammar (InvalidBootParameter)
  DENIED   well-formed but its name is not in the allow-list
  a str    accepted: the exact user part of the resulting command line
"""

import unittest

from nova_amiboot import domain
from nova_amiboot import bootparams
from nova_amiboot import exception

INVALID = 'invalid'
DENIED = 'denied'
ALLOWED = ['quiet', 'console', 'loglevel', 'no_timer_check', 'amiboot.*']
DEFAULT = 'root=/dev/vda console=ttyS0'

# (label, boot_params as the CLI / metadata give them, outcome)
PARAMS = [
    # quotes: shlex used to remove them, so one word carried two params
    ('double quotes', ['console="ttyS0 init=/bin/sh"'], INVALID),
    ('single quotes', ["console='ttyS0 init=/bin/sh'"], INVALID),
    ('quoted whole', ['"init=/bin/sh"'], INVALID),
    ('quote in list item', [['console="ttyS0 init=/bin/sh"']], INVALID),
    ('backslash space', ['console=ttyS0\\ init=/bin/sh'], INVALID),
    ('backslash', ['amiboot.x=a\\b'], INVALID),
    # every byte the kernel (or an init's shell) splits on
    ('vertical tab', ['console=ttyS0\x0binit=/bin/sh'], INVALID),
    ('form feed', ['console=ttyS0\x0cinit=/bin/sh'], INVALID),
    ('NUL', ['console=ttyS0\x00init=/bin/sh'], INVALID),
    ('U+00A0', ['console=ttyS0\u00a0rdinit=/bin/sh'], INVALID),
    ('newline', ['console=ttyS0\ninit=/bin/sh'], INVALID),
    ('trailing newline', ['quiet\n'], INVALID),
    ('carriage return', ['console=ttyS0\rinit=/bin/sh'], INVALID),
    ('tab', ['console=ttyS0\tinit=/bin/sh'], INVALID),
    ('tab in list item', [['quiet\t']], INVALID),
    ('U+0085 NEL', ['quiet\u0085init=/bin/sh'], INVALID),
    ('U+2028', ['quiet\u2028init=/bin/sh'], INVALID),
    ('U+3000', ['quiet\u3000init=/bin/sh'], INVALID),
    ('file separator', ['quiet\x1cinit=/bin/sh'], INVALID),
    ('escape sequence', ['amiboot.x=\x1b[2J'], INVALID),
    ('DEL', ['amiboot.x=a\x7f'], INVALID),
    ('non-ASCII lookalike name', ['c\u043ensole=ttyS0'], INVALID),
    ('fullwidth equals', ['console\uff1dttyS0'], INVALID),
    ('surrogate', ['amiboot.x=\ud800'], INVALID),
    # '=' tricks
    ('empty name', ['=init=/bin/sh'], INVALID),
    ('lone equals', ['quiet = init'], INVALID),
    ('spaced equals', ['init = /bin/sh'], INVALID),
    ('second equals', ['console=ttyS0=init=/bin/sh'], INVALID),
    ('double equals', ['console==ttyS0'], INVALID),
    ('empty value', ['console='], 'console='),
    # names
    ('end of options', ['-- init=/bin/sh'], INVALID),
    ('leading dash', ['-init'], INVALID),
    ('leading dot', ['.quiet'], INVALID),
    ('long name', ['a' * 65], INVALID),
    ('long value', ['console=' + 'A' * 256], INVALID),
    ('value at the bound', ['console=' + 'A' * 255], 'console=' + 'A' * 255),
    ('line over the kernel limit', ['quiet ' * 400], INVALID),
    ('shell expansion', ['amiboot.x=$(reboot)'], INVALID),
    ('backticks', ['amiboot.x=`reboot`'], INVALID),
    ('semicolon', ['console=ttyS0;init=/bin/sh'], INVALID),
    ('glob', ['amiboot.*'], INVALID),
    ('not text', [[5]], INVALID),
    ('bytes', [[b'quiet']], INVALID),
    # the allow-list on the whole validated name
    ('init', ['init=/bin/sh'], DENIED),
    ('rdinit', ['rdinit=/bin/sh'], DENIED),
    ('rd.break', ['rd.break'], DENIED),
    ('bare init', ['init'], DENIED),
    ('prefix of a pattern', ['amibootx=1'], DENIED),
    ('allowed then denied', ['quiet init=/bin/sh'], DENIED),
    ('underscore variant', ['no-timer-check'], 'no-timer-check'),
    ('case differs', ['QUIET'], DENIED),
    # what must keep working
    ('plain', ['quiet'], 'quiet'),
    ('several', ['quiet loglevel=3', 'amiboot.x=1'],
     'quiet loglevel=3 amiboot.x=1'),
    ('extra spaces', ['  quiet   loglevel=3 '], 'quiet loglevel=3'),
    ('console with options', ['console=ttyS0,115200n8'],
     'console=ttyS0,115200n8'),
    ('pattern', ['amiboot.nonce=ab-12_c.d/e:f+g@h%i~j'],
     'amiboot.nonce=ab-12_c.d/e:f+g@h%i~j'),
    ('nothing', [], ''),
    ('only spaces', ['   '], ''),
]

# (label, user data bytes, outcome for its bootparams= lines)
USER_DATA = [
    ('quotes', b'bootparams=console="ttyS0 init=/bin/sh"\n', INVALID),
    ('quoted whole line, quote inside',
     b'bootparams="console="ttyS0 init=/bin/sh""\n', INVALID),
    ('backslash space', b'bootparams=console=ttyS0\\ init=/bin/sh\n',
     INVALID),
    ('vertical tab', b'bootparams=quiet\x0bbootparams=init=/bin/sh\n',
     INVALID),
    ('form feed', b'bootparams=quiet\x0cinit=/bin/sh', INVALID),
    ('NUL', b'bootparams=quiet\x00init=/bin/sh', INVALID),
    ('UTF-8 U+00A0', b'bootparams=console=ttyS0\xc2\xa0rdinit=/bin/sh',
     INVALID),
    ('Latin-1 0xA0', b'bootparams=console=ttyS0\xa0rdinit=/bin/sh',
     INVALID),
    ('tab', b'bootparams=quiet\tinit=/bin/sh\n', INVALID),
    ('CR inside', b'bootparams=quiet\rinit=/bin/sh\n', INVALID),
    ('denied', b'#cloud-config\nbootparams=rd.break\n', DENIED),
    ('second line denied', b'bootparams=quiet\nbootparams=init=/bin/sh\n',
     DENIED),
    ('CRLF', b'bootparams=quiet\r\n', 'quiet'),
    ('quoted whole value', b'bootparams="quiet loglevel=3"\n',
     'quiet loglevel=3'),
    ('single-quoted whole value', b"bootparams='quiet'\n", 'quiet'),
    ('indented line is not a bootparams line',
     b'  bootparams=init=/bin/sh\n', ''),
    ('other lines ignored', b'#!/bin/sh\necho init=/bin/sh\n\xff\xfe\n',
     ''),
    ('no user data', None, ''),
]

# (label, os_command_line, outcome: a str is the whole line, else INVALID)
OS_COMMAND_LINE = [
    ('NUL', 'root=/dev/vda\x00init=/bin/sh', INVALID),
    ('control character', 'root=/dev/vda\x01', INVALID),
    ('escape', 'root=/dev/vda \x1b[2J', INVALID),
    ('surrogate', 'root=/dev/vda \udcff', INVALID),
    ('not text', b'root=/dev/vda', INVALID),
    ('too long', 'root=/dev/vda ' + 'x' * 2100, INVALID),
    ('the owner may use quotes', 'root=LABEL=r dyndbg="file a.c +p"',
     'root=LABEL=r dyndbg="file a.c +p"'),
    ('trailing newline is stripped', 'root=/dev/vda ro\n',
     'root=/dev/vda ro'),
]


def _outcome(fn):
    try:
        return fn()
    except exception.InvalidBootParameter:
        return INVALID
    except exception.BootParameterDenied:
        return DENIED
    except exception.InvalidCommandLine:
        return INVALID


def _user_part(line):
    return line[len(DEFAULT):].strip()


class TestParameterGrammar(unittest.TestCase):

    def test_params_table(self):
        for label, params, expected in PARAMS:
            with self.subTest(label):
                got = _outcome(lambda: _user_part(domain.build_cmdline(
                    DEFAULT, None, params, ALLOWED, instance='vm-x')))
                self.assertEqual(expected, got)

    def test_user_data_table(self):
        for label, data, expected in USER_DATA:
            with self.subTest(label):
                got = _outcome(lambda: _user_part(domain.build_cmdline(
                    DEFAULT, None, bootparams.from_user_data(
                        data, instance='vm-x'), ALLOWED, instance='vm-x')))
                self.assertEqual(expected, got)

    def test_os_command_line_table(self):
        for label, line, expected in OS_COMMAND_LINE:
            with self.subTest(label):
                got = _outcome(lambda: domain.build_cmdline(
                    DEFAULT, line, ['quiet'], ALLOWED, instance='vm-x',
                    image='img-7'))
                if expected != INVALID:
                    expected += ' quiet'
                self.assertEqual(expected, got)

    def test_accepted_lines_split_as_checked(self):
        # What passes splits the same way for the kernel (any whitespace,
        # 0xA0 included) as for us (ASCII space), and holds no quote.
        for label, params, expected in PARAMS:
            if expected in (INVALID, DENIED):
                continue
            with self.subTest(label):
                line = domain.build_cmdline(DEFAULT, None, params, ALLOWED)
                user = _user_part(line)
                self.assertEqual(user.split(' ') if user else [],
                                 user.replace('\xa0', ' ').split())
                self.assertFalse(set(user) & set('"\'\\\x00'))
                self.assertTrue(all(0x20 <= ord(c) < 0x7f for c in user))

    def test_errors_name_instance_and_are_one_line(self):
        for label, params, expected in PARAMS:
            if expected not in (INVALID, DENIED):
                continue
            with self.subTest(label):
                with self.assertRaises(exception.BootParameterDenied) as cm:
                    domain.build_cmdline(DEFAULT, None, params, ALLOWED,
                                         instance='vm-x')
                msg = cm.exception.message
                self.assertIn('Instance vm-x:', msg)
                self.assertEqual([msg], msg.splitlines())
                self.assertLess(len(msg), 400)

    def test_image_named_for_a_bad_os_command_line(self):
        with self.assertRaises(exception.InvalidCommandLine) as cm:
            domain.build_cmdline(DEFAULT, 'root=/dev/vda\x00', (), ALLOWED,
                                 instance='vm-x', image='img-7')
        self.assertIn('img-7', cm.exception.message)
        self.assertIn('vm-x', cm.exception.message)
        # An InvalidImage: the nova route maps it to ImageUnacceptable.
        self.assertIsInstance(cm.exception, exception.InvalidImage)

    def test_grammar_refusals_are_denials(self):
        # Callers (the nova route maps BootParameterDenied to nova's
        # InvalidInput) refuse grammar failures the same way.
        self.assertTrue(issubclass(exception.InvalidBootParameter,
                                   exception.BootParameterDenied))

    def test_nova_route_call_contract(self):
        # nova_amiboot/virt/driver.py calls build_cmdline(base, None,
        # params, allowed, instance=uuid) with nova's line as the base.
        line = domain.build_cmdline('root=/dev/vda console=ttyS0', None,
                                    ['quiet', 'amiboot.x=1'], ALLOWED,
                                    instance='u-1')
        self.assertEqual('root=/dev/vda console=ttyS0 quiet amiboot.x=1',
                         line)
        self.assertRaises(exception.InvalidBootParameter,
                          domain.build_cmdline, '', None,
                          ['console="ttyS0 init=/bin/sh"'], ALLOWED,
                          instance='u-1')


if __name__ == '__main__':
    unittest.main()
