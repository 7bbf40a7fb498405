"""The local libvirt, for the ``amiboot`` command and the tests.

Nova drives libvirt itself; this wrapper is what the embedded default uses:
define and start a domain, follow its serial log, and remove it cleanly.
"""

import time
import unicodedata

import libvirt
from oslo_log import log as logging

from nova_amiboot import domain
from nova_amiboot import exception
from nova_amiboot import utils

LOG = logging.getLogger(__name__)


def _ignore_libvirt_errors(_ctx, _err):
    # libvirt prints every error to stderr by default, including the
    # "no domain" that lookup() turns into None; real errors reach the
    # caller as libvirtError anyway.
    pass


libvirt.registerErrorHandler(_ignore_libvirt_errors, None)


class Host(object):
    def __init__(self, uri='qemu:///system'):
        self.uri = uri
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = libvirt.open(self.uri)
        return self._conn

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def lookup(self, name):
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def define_and_start(self, xml):
        dom = self.conn.defineXML(xml)
        try:
            dom.create()
        except libvirt.libvirtError as e:
            dom.undefine()
            raise exception.GuestError(name=dom.name(), reason=str(e))
        return dom

    def is_running(self, name):
        dom = self.lookup(name)
        return dom is not None and dom.isActive() == 1

    def destroy(self, name, undefine=True):
        """Stop the domain if it runs; undefine it. Missing is fine.

        By name, for test beds that own their names; the embedded route
        uses destroy_owned().
        """
        dom = self.lookup(name)
        if dom is not None:
            self._destroy(dom, undefine)

    def _destroy(self, dom, undefine=True):
        if dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                if dom.isActive():
                    raise
                LOG.debug("destroy of %s raced its shutdown: %s",
                          dom.name(), e)
        if undefine:
            dom.undefine()

    # --- domains with an owner mark (the embedded route) ------------------

    @staticmethod
    def owner_of(dom):
        """The domain.Owner in ``dom``'s metadata, or None."""
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                domain.OWNER_NS)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise
        return domain.parse_owner(text)

    def owned(self, owner, name=None):
        """The domain that ``owner`` made, or None when it has none.

        Found by the instance's uuid (which is the domain's), never by
        name, and returned only with ``owner``'s mark in its metadata:
        anything else is DomainNotOwned.
        """
        try:
            dom = self.conn.lookupByUUIDString(owner.instance)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        if self.owner_of(dom) != owner:
            raise exception.DomainNotOwned(
                instance=name or owner.instance, domain=dom.name(),
                state_dir=owner.state_dir)
        return dom

    def is_running_owned(self, owner, name=None):
        dom = self.owned(owner, name)
        return dom is not None and dom.isActive() == 1

    def destroy_owned(self, owner, name=None, undefine=True):
        """destroy() for the domain ``owner`` made; missing is fine."""
        dom = self.owned(owner, name)
        if dom is not None:
            self._destroy(dom, undefine)
        return dom is not None


def read_console(path):
    """The serial log as text ('' when the guest has not written yet)."""
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except FileNotFoundError:
        return ''


def wait_for_console(host, name, log_path, done, timeout,
                     progress=None, poll=0.5, owner=None):
    """Wait until ``done(text)`` is true for the serial log of ``name``.

    With ``owner`` (a domain.Owner), the domain is the one it made, not
    whatever has the name.

    Returns the log text. Raises GuestError when the guest stops first or
    the timeout passes, with the log's tail in the message so the operator
    sees why.
    """
    start = time.monotonic()
    text = ''

    def look():
        # The log text when done, None to look again after ``poll``.
        nonlocal text
        text = read_console(log_path)
        if done(text):
            return text
        running = (host.is_running(name) if owner is None
                   else host.is_running_owned(owner, name))
        if not running:
            # The last lines may land after the domain stopped: one more
            # look after ``poll`` (a grace delay, not a poll).
            time.sleep(poll)
            text = read_console(log_path)
            if done(text):
                return text
            raise exception.GuestStopped(name=name, reason="stopped before "
                                         "it was ready; "
                                         "console ends with: %s" % _tail(text))
        return None

    ready = utils.poll(look, timeout, poll, until=lambda t: t is not None,
                       before_sleep=progress and (
                           lambda: progress(time.monotonic() - start)))
    if ready is None:
        raise exception.GuestError(name=name, reason="not ready after %ds; "
                                   "console ends with: %s"
                                   % (timeout, _tail(text)))
    return ready


def _tail(text, lines=8, limit=600):
    """The last ``lines`` of the console as one escaped, bounded line."""
    tail = ' | '.join(escape(line) for line in
                      text.rstrip().splitlines()[-lines:])
    return tail if len(tail) <= limit else '...' + tail[-limit:]


# Control, format (bidi overrides), surrogate, private-use, unassigned.
_UNPRINTABLE = frozenset({'Cc', 'Cf', 'Cs', 'Co', 'Cn'})


def _escape_char(c):
    o = ord(c)
    return '\\x%02x' % o if o < 0x100 else '\\u%04x' % o


def escape(text, keep='\t'):
    """``text`` with every control or format character escaped (\\xNN).

    Console text is the guest's: terminal escapes (ESC, CSI, OSC), carriage
    returns, C1 controls and bidi overrides must not reach the operator's
    terminal as they are. ``keep``: characters left alone.
    """
    return ''.join(
        c if c in keep or unicodedata.category(c) not in _UNPRINTABLE
        else _escape_char(c) for c in text)


def printable_console(text):
    """The console for a terminal: lines kept, everything else escaped.

    A serial console ends its lines with CR LF: that pair is a line end; a
    lone CR (which would let a line overwrite itself) is escaped.
    """
    return escape(text.replace('\r\n', '\n'), keep='\t\n')
