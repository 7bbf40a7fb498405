"""amiboot cache ...: the bases in _base and who uses them."""

import os

from nova_amiboot.cli import common


class ListCache(common.Lister):
    """List cached bases (_base) and the instances using them."""

    def take_action(self, a):
        cloud = self.cloud
        rows = cloud.cache.list()
        names = {i.uuid: i.name for i in cloud.list_instances()}
        for r in rows:
            r['users'] = ' '.join(names.get(os.path.basename(u),
                                            os.path.basename(u))
                                  for u in r['users'])
        return self.rows(a, ('path', 'size', 'disk_usage', 'age', 'users'),
                         rows)


class CleanCache(common.ShowOne):
    """Remove cached bases that no instance uses."""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--min-age', type=int, metavar='SECONDS',
                       help='only bases unused this long (default: '
                       '[local] image_cache_min_age_seconds)')
        return p

    def take_action(self, a):
        return self.record(a, {'removed': self.cloud.cache.clean(
            min_age=a.min_age)})
