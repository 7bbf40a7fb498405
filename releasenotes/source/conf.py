# Release notes of nova-amiboot (reno), built by ``tox -e releasenotes``.

from dulwich import diff_tree
from reno import scanner

extensions = ['reno.sphinxext']

project = 'nova-amiboot Release Notes'
copyright = 'nova-amiboot developers'
master_doc = 'index'
exclude_patterns = []
html_theme = 'alabaster'
# Built from the git history: no version of its own.
version = ''
release = ''

# reno 4.1 stops with "Unrecognized changes" at a merge commit in which a
# note is new against one parent and modified against the other (merge
# e2ba8a0, one-host-cloud-*.yaml). The note was added earlier on the side
# that brought it, which reno reads too: at the merge, it is a
# modification. Without this, neither ``reno report`` nor this build runs.
_aggregate_changes = scanner._ChangeAggregator.aggregate_changes


def _merge_add_is_modify(self, walk_entry, changes):
    changes = list(changes)
    if changes and all(isinstance(c, list) for c in changes):
        modified = {c.new.path for parent in changes for c in parent
                    if c.type == diff_tree.CHANGE_MODIFY}
        changes = [[c for c in parent
                    if not (c.type == diff_tree.CHANGE_ADD
                            and c.new.path in modified)]
                   for parent in changes]
    return _aggregate_changes(self, walk_entry, changes)


scanner._ChangeAggregator.aggregate_changes = _merge_add_is_modify
