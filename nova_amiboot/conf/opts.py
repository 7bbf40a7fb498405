"""Entry points for oslo-config-generator (``oslo.config.opts``).

``nova_amiboot``: the [amiboot] options, which act in nova (nova's sample
configuration); ``nova_amiboot.local``: the ``amiboot`` command's own
[local] group (its sample adds these to the first).
"""

from nova_amiboot.conf import amiboot
from nova_amiboot.conf import local


def list_opts():
    return [(group, opts) for group, opts in amiboot.list_opts().items()]


def list_local_opts():
    return [(group, opts) for group, opts in local.list_opts().items()]
