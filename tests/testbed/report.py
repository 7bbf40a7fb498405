"""Parse the test-bed AMI's serial-console report."""

import base64

BEGIN = 'AMIBOOT-REPORT-BEGIN'
END = 'AMIBOOT-REPORT-END'


def complete(text):
    return BEGIN in text and END in text.split(BEGIN, 1)[1]


def parse(text):
    """Return {key: str} from the last complete report in ``text``."""
    if not complete(text):
        raise ValueError("no complete report in the console log")
    body = text.rsplit(BEGIN, 1)[1].split(END, 1)[0]
    report = {}
    for line in body.splitlines():
        parts = line.strip().split(' ')
        if len(parts) == 3 and parts[0] == 'AMIBOOT-REPORT':
            report[parts[1]] = base64.b64decode(parts[2]).decode(
                'utf-8', 'replace')
        elif len(parts) == 2 and parts[0] == 'AMIBOOT-REPORT':
            report[parts[1]] = ''
    return report
