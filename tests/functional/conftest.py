"""pytest hooks of the functional tests."""

from tests.functional import faults


def pytest_terminal_summary(terminalreporter):
    # The reliability figures of the fault and fuzz tests, in CI's log.
    if faults.FIGURES:
        terminalreporter.section('reliability figures')
        for line in faults.FIGURES:
            terminalreporter.write_line(line)
