"""The failed-SIP-attempt counter (ivr.sipguard.FailureCounter) on an injected clock, the
events it counts, and the ACL the blocks are rendered into."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from ivr import sip
from ivr.config import ConfigError, load_settings
from ivr.db import Database
from ivr.db.migrate import ensure_schema
from ivr.sipguard import (
    FailureCounter,
    SipGuard,
    add_block,
    drop_ended,
    list_blocks,
    remove_block,
    source_address,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_threshold_within_the_window_blocks_once(clock: Clock):
    counter = FailureCounter(3, window=60, block_seconds=600, clock=clock)
    assert [counter.failed("203.0.113.9") for _ in range(3)] == [False, False, True]
    assert counter.is_blocked("203.0.113.9")
    # A blocked address is not counted again: no second block, nothing piles up.
    assert not any(counter.failed("203.0.113.9") for _ in range(50))
    assert counter.count("203.0.113.9") == 0
    # Other addresses are counted on their own.
    assert not counter.is_blocked("203.0.113.10")
    assert counter.failed("203.0.113.10") is False
    assert counter.count("203.0.113.10") == 1


def test_failures_older_than_the_window_do_not_count(clock: Clock):
    counter = FailureCounter(3, window=60, block_seconds=600, clock=clock)
    counter.failed("198.51.100.1")
    clock.now += 30
    counter.failed("198.51.100.1")
    clock.now += 31  # the first one is now 61 s old
    assert counter.failed("198.51.100.1") is False
    assert counter.count("198.51.100.1") == 2
    clock.now += 1
    assert counter.failed("198.51.100.1") is True


def test_a_block_ends_and_the_count_starts_afresh(clock: Clock):
    counter = FailureCounter(2, window=60, block_seconds=600, clock=clock)
    counter.failed("192.0.2.7")
    assert counter.failed("192.0.2.7")
    assert counter.next_end() == 600
    clock.now += 599
    assert counter.is_blocked("192.0.2.7") and not counter.failed("192.0.2.7")
    clock.now += 1
    assert not counter.is_blocked("192.0.2.7") and counter.next_end() is None
    assert counter.failed("192.0.2.7") is False  # the failures while blocked were not kept
    assert counter.failed("192.0.2.7") is True


def test_lift_resets_and_sync_follows_the_table(clock: Clock):
    counter = FailureCounter(2, window=60, block_seconds=600, clock=clock)
    counter.failed("192.0.2.1")
    counter.lift("192.0.2.1")
    assert counter.count("192.0.2.1") == 0
    assert counter.failed("192.0.2.1") is False
    assert counter.failed("192.0.2.1") is True
    # The table says: 192.0.2.1 was lifted (ivr sip blocks remove), another server blocked
    # 192.0.2.2 for 30 s more.
    counter.sync({"192.0.2.2": 30})
    assert not counter.is_blocked("192.0.2.1") and counter.is_blocked("192.0.2.2")
    assert counter.failed("192.0.2.2") is False and counter.count("192.0.2.2") == 0
    clock.now += 30
    assert not counter.is_blocked("192.0.2.2")


def test_zero_failures_turns_it_off(clock: Clock):
    counter = FailureCounter(0, window=60, block_seconds=600, clock=clock)
    assert not any(counter.failed("192.0.2.1") for _ in range(1000))
    assert counter.sources == 0


def test_the_addresses_counted_are_bounded(clock: Clock):
    counter = FailureCounter(5, window=60, block_seconds=600, clock=clock, max_sources=100)
    for i in range(1000):
        counter.failed(f"10.0.{i // 256}.{i % 256}")
    assert counter.sources == 100
    # the latest are kept, and stale ones go first
    assert counter.count("10.0.3.231") == 1 and counter.count("10.0.0.0") == 0
    clock.now += 61
    counter.prune()
    assert counter.sources == 0


def test_source_addresses_of_security_events():
    assert source_address("IPV4/UDP/127.0.0.4/5060") == "127.0.0.4"
    assert source_address("IPV4/TCP/203.0.113.9/40512") == "203.0.113.9"
    assert source_address("IPV6/UDP/[2001:db8::0:1]/5060") == "2001:db8::1"
    assert source_address("IPV6/UDP/2001:db8::1/5060") == "2001:db8::1"
    for bad in ("", "IPV4/UDP", "IPV4/UDP/not-an-address/5060", "IPV4/UDP/1.2.3/5060"):
        assert source_address(bad) is None


async def test_only_failed_pjsip_attempts_are_counted(tmp_path):
    settings = load_settings(environ={}).replace(data_dir=tmp_path, sip_block_failures=3)
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    ensure_schema(db.engine, auto=True)
    guard = SipGuard(settings, db, None, lambda: True)

    def event(name: str, address: str = "IPV4/UDP/192.0.2.5/5060", service: str = "PJSIP"):
        guard.on_event({"Event": name, "Service": service, "RemoteAddress": address,
                        "AccountID": "desk"})

    for name in ("ChallengeSent", "SuccessfulAuth", "FailedACL"):
        event(name)
    event("InvalidPassword", service="AMI")
    event("InvalidAccountID", address="garbage")
    assert guard.counter.sources == 0
    event("ChallengeResponseFailed")
    assert guard.counter.count("192.0.2.5") == 1
    # An unknown user's answered challenge: its request was counted as InvalidAccountID
    # already (Asterisk reports both for it), so the stand-in account's failure is not.
    guard.on_event({"Event": "ChallengeResponseFailed", "Service": "PJSIP",
                    "RemoteAddress": "IPV4/UDP/192.0.2.5/5060", "AccountID": "<unknown>"})
    assert guard.counter.count("192.0.2.5") == 1
    event("InvalidAccountID")
    assert guard.counter.count("192.0.2.5") == 2
    db.dispose()


def test_settings_are_checked():
    assert load_settings(environ={}).sip_block_failures == 10
    env = {"IVR_SIP_BLOCK_FAILURES": "0", "IVR_SIP_BLOCK_WINDOW": "30",
           "IVR_SIP_BLOCK_SECONDS": "5"}
    s = load_settings(environ=env)
    assert (s.sip_block_failures, s.sip_block_window, s.sip_block_seconds) == (0, 30.0, 5.0)
    for name, value in (("FAILURES", "-1"), ("WINDOW", "0"), ("SECONDS", "-5")):
        with pytest.raises(ConfigError, match=f"sip_block_{name.lower()}"):
            load_settings(environ={f"IVR_SIP_BLOCK_{name}": value})


def test_blocks_in_the_table_and_the_acl(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    ensure_schema(db.engine, auto=True)
    now = datetime.now(UTC)
    key = b"k" * 32
    with db.transaction() as s:
        assert add_block(s, "203.0.113.9", "test", 600, now) is not None
        assert add_block(s, "203.0.113.9", "again", 600, now) is None  # live already
        assert add_block(s, "2001:db8::0:1", "test", 10, now) is not None
        with pytest.raises(sip.SipError):
            add_block(s, "203.0.113.9/32\ndeny = 0.0.0.0/0", "test", 600, now)
    with db.reading() as s:
        text = sip.render_pjsip(s, key=key)
        assert "[ivr-blocked]\ntype = acl\n" in text
        assert "deny = 203.0.113.9/32\n" in text and "deny = 2001:db8::1/128\n" in text
        assert {b.address for b in list_blocks(s)} == {"203.0.113.9", "2001:db8::1"}
        # 11 s later the IPv6 block has ended: not rendered, then dropped
        later = now + timedelta(seconds=11)
        assert "2001:db8::1" not in sip.render_pjsip(s, key=key, now=later)
    with db.transaction() as s:
        assert drop_ended(s, later) == ["2001:db8::1"]
        remove_block(s, "203.0.113.9")
        with pytest.raises(sip.SipNotFound):
            remove_block(s, "203.0.113.9")
    with db.reading() as s:
        assert "ivr-blocked" not in sip.render_pjsip(s, key=key)
        # an ended block's row is reused by the next block of the address
    with db.transaction() as s:
        add_block(s, "198.51.100.1", "first", 1, now - timedelta(seconds=5))
        assert add_block(s, "198.51.100.1", "second", 600, now) is not None
        assert [b.reason for b in list_blocks(s)] == ["second"]
    db.dispose()


async def test_the_guard_records_applies_and_lifts_a_block(tmp_path):
    """The guard's own loop with the database and an apply that records what the
    instance would be given (the real reload: tests/sip/test_sip_guard.py)."""
    settings = load_settings(environ={}).replace(
        data_dir=tmp_path, sip_block_failures=2, sip_block_seconds=0.5)
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    ensure_schema(db.engine, auto=True)
    given: list[list[str]] = []

    def apply() -> bool:
        with db.reading() as s:
            given.append(sip.blocked_addresses(s, datetime.now(UTC)))
        return True

    async def until(predicate, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)

    guard = SipGuard(settings, db, None, apply, check_interval=0.2)
    guard.start()
    try:
        await until(lambda: guard.applied == frozenset())
        for _ in range(2):
            guard.on_event({"Event": "InvalidPassword", "Service": "PJSIP",
                            "RemoteAddress": "IPV4/UDP/192.0.2.5/5060"})
        await until(lambda: guard.applied == {"192.0.2.5"})
        with db.reading() as s:
            (block,) = list_blocks(s)
            assert "2 failed SIP attempts within 60s" in block.reason
        await until(lambda: guard.applied == frozenset())  # ended, lifted
        # Applied on changes only: not at the start with no block (the instance's objects
        # were written from the table when it started).
        assert given == [["192.0.2.5"], []]
        with db.reading() as s:
            assert not list_blocks(s, datetime.now(UTC) - timedelta(days=1))  # row gone
    finally:
        await guard.close()
        db.dispose()
