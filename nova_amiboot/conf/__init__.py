from oslo_config import cfg

from nova_amiboot.conf import amiboot

CONF = cfg.CONF

amiboot.register_opts(CONF)
