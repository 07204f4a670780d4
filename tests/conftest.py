"""Test-session rules shared by every layer.

With IVR_REQUIRE_ASTERISK=1 (set by the project's test command and CI) the run fails
unless tests marked ``asterisk`` ran and none was skipped: a green run must mean that the
real-Asterisk layer was exercised.
"""

import os

import pytest

_asterisk = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "asterisk" not in report.keywords:
        return
    if report.skipped:
        _asterisk["skipped"] += 1
    elif report.when == "call":
        _asterisk["passed" if report.passed else "failed"] += 1
    elif report.failed:
        _asterisk["failed"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in _asterisk.items())
    terminalreporter.write_line(f"asterisk-marked tests: {counts}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("IVR_REQUIRE_ASTERISK") != "1":
        return
    if _asterisk["skipped"] or not _asterisk["passed"]:
        print(
            "\nIVR_REQUIRE_ASTERISK=1: real-Asterisk tests must run and pass, none skipped "
            f"(passed={_asterisk['passed']}, skipped={_asterisk['skipped']})"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
