"""The cloud tier: a real one-host OpenStack (tools/cloud), driven through
the ``openstack`` command only, with facts read from the guests' serial
consoles (``openstack console log show``).

The cloud comes up once per run (``tools/cloud up`` is idempotent and
cheap when it already runs), with ``AMIBOOT_CLOUD_HOSTS`` compute hosts
(1, the default, or 2: ``tools/cloud up --hosts 2``).
``AMIBOOT_CLOUD_SKIP_UP=1`` uses the cloud as it is. The tests of two
hosts are marked ``twohosts`` and skip on a cloud of one.
"""

import json
import os
import re
import subprocess
import time

import pytest

from tests.testbed import report

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CLOUD = os.path.join(TOP, 'tools', 'cloud')
STATE = os.environ.get('AMIBOOT_CLOUD_DIR', '/var/lib/nova-amiboot-cloud')
# Guest boots under TCG on a shared 2-core host: be generous.
BOOT_TIMEOUT = int(os.environ.get('AMIBOOT_CLOUD_BOOT_TIMEOUT', '300'))
OP_TIMEOUT = int(os.environ.get('AMIBOOT_CLOUD_OP_TIMEOUT', '600'))
BOOT_ID = re.compile(r'AMIBOOT-BOOT-ID (\S+)')


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(os.path.dirname(__file__)):
            item.add_marker(pytest.mark.cloud)


class CommandFailed(Exception):
    pass


class Cloud(object):
    """The ``openstack`` command against the one-host cloud."""

    def __init__(self, env):
        self.env = env

    def run(self, *args, cloud='amicloud', timeout=OP_TIMEOUT, check=True):
        env = dict(self.env, OS_CLOUD=cloud)
        proc = subprocess.run(('openstack',) + args, env=env,
                              capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise CommandFailed('openstack %s: exit %d: %s' % (
                ' '.join(args), proc.returncode, proc.stderr.strip()))
        return proc

    def json(self, *args, **kw):
        return json.loads(self.run(*(args + ('-f', 'json')), **kw).stdout)

    def value(self, *args, **kw):
        return self.run(*(args + ('-f', 'value')), **kw).stdout.strip()

    def server(self, server, **kw):
        return self.json('server', 'show', server, **kw)

    def wait_status(self, server, statuses, timeout=OP_TIMEOUT, **kw):
        """Wait until the server has one of ``statuses`` (not a task)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.server(server, **kw)
            if (info['status'] in statuses
                    and not info.get('OS-EXT-STS:task_state')):
                return info
            if info['status'] == 'ERROR' and 'ERROR' not in statuses:
                raise AssertionError('server %s went to ERROR: %s' % (
                    server, info.get('fault')))
            if time.monotonic() > deadline:
                raise AssertionError(
                    'server %s still %s/%s after %ss, wanted %s' % (
                        server, info['status'],
                        info.get('OS-EXT-STS:task_state'), timeout,
                        statuses))
            time.sleep(3)

    def hosts(self):
        """The cloud's compute hosts (``tools/cloud hosts``).

        Dicts of name, address (ip), nova's instances path and the
        directory (dir) that is that path on the host.
        """
        out = subprocess.run([CLOUD, 'hosts'], check=True,
                             capture_output=True, text=True).stdout
        return [dict(zip(('name', 'ip', 'instances_path', 'dir'),
                         line.split()))
                for line in out.splitlines() if line.strip()]

    def compute(self, action, host):
        """Stop or start one compute host's nova-compute."""
        subprocess.run([CLOUD, 'compute', action, host], check=True,
                       stdin=subprocess.DEVNULL, timeout=OP_TIMEOUT)

    def console(self, server, **kw):
        proc = self.run('console', 'log', 'show', server, check=False, **kw)
        return proc.stdout if proc.returncode == 0 else ''

    def wait_report(self, server, after_boot=None, timeout=BOOT_TIMEOUT,
                    **kw):
        """The report of a boot other than ``after_boot`` (a boot id).

        Returns (boot id, report dict, console text).
        """
        deadline = time.monotonic() + timeout
        text = ''
        while time.monotonic() < deadline:
            text = self.console(server, **kw)
            ids = BOOT_ID.findall(text)
            if ids and ids[-1] != after_boot:
                tail = text.rsplit('AMIBOOT-BOOT-ID ' + ids[-1], 1)[1]
                if report.complete(tail):
                    return ids[-1], report.parse(tail), text
            time.sleep(3)
        raise AssertionError('no new report from %s in %ss; console:\n%s' % (
            server, timeout, text[-3000:]))


@pytest.fixture(scope='session')
def cloud():
    if os.environ.get('AMIBOOT_CLOUD_SKIP_UP') != '1':
        subprocess.run([CLOUD, 'up', '--hosts',
                        os.environ.get('AMIBOOT_CLOUD_HOSTS', '1')],
                       check=True, stdin=subprocess.DEVNULL)
    out = subprocess.run([CLOUD, 'env'], check=True, capture_output=True,
                         text=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        name, _, value = line[len('export '):].partition('=')
        env[name] = value.replace('$PATH', os.environ.get('PATH', ''))
    return Cloud(env)


@pytest.fixture(scope='session')
def keypair(cloud, tmp_path_factory):
    """A key pair of the non-admin user, from a key made here."""
    d = tmp_path_factory.mktemp('key')
    key = d / 'id_ed25519'
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '',
                    '-C', 'amiboot-cloud-tier', '-f', str(key)], check=True)
    name = 'tier-%d' % os.getpid()
    cloud.run('keypair', 'create', '--public-key', str(key) + '.pub', name)
    yield name, (d / 'id_ed25519.pub').read_text().strip()
    cloud.run('keypair', 'delete', name, check=False)


@pytest.fixture(scope='module')
def hosts(cloud):
    """The cloud's compute hosts by name (the two-host tier needs two)."""
    found = {h['name']: h for h in cloud.hosts()}
    if len(found) < 2:
        pytest.skip('the cloud has one compute host (tools/cloud up '
                    '--hosts 2 for two)')
    return found
