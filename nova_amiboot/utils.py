"""Small helpers shared by the core modules."""

import shutil

from oslo_concurrency import processutils
from oslo_log import log as logging

from nova_amiboot import exception

LOG = logging.getLogger(__name__)


def execute(*cmd, **kwargs):
    """Run a host command through processutils; raise CommandFailed.

    Our callers want one exception type with the command and its stderr in
    the message, not processutils' multi-line dump.
    """
    if shutil.which(cmd[0]) is None and not cmd[0].startswith('/'):
        raise exception.ToolMissing(tool=cmd[0])
    try:
        return processutils.execute(*cmd, **kwargs)
    except processutils.ProcessExecutionError as e:
        raise exception.CommandFailed(
            cmd=' '.join(str(c) for c in cmd[:3]) + (' ...' if len(cmd) > 3
                                                     else ''),
            code=e.exit_code, stderr=(e.stderr or e.stdout or '').strip())
