"""What every amiboot command shares: bases, columns, progress.

Errors are cliff's: a command raises, the application's error logger
prints one line (``amiboot: error: ...``; with --debug the traceback) and
the exit status is 1. Nested values are osc-lib's formattable columns:
JSON text in a table, the structure itself with ``-f json|yaml``.
"""

import dataclasses
import json
import sys

from cliff import columns
from cliff import command
from cliff import lister
from cliff import show
from osc_lib.cli import format_columns
import tqdm


class WordsColumn(format_columns.ListColumn):
    """A list of words in its own order (a load order stays one)."""

    def human_readable(self):
        return ' '.join(self._value or ())


class JSONColumn(columns.FormattableColumn):
    """A dict (or a list of dicts) as sorted JSON text in a table."""

    def human_readable(self):
        return json.dumps(self._value, sort_keys=True)

    def machine_readable(self):
        return self._value


def column(value):
    """``value`` as a table cell: lists and dicts become columns."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return WordsColumn(value)
    if isinstance(value, (dict, list)):
        return JSONColumn(value)
    return value


def image_row(meta):
    d = dataclasses.asdict(meta)
    d.update(d.pop('properties'))
    return d


class _Base(object):
    """A command; ``cloud`` is the local cloud, opened on first use."""

    needs_cloud = True

    @property
    def cloud(self):
        return self.app.get_cloud() if self.needs_cloud else None


class Command(_Base, command.Command):
    pass


class ShowOne(_Base, show.ShowOne):

    def record(self, parsed_args, data):
        cols = tuple(sorted(data))
        return cols, tuple(column(data[c]) for c in cols)


class Lister(_Base, lister.Lister):

    def rows(self, parsed_args, cols, data):
        return cols, [tuple(column(r.get(c, '')) for c in cols)
                      for r in data]


class TransferBar(object):
    """tqdm progress bars for copies, downloads and conversions.

    Called as ``bar(label, done, total)``; a new label starts a new bar.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.label = None
        self.bar = None

    def __call__(self, label, done, total):
        if label != self.label:
            self.close()
            self.label = label
            self.bar = tqdm.tqdm(total=total or None, desc=label[:40],
                                 unit='B', unit_scale=True,
                                 unit_divisor=1024, file=self.stream,
                                 leave=True, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.label = None


class Elapsed(object):
    """A spinner with elapsed seconds while waiting for a guest."""

    def __init__(self, label, stream=None):
        self.bar = tqdm.tqdm(desc=label, file=stream or sys.stderr,
                             bar_format='{desc}: {elapsed}', leave=True,
                             disable=None)

    def __call__(self, elapsed):
        self.bar.refresh()

    def done(self):
        self.bar.close()


# --- command bases -------------------------------------------------------
