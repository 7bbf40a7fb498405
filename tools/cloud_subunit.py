"""Count a Tempest subunit v2 stream: ran, passed, skipped, failed.

``tempest run`` exits 0 even when tests fail; this reads the stream.
Prints the counts, then each failure and each skip reason with its count.

    cloud_subunit.py RESULTS.subunit [MINUTES]
"""

import collections
import sys

import subunit
import testtools


class Counter(testtools.StreamResult):
    def __init__(self):
        super().__init__()
        self.results = {}
        self.reasons = {}

    def status(self, test_id=None, test_status=None, file_name=None,
               file_bytes=None, **kw):
        if test_id is None:
            return
        if test_status in ('success', 'fail', 'skip', 'xfail', 'uxsuccess'):
            self.results[test_id] = test_status
        if file_name == 'reason' and file_bytes:
            self.reasons.setdefault(test_id, b'')
            self.reasons[test_id] += bytes(file_bytes)


def main():
    counter = Counter()
    with open(sys.argv[1], 'rb') as f:
        subunit.ByteStreamToStreamResult(f, non_subunit_name='stdout').run(
            counter)
    # setUpClass/tearDownClass entries are not tests
    tests = {t: s for t, s in counter.results.items()
             if not t.startswith(('setUpClass', 'tearDownClass'))}
    fixtures = {t: s for t, s in counter.results.items() if t not in tests}
    by = collections.Counter(tests.values())
    minutes = (' in %s min' % sys.argv[2]) if len(sys.argv) > 2 else ''
    print('%d ran%s: %d passed, %d skipped, %d failed' % (
        len(tests), minutes, by['success'] + by['xfail'], by['skip'],
        by['fail'] + by['uxsuccess']))
    for test, status in sorted(list(tests.items()) + list(fixtures.items())):
        if status == 'fail':
            print('FAILED', test)
    reasons = collections.Counter(
        counter.reasons.get(t, b'').decode('utf-8', 'replace').strip()
        for t, s in tests.items() if s == 'skip')
    for reason, n in reasons.most_common():
        print('SKIPPED %3d %s' % (n, reason))


if __name__ == '__main__':
    main()
