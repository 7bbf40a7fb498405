"""No module starts a tool that reads untrusted bytes outside the sandbox.

Every call that starts a process (subprocess, processutils, os.exec*/
spawn*/system/posix_spawn, utils.execute*) in nova_amiboot is read from
the source: if the program it names, literally or through a local
table of literals, is one of sandbox.TOOLS, the test fails. Only
nova_amiboot/sandbox.py itself starts them (under bwrap). utils.execute
also refuses them at run time (checked below).
"""

import ast
import os
import tempfile
import unittest

import nova_amiboot
from nova_amiboot import exception
from nova_amiboot import sandbox
from nova_amiboot import utils

TOP = os.path.dirname(nova_amiboot.__file__)
# Starters of processes, by the name they are called through.
STARTERS = {
    'subprocess': {'run', 'Popen', 'call', 'check_call', 'check_output',
                   'getoutput', 'getstatusoutput'},
    'processutils': {'execute', 'trycmd', 'ssh_execute'},
    'utils': {'execute', 'execute_quick'},
    'os': {'system', 'popen', 'execv', 'execve', 'execvp', 'execvpe',
           'execl', 'execle', 'execlp', 'execlpe', 'spawnv', 'spawnve',
           'spawnvp', 'spawnvpe', 'spawnl', 'spawnlp', 'posix_spawn',
           'posix_spawnp'},
}
# Allowed outside the sandbox: qemu-nbd -c/-d needs root for the kernel
# device (nbd hosts only; the privileged side opens every file it names).
ALLOWED = {'qemu-nbd'}


def _literal_programs(node, tables):
    """Program names a call argument can be, as far as literals tell."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value.split()[0]} if node.value.strip() else set()
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return _literal_programs(node.elts[0], tables)
    if isinstance(node, ast.BinOp):
        return _literal_programs(node.left, tables)
    if isinstance(node, ast.Name) and node.id in tables:
        return tables[node.id]
    if isinstance(node, ast.Starred):
        return _literal_programs(node.value, tables)
    return set()


def _tables(tree):
    """name -> program names for local lists/dicts of command literals."""
    tables = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Subscript):
                value = value.value
            progs = set()
            if isinstance(value, ast.Dict):
                for v in value.values:
                    progs |= _literal_programs(v, {})
            else:
                progs |= _literal_programs(value, {})
            if progs:
                tables.setdefault(node.targets[0].id, set()).update(progs)
    return tables


def violations(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    tables = _tables(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or \
                not isinstance(node.func, ast.Attribute) or \
                not isinstance(node.func.value, ast.Name):
            continue
        module, name = node.func.value.id, node.func.attr
        if name not in STARTERS.get(module, ()):
            continue
        progs = set()
        for arg in node.args[:1]:
            progs |= _literal_programs(arg, tables)
        for kw in node.keywords:
            if kw.arg in ('args', 'cmd'):
                progs |= _literal_programs(kw.value, tables)
        for prog in progs:
            tool = os.path.basename(prog)
            if tool in sandbox.TOOLS and tool not in ALLOWED:
                found.append('%s:%d %s.%s(%s)' % (
                    os.path.relpath(path, TOP), node.lineno, module, name,
                    tool))
    return found


class TestNoToolOutsideTheSandbox(unittest.TestCase):

    def test_no_module_starts_a_tool_outside_the_runner(self):
        found = []
        for dirpath, _dirs, files in os.walk(TOP):
            for name in files:
                path = os.path.join(dirpath, name)
                if name.endswith('.py') and path != sandbox.__file__:
                    found += violations(path)
        self.assertEqual([], found)

    def test_the_guard_sees_a_violation(self):
        # The same reader on code that does it wrong, every shape.
        src = '\n'.join([
            "import subprocess, os",
            "from oslo_concurrency import processutils",
            "from nova_amiboot import utils",
            "subprocess.run(['e2fsck', '-fn', 'x'])",
            "processutils.execute('qemu-img', 'info', 'x')",
            "utils.execute_quick('/usr/sbin/debugfs', '-R', 'ls')",
            "os.execvp('blkid', ['blkid', 'x'])",
            "TOOL = {'.xz': ['xz', '-dc']}['.xz']",
            "subprocess.Popen(TOOL + ['m.ko.xz'])",
            "subprocess.run(['qemu-nbd', '-d', '/dev/nbd0'])",
        ])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, 'bad.py')
            with open(path, 'w') as f:
                f.write(src)
            found = violations(path)
        self.assertEqual(['e2fsck', 'qemu-img', 'debugfs', 'blkid', 'xz'],
                         [v.rsplit('(', 1)[1].rstrip(')') for v in found])

    def test_utils_execute_refuses_them(self):
        for tool in sorted(sandbox.TOOLS):
            with self.assertRaises(exception.AmibootException):
                utils.execute(tool, '--version')
            with self.assertRaises(exception.AmibootException):
                utils.execute_quick('/usr/bin/' + tool, '--version')
