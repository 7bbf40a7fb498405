"""Boot a triplet through the local libvirt and read its report."""

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid

from nova_amiboot import domain
from nova_amiboot import guest
from tests.testbed import report

BOOT_TIMEOUT = int(os.environ.get('AMIBOOT_BOOT_TIMEOUT', '180'))


@contextlib.contextmanager
def instance_dir(prefix='amiboot-test-'):
    """A scratch instance dir QEMU (user libvirt-qemu) can traverse."""
    path = tempfile.mkdtemp(prefix=prefix, dir='/var/tmp')
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def overlay(base, path, size_gb=1):
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', base, path, '%dG' % size_gb], check=True)
    return path


def boot(host, name, kernel, ramdisk, disk, workdir, cmdline,
         disk_format='qcow2', memory_mb=256, timeout=BOOT_TIMEOUT,
         network=None):
    """Boot, wait for the report, always remove the domain.

    Returns (report dict, console text).
    """
    log = os.path.join(workdir, 'console.log')
    spec = domain.DomainSpec(
        name=name, uuid=str(uuid.uuid4()), memory_mb=memory_mb, vcpus=1,
        kernel=kernel, initrd=ramdisk, cmdline=cmdline, disk_path=disk,
        disk_format=disk_format, console_log=log, virt_type='qemu',
        network=network or domain.Network('user'))
    host.destroy(name)
    try:
        host.define_and_start(domain.build_domain_xml(spec))
        text = guest.wait_for_console(host, name, log, report.complete,
                                      timeout)
    finally:
        host.destroy(name)
    return report.parse(text), text


def boot_prepared(host, prepared, name, timeout=BOOT_TIMEOUT):
    """Boot an instance the spawn pipeline prepared; return (report, log)."""
    host.destroy(name)
    try:
        host.define_and_start(prepared.xml)
        text = guest.wait_for_console(host, name, prepared.console_log,
                                      report.complete, timeout)
    finally:
        host.destroy(name)
    return report.parse(text), text
