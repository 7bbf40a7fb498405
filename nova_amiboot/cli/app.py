"""amiboot: AMI boot on one host without OpenStack (the embedded default).

A thin command line over nova_amiboot.local, built on cliff (the framework
of the ``openstack`` command). Its commands are entry points of the
``amiboot.cli`` group (setup.cfg), one module per resource: image, server,
cache, flavor and doctor. Every listing and record takes
``-f table|json|value|yaml|csv`` and ``-c COLUMN``; ``amiboot complete``
prints a bash completion script.
"""

import logging as std_logging
import os
import sys

from cliff import app
from cliff import commandmanager
from oslo_config import cfg
from oslo_log import log as logging
import pbr.version

from nova_amiboot.cli import common
from nova_amiboot.conf import amiboot as amiboot_conf
from nova_amiboot.conf import local as local_conf
from nova_amiboot import exception
from nova_amiboot.local import cloud as local_cloud
from nova_amiboot.local import config as local_config
from nova_amiboot import privileged

DEFAULT_CONFIG = '/etc/amiboot/amiboot.conf'
VERSION = pbr.version.VersionInfo('nova-amiboot')


class _OneLine(std_logging.Formatter):
    """``amiboot: error: <first line>``; with --debug, the traceback too."""

    def format(self, record):
        text = record.getMessage().split('\n')[0]
        line = 'amiboot: error: %s' % text
        if record.exc_info:
            return '%s\n%s' % (self.formatException(record.exc_info), line)
        return line


def _error_log():
    # cliff reports a failed command (and a failed start) through the
    # application's LOG: one line on stderr, apart from oslo.log's output.
    log = std_logging.getLogger('amiboot.cli.errors')
    if not log.handlers:
        handler = std_logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        log.addHandler(handler)
        log.propagate = False
    return log


def make_conf(config_file):
    conf = cfg.ConfigOpts()
    amiboot_conf.register_opts(conf)
    local_conf.register_opts(conf)
    logging.register_options(conf)
    files = []
    if config_file:
        if not os.path.isfile(config_file):
            raise exception.InvalidInput(
                reason="config file %s not found" % config_file)
        files = [config_file]
    elif os.path.isfile(DEFAULT_CONFIG):
        files = [DEFAULT_CONFIG]
    conf([], project='amiboot', default_config_files=files)
    return conf


class AmibootApp(app.App):

    LOG = _error_log()

    def __init__(self):
        super().__init__(
            description="Boot AMI triplets (kernel, ramdisk, root "
                        "filesystem) on this host's libvirt, without "
                        "OpenStack; turn whole-disk cloud images and "
                        "stopped instances into AMIs.",
            version=VERSION.version_string(),
            command_manager=commandmanager.CommandManager('amiboot.cli'),
            deferred_help=True)
        self.conf = None
        self._cloud = None
        self.doctor_failed = False

    def build_option_parser(self, description, version, argparse_kwargs=None):
        p = super().build_option_parser(description, version,
                                        argparse_kwargs)
        p.add_argument('--config-file', default=None, metavar='FILE',
                       help='oslo.config file with an [amiboot] section '
                       '(default %s if it exists)' % DEFAULT_CONFIG)
        p.add_argument('--state-dir', default=None, metavar='DIR',
                       help='images, cache and instances (default: %s)'
                       % local_config.default_state_dir())
        p.add_argument('--connect', default='qemu:///system', metavar='URI',
                       help='libvirt URI (default: %(default)s)')
        return p

    def configure_logging(self):
        # oslo.log is set up in initialize_app, once the config is read.
        pass

    def state_dir(self):
        return self.options.state_dir or local_config.default_state_dir()

    def initialize_app(self, argv):
        self.conf = make_conf(self.options.config_file)
        self.conf.set_override('debug', self.options.debug)
        # Warnings, and with --debug everything, go to the terminal.
        self.conf.set_override('use_stderr', True)
        logging.setup(self.conf, 'amiboot')
        if not self.options.debug:
            std_logging.getLogger().setLevel(std_logging.WARNING)
        if os.geteuid() == 0:
            privileged.run_in_process()

    def get_cloud(self):
        if self._cloud is None:
            bar = common.TransferBar() if sys.stderr.isatty() else None
            self._cloud = local_cloud.LocalCloud(
                self.conf, self.state_dir(), self.options.connect,
                progress=bar)
        return self._cloud

    def clean_up(self, cmd, result, err):
        if self._cloud is not None:
            if self._cloud.progress:
                self._cloud.progress.close()
            self._cloud.close()
            self._cloud = None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = AmibootApp()
    try:
        rc = a.run(argv or ['help'])
    except KeyboardInterrupt:
        return 130
    if rc == 0 and a.doctor_failed:
        return 1
    return rc


if __name__ == '__main__':
    sys.exit(main())
