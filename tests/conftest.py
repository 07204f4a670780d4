"""Test-session rules shared by every layer.

``IVR_REQUIRE_REAL=asterisk,postgres,sip,web`` (set by the project's test command, so by CI)
makes the run fail unless the tests with each named marker ran and passed with none
skipped: a green run must mean the real Asterisk, the real PostgreSQL, a real SIP
phone and a real browser were exercised.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

REAL_MARKERS = ("asterisk", "postgres", "sip", "web")


@pytest.fixture
def ivr_cli(capsys):
    """Run ``ivr ARGS`` in process; returns stdout, or stderr when ``expect`` is not 0."""
    from ivr.cli import main

    def run(*args: str, expect: int = 0) -> str:
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == expect, (args, out, err)
        return out if expect == 0 else err

    return run
_counts: dict[str, Counter[str]] = {m: Counter() for m in REAL_MARKERS}


def _required() -> list[str]:
    raw = os.environ.get("IVR_REQUIRE_REAL", "")
    return [m.strip() for m in raw.split(",") if m.strip()]


# Each test's real markers travel on its reports (report.keywords also holds parameter
# ids, so a test parametrized with the value "asterisk" would look marked; and under
# pytest-xdist the items live in the workers, the counting in the controller).
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    marks = sorted(m for m in REAL_MARKERS if item.get_closest_marker(m) is not None)
    report.user_properties.append(("real_markers", ",".join(marks)))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    marks = dict(report.user_properties).get("real_markers", "")
    for marker in REAL_MARKERS:
        if marker not in marks.split(","):
            continue
        if report.skipped:
            _counts[marker]["skipped"] += 1
        elif report.when == "call":
            _counts[marker]["passed" if report.passed else "failed"] += 1
        elif report.failed:
            _counts[marker]["errors"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for marker in REAL_MARKERS:
        c = _counts[marker]
        terminalreporter.write_line(
            f"{marker}-marked tests: {c['passed']} passed, {c['failed']} failed, "
            f"{c['errors']} errors, {c['skipped']} skipped"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for marker in _required():
        c = _counts.get(marker, Counter())
        if c["skipped"] or not c["passed"]:
            print(
                f"\nIVR_REQUIRE_REAL: the {marker}-marked tests must run and pass, none "
                f"skipped (passed={c['passed']}, skipped={c['skipped']})"
            )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
