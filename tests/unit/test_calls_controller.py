"""The call controller (ivr.live.calls) and recovery (ivr.live.recovery): outcomes, warning times,
holds, and the recovery sweep.

Recovery runs against a small fake AMI (AstDB and live channels in dictionaries) and the
real ledger on a fresh SQLite database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from ivr.ami import AmiActionError, AmiError
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.db.models import Account, Cdr, EntryKind, Reservation, ReservationStatus
from ivr.live.calls import ASTDB_FAMILY, CallController, CallKey, CallOutcome, LiveCall
from ivr.live.charging import Charging
from ivr.live.recovery import FORGET_CHANNEL, Recovery, RecoveryReport
from ivr.money.ledger import Grant, Ledger, credit
from ivr.rating import MAX_CALL_SECONDS
from ivr.testing.access import CardInHand, create_test_plan, new_card

# --------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("record", "status", "billsec"),
    [
        ("ANSWER,5407", "ANSWER", 5),
        ("ANSWER,7400", "ANSWER", 7),
        ("ANSWER,2998", "ANSWER", 3),  # a callee who hung up 3.000 s after answering
        ("ANSWER,2499", "ANSWER", 2),  # to the nearest second
        ("ANSWER,2500", "ANSWER", 3),  # half up
        ("ANSWER,499", "ANSWER", 0),  # under half a second: free
        ("ANSWER,999", "ANSWER", 1),
        ("ANSWER,1000", "ANSWER", 1),
        ("ANSWER,0", "ANSWER", 0),
        ("ANSWER, 3000 ", "ANSWER", 3),
        ("NOANSWER,0", "NOANSWER", 0),
        ("BUSY,0", "BUSY", 0),
        ("CHANUNAVAIL,0", "CHANUNAVAIL", 0),
        ("CONGESTION", "CONGESTION", 0),  # no length at all
        ("ANSWER,", "ANSWER", 0),
        ("ANSWER,abc", "ANSWER", 0),
        ("ANSWER,-250", "ANSWER", 0),  # a clock step backwards: never negative
        ("ANSWER,12.5", "ANSWER", 0),
        (",0", "UNKNOWN", 0),  # DIALSTATUS was empty
        ("", "UNKNOWN", 0),
    ],
)
def test_call_outcome_parse(record, status, billsec):
    assert CallOutcome.parse(record) == CallOutcome(status, billsec)


# --------------------------------------------------------------------------- warnings


@pytest.fixture
def controller() -> CallController:
    return CallController(None, low_balance_warning=60,
                          final_warning=10)


@pytest.mark.parametrize(
    ("granted", "times"),
    [
        (3600, [("warning", 3540), ("final", 3590)]),
        (300, [("warning", 240), ("final", 290)]),
        (71, [("warning", 11), ("final", 61)]),
        (61, [("warning", 1), ("final", 51)]),
        # At most the low-balance time: the warning comes at once (half a second in).
        (60, [("warning", 0.5), ("final", 50)]),
        (30, [("warning", 0.5), ("final", 20)]),
        # Less than MIN_WARNING_GAP (3 s) between them: only the final one.
        (13, [("final", 3)]),
        (11, [("final", 1)]),
        # Too short for a final warning: the first one alone, at once.
        (10, [("warning", 0.5)]),
        (8, [("warning", 0.5)]),
        (1, [("warning", 0.5)]),
    ],
)
def test_warning_times(controller, granted, times):
    assert controller.warning_times(granted) == times


def test_warning_times_are_ordered_and_within_the_call(controller):
    for granted in range(1, 400):
        times = controller.warning_times(granted)
        assert times, granted  # every call is warned at least once
        ats = [at for _, at in times]
        assert ats == sorted(ats) and all(0 < at < granted for at in ats), granted
        assert [kind for kind, _ in times] in (["warning", "final"], ["warning"], ["final"])
        if len(ats) == 2:
            assert ats[1] - ats[0] >= 3


@pytest.mark.parametrize(("low", "final"), [(10, 10), (5, 10)])
def test_no_low_balance_warning_when_it_would_not_come_first(low, final):
    c = CallController(None, low_balance_warning=low,
                       final_warning=final)
    assert c.warning_times(300) == [("final", 290)]
    assert c.warning_times(5) == []


def test_seconds_left_on_a_fake_clock():
    now = [100.0]
    c = CallController(None, clock=lambda: now[0])
    call = LiveCall(CallKey.parse("u.1-1"), "PJSIP/in-1", 1, granted=90)
    assert c.seconds_left(call) == 90  # not answered yet
    call.answered_at = 100.0
    now[0] = 130.4
    assert c.seconds_left(call) == 60
    now[0] = 500.0
    assert c.seconds_left(call) == 0


# --------------------------------------------------------------------------- recovery


class FakeAmi:
    """AstDB and live channels as dictionaries; answers like Asterisk's AMI does."""

    def __init__(self) -> None:
        self.connected = True
        self.astdb: dict[tuple[str, str], str] = {}
        self.channels: dict[str, str] = {}  # channel name -> its uniqueid
        self.variables: dict[str, dict[str, str]] = {}  # channel name -> its variables
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, AmiError] = {}  # action name -> error to raise
        # Called after the first DBGet of a key finds nothing (a call ending meanwhile).
        self.after_miss: Callable[[str], None] | None = None

    def on_event(self, pattern: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        return lambda: None

    async def action(self, name: str, **headers: Any) -> Any:
        if name == "Originate" and headers.get("Channel") == FORGET_CHANNEL:
            # What the ivr-forget context does (dialplan/ivr-access.conf).
            assert headers["Variable"].startswith("__IVR_FORGET=")
            name, headers = "forget", {"Key": headers["Variable"].split("=", 1)[1]}
        self.actions.append((name, headers))
        if name in self.fail:
            raise self.fail[name]
        if name == "DBGet":
            key = (headers["Family"], headers["Key"])
            if key not in self.astdb:
                if self.after_miss is not None:
                    self.after_miss(headers["Key"])
                    self.after_miss = None
                raise AmiActionError(name, {"Response": "Error",  # type: ignore[arg-type]
                                            "Message": "Database entry not found"})
            reply = [
                {"Response": "Success", "Message": "Result will follow"},
                {"Event": "DBGetResponse", "Family": key[0], "Key": key[1],
                 "Val": self.astdb[key]},
                {"Event": "DBGetComplete", "EventList": "Complete", "ListItems": "1"},
            ]
            # panoramisk returns the whole event list unless told as_list=False (a reply
            # with "EventList: start" is a list by itself).
            return reply[0] if headers.get("as_list") is False else reply
        if name == "forget":
            self.astdb.pop((ASTDB_FAMILY, headers["Key"]), None)
            return {"Response": "Success", "Message": "Originate successfully queued"}
        if name == "Getvar":
            channel = headers["Channel"]
            if channel not in self.channels:
                raise AmiActionError(name, {"Response": "Error",  # type: ignore[arg-type]
                                            "Message": "No such channel"})
            value = (self.channels[channel] if headers["Variable"] == "CHANNEL(uniqueid)"
                     else self.variables.get(channel, {}).get(headers["Variable"], ""))
            return {"Response": "Success", "Variable": headers["Variable"], "Value": value}
        if name == "Setvar":
            return {"Response": "Success"}
        raise AssertionError(f"unexpected action {name}")

    def names(self) -> list[str]:
        return [name for name, _ in self.actions]


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    upgrade(database.engine)
    create_test_plan(database)
    yield database
    database.dispose()


@pytest.fixture
def ledger(db: Database) -> Ledger:
    return Ledger(db)


@pytest.fixture
def card(db: Database) -> CardInHand:
    return new_card(db, Decimal("1.00"))


@pytest.fixture
def ami() -> FakeAmi:
    return FakeAmi()


@pytest.fixture
def recovery(ami: FakeAmi, ledger: Ledger) -> Recovery:
    return Recovery(CallController(ami, Charging(ledger)))  # type: ignore[arg-type]


def reserve(ledger: Ledger, card: CardInHand, key: str | None,
            channel: str | None = "PJSIP/in-00000001", limit: int = MAX_CALL_SECONDS) -> Grant:
    grant = ledger.authorize("12125550000", card_id=card.card_id, call_key=key,
                             channel=channel, limit=limit)
    assert isinstance(grant, Grant)
    return grant


def state(db: Database, grant: Grant) -> tuple[ReservationStatus, Decimal, Decimal]:
    """The reservation's status, and its account's balance and amount held."""
    with db.transaction() as s:
        res = s.get(Reservation, grant.reservation_id)
        account = s.get(Account, grant.account_id)
        assert res is not None and account is not None
        return res.status, account.balance, account.reserved


def cdr(db: Database, key: str) -> Cdr:
    with db.transaction() as s:
        row = s.scalar(select(Cdr).where(Cdr.uniqueid == key))
        assert row is not None
        return row


async def test_answered_call_is_settled_once(db, ledger, card, ami, recovery):
    key = "1700000000.1-1"
    grant = reserve(ledger, card, key)
    assert state(db, grant) == (ReservationStatus.ACTIVE, Decimal("1.00"), grant.amount)
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,7400"

    report = await recovery.recover_once()
    assert (report.settled, report.released, report.live) == ([key], [], [])
    # 7 s at 0.01/s.
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal("0.93"), Decimal(0))
    row = cdr(db, key)
    assert (row.billable_seconds, row.cost, row.reservation_id) == (
        7, Decimal("0.07"), grant.reservation_id)
    assert row.hangup_cause == "recovered: ANSWER"
    assert ("forget", {"Key": key}) in ami.actions
    assert (ASTDB_FAMILY, key) not in ami.astdb
    assert ami.names().index("forget") > ami.names().index("DBGet")

    # A second sweep finds nothing open, asks Asterisk nothing and charges nothing.
    ami.actions.clear()
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,7400"  # even if the record came back
    report = await recovery.recover_once()
    assert (report.settled, report.released, report.live) == ([], [], [])
    assert ami.actions == []
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal("0.93"), Decimal(0))


async def test_answered_call_longer_than_its_grant_is_charged_the_grant(
        db, ledger, card, ami, recovery):
    key = "1700000000.9-1"
    grant = reserve(ledger, card, key)  # 1.00 buys 100 s
    assert grant.seconds == 100
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,100900"
    await recovery.recover_once()
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal(0), Decimal(0))


@pytest.mark.parametrize("record", ["NOANSWER,0", "BUSY,0", "CANCEL,0", ",0"])
async def test_unanswered_call_is_released(db, ledger, card, ami, recovery, record):
    key = "1700000000.2-1"
    grant = reserve(ledger, card, key)
    ami.astdb[(ASTDB_FAMILY, key)] = record
    report = await recovery.recover_once()
    assert (report.settled, report.released) == ([], [key])
    assert state(db, grant) == (ReservationStatus.RELEASED, Decimal("1.00"), Decimal(0))
    row = cdr(db, key)
    assert (row.billable_seconds, row.cost) == (0, Decimal(0))
    assert row.hangup_cause == f"recovered: {CallOutcome.parse(record).dial_status}"
    assert ("forget", {"Key": key}) in ami.actions
    assert await recovery.recover_once() == type(report)()


async def test_no_record_and_channel_gone_is_released(db, ledger, card, ami, recovery):
    key = "1700000000.3-1"
    grant = reserve(ledger, card, key, channel="PJSIP/in-00000003")
    report = await recovery.recover_once()
    assert (report.settled, report.released, report.live) == ([], [key], [])
    assert state(db, grant) == (ReservationStatus.RELEASED, Decimal("1.00"), Decimal(0))
    assert cdr(db, key).hangup_cause == "recovered: no record"
    # Looked for a record again once the channel was found gone.
    assert ami.names() == ["DBGet", "Getvar", "DBGet"]
    assert ami.actions[1] == ("Getvar", {"Channel": "PJSIP/in-00000003",
                                         "Variable": "CHANNEL(uniqueid)"})


async def test_no_record_and_no_channel_known_is_released(db, ledger, card, ami, recovery):
    key = "1700000000.4-1"
    grant = reserve(ledger, card, key, channel=None)
    report = await recovery.recover_once()
    assert report.released == [key]
    assert state(db, grant)[0] is ReservationStatus.RELEASED
    assert "Getvar" not in ami.names()


async def test_record_written_while_looking_is_settled(db, ledger, card, ami, recovery):
    key = "1700000000.5-1"
    grant = reserve(ledger, card, key, channel="PJSIP/in-00000005")
    ami.after_miss = lambda k: ami.astdb.__setitem__((ASTDB_FAMILY, k), "ANSWER,3000")
    report = await recovery.recover_once()
    assert report.settled == [key]
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal("0.97"), Decimal(0))


async def test_live_channel_is_left_alone(db, ledger, card, ami, recovery):
    key = "1700000000.6-2"
    grant = reserve(ledger, card, key, channel="PJSIP/in-00000006")
    ami.channels["PJSIP/in-00000006"] = "1700000000.6"
    report = await recovery.recover_once()
    assert (report.settled, report.released, report.live) == ([], [], [key])
    assert state(db, grant) == (ReservationStatus.ACTIVE, Decimal("1.00"), grant.amount)
    assert "forget" not in ami.names()
    # When it ends, Asterisk's hang-up handler records it and the next sweep settles it.
    del ami.channels["PJSIP/in-00000006"]
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,42000"
    report = await recovery.recover_once()
    assert report.settled == [key]
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal("0.58"), Decimal(0))


async def test_reused_channel_name_is_not_the_call(db, ledger, card, ami, recovery):
    """Channel names restart with Asterisk; the uniqueid tells the calls apart."""
    key = "1700000000.7-1"
    grant = reserve(ledger, card, key, channel="PJSIP/in-00000007")
    ami.channels["PJSIP/in-00000007"] = "1800000000.7"  # same name, another call
    report = await recovery.recover_once()
    assert report.released == [key] and report.live == []
    assert state(db, grant)[0] is ReservationStatus.RELEASED


async def test_uniqueid_prefix_must_end_at_the_dash(db, ledger, card, ami, recovery):
    key = "1700000000.71-1"
    grant = reserve(ledger, card, key, channel="PJSIP/in-00000071")
    ami.channels["PJSIP/in-00000071"] = "1700000000.7"  # a prefix, but not the uniqueid
    report = await recovery.recover_once()
    assert report.released == [key]
    assert state(db, grant)[0] is ReservationStatus.RELEASED


async def test_claimed_and_tracked_keys_are_skipped(db, ledger, card, ami, recovery):
    claimed, tracked, orphan = "1700000000.8-1", "1700000000.8-2", "1700000000.8-3"
    grants = [reserve(ledger, card, k, limit=20) for k in (claimed, tracked, orphan)]
    for k in (claimed, tracked, orphan):
        ami.astdb[(ASTDB_FAMILY, k)] = "ANSWER,1000"
    recovery.controller.claim(CallKey.parse(claimed))
    recovery.controller.track(LiveCall(CallKey.parse(tracked), "PJSIP/in-8",
                                       grants[1].reservation_id, grants[1].seconds))
    report = await recovery.recover_once()
    assert report.settled == [orphan]
    assert [state(db, g)[0] for g in grants] == [ReservationStatus.ACTIVE,
                                                 ReservationStatus.ACTIVE,
                                                 ReservationStatus.SETTLED]
    assert {h.get("Key") for _, h in ami.actions} == {orphan}
    # Once the flows are done with them, they are the sweep's.
    recovery.controller.done(claimed)
    recovery.controller.done(tracked)
    report = await recovery.recover_once()
    assert report.settled == [claimed, tracked]


async def test_reservation_without_call_key_is_skipped(db, ledger, card, ami, recovery):
    grant = reserve(ledger, card, None)
    report = await recovery.recover_once()
    assert report == type(report)() and ami.actions == []
    assert state(db, grant)[0] is ReservationStatus.ACTIVE


async def test_ami_error_postpones_that_call_only(db, ledger, card, ami, recovery):
    key = "1700000000.10-1"
    grant = reserve(ledger, card, key)
    ami.fail["DBGet"] = AmiError("DBGet: no reply within 5s")
    report = await recovery.recover_once()
    assert report == type(report)()
    assert state(db, grant)[0] is ReservationStatus.ACTIVE
    del ami.fail["DBGet"]
    ami.fail["Getvar"] = AmiActionError("Getvar", {"Response": "Error",  # type: ignore[arg-type]
                                                   "Message": "Permission denied"})
    report = await recovery.recover_once()
    assert report == type(report)()  # not "no such channel": nothing is assumed
    assert state(db, grant)[0] is ReservationStatus.ACTIVE


async def test_failed_forget_still_settles(db, ledger, card, ami, recovery):
    key = "1700000000.11-1"
    grant = reserve(ledger, card, key)
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,2000"
    ami.fail["forget"] = AmiError("Originate: no reply within 5s")
    report = await recovery.recover_once()
    assert report.settled == [key]
    assert state(db, grant)[0] is ReservationStatus.SETTLED


async def test_no_sweep_without_ami(db, ledger, card, ami):
    key = "1700000000.12-1"
    grant = reserve(ledger, card, key)
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,2000"
    report = await Recovery(CallController(None, Charging(ledger))).recover_once()
    assert report.settled == []
    ami.connected = False
    report = await Recovery(CallController(ami, Charging(ledger))).recover_once()  # type: ignore[arg-type]
    assert report.settled == [] and ami.actions == []
    assert state(db, grant)[0] is ReservationStatus.ACTIVE


# --------------------------------------------------------------------------- holds


def held_call(ledger: Ledger, card: CardInHand, hold: int) -> tuple[LiveCall, Grant]:
    grant = ledger.authorize("12125550000", card_id=card.card_id, call_key="u.9-1",
                             channel="PJSIP/in-9", hold=hold)
    assert isinstance(grant, Grant)
    call = LiveCall(CallKey.parse("u.9-1"), "PJSIP/in-9", grant.reservation_id, grant.seconds,
                    hold=hold, affordable=grant.affordable, dest_channel="Local/callee-9",
                    answered_at=0.0)
    return call, grant


def limits(ami: FakeAmi) -> list[tuple[str, str]]:
    return [(h["Channel"], h["Value"]) for name, h in ami.actions
            if name == "Setvar" and h["Variable"] == "TIMEOUT(absolute)"]


async def test_a_held_call_is_renewed_until_the_money_is_all_held(db, ledger, card, ami):
    # 1.00 at 0.60/min per second buys 100 s; the call holds 30 s at a time.
    now = [0.0]
    c = CallController(ami, Charging(ledger), low_balance_warning=5, final_warning=2,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    call, grant = held_call(ledger, card, hold=30)
    assert (grant.seconds, grant.amount, grant.affordable) == (30, Decimal("0.30"), 100)
    c.track(call)
    assert c.renewal_at(call) == 15  # min(5 + 10, 30 / 2) before the hold ends
    assert c.seconds_left(call) == 30 and c.seconds_affordable(call) == 100
    grants = []
    for at in (15, 30, 45, 60, 75):
        now[0] = at
        await c.charging.renew(call)
        grants.append(call.granted)
    assert grants == [45, 60, 75, 90, 100]
    assert c.renewal_at(call) is None  # all the money is held: warnings are planned now
    assert [kind for kind, _ in c.warning_times(call.granted)] == ["final"]
    assert len(call._timers) == 1
    # Each renewal moved both limits: the callee's to the ms, the caller's backstop.
    assert limits(ami)[:2] == [("Local/callee-9", "30.000"), ("PJSIP/in-9", "60")]
    assert limits(ami)[-2:] == [("Local/callee-9", "25.000"), ("PJSIP/in-9", "55")]
    status, balance, reserved = state(db, grant)
    assert status is ReservationStatus.ACTIVE and (balance, reserved) == (
        Decimal("1.00"), Decimal("1.00"))
    c.done(call.key)


async def test_a_renewal_that_cannot_reach_the_ledger_keeps_the_limit_and_warns(
    db, ledger, card, ami, monkeypatch
):
    now = [0.0]
    c = CallController(ami, Charging(ledger), low_balance_warning=5, final_warning=2,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    call, grant = held_call(ledger, card, hold=30)
    c.track(call)

    def database_down(*args: Any, **kwargs: Any) -> Grant:
        raise OSError("database is down")

    monkeypatch.setattr(ledger, "extend", database_down)
    now[0] = 15
    await c.charging.renew(call)
    assert call.granted == 30 and c.renewal_at(call) is None
    assert limits(ami)[0] == ("Local/callee-9", "15.000")  # where it was
    # The caller is warned before Asterisk ends the call at the old limit.
    assert [kind for kind, _ in c.warning_times(30)] == ["final"]
    assert len(call._timers) == 1
    assert 12.5 < call._timers[0].when() - asyncio.get_running_loop().time() <= 13
    c.done(call.key)


async def test_a_renewal_is_planned_and_warnings_from_all_the_money(ledger, card, ami):
    c = CallController(ami, Charging(ledger), low_balance_warning=60, final_warning=10)  # type: ignore[arg-type]
    call, _ = held_call(ledger, card, hold=40)  # 100 s of money, 40 s held
    call.answered_at = None
    c.track(call)
    c._on_dial_end({"Uniqueid": call.uniqueid, "DialStatus": "ANSWER",
                    "DestChannel": "Local/callee-9"})
    assert c.renewal_at(call) == 20  # hold / 2: a short hold
    # The renewal, and the warnings from what all the money buys (100 s), not the hold.
    whens = sorted(t.when() - c.now() for t in call._timers)
    assert len(whens) == 3 and 19 < whens[0] <= 20 and 39 < whens[1] <= 40
    assert 89 < whens[2] <= 90
    c.done(call.key)
    assert call._timers == []


async def test_a_renewal_does_not_repeat_a_warning_already_whispered(ledger, card, ami):
    now = [0.0]
    c = CallController(ami, Charging(ledger), low_balance_warning=60, final_warning=10,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    call, _ = held_call(ledger, card, hold=80)
    c.track(call)
    now[0] = 41.0
    call.whispers.append(("warning", 40.0))  # said at 40 s: 60 s before the money ends
    await c.charging.renew(call)
    assert call.granted == 100
    delays = [t.when() - asyncio.get_running_loop().time() for t in call._timers]
    assert len(delays) == 1 and 48 < delays[0] <= 49  # the final warning only
    c.done(call.key)


async def test_a_warning_learned_late_is_whispered_at_once(ledger, card, ami):
    now = [0.0]
    c = CallController(ami, Charging(ledger), low_balance_warning=60, final_warning=10,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    call, _ = held_call(ledger, card, hold=80)  # 100 s bought: renewed at 40 s
    c.track(call)
    now[0] = 45.0
    await c.charging.renew(call)  # all held now: 100 s, the 60 s warning was due at 40 s
    assert call.granted == 100 and c.renewal_at(call) is None
    delays = sorted(t.when() - asyncio.get_running_loop().time() for t in call._timers)
    assert len(delays) == 2 and delays[0] < 0.5 and 44 < delays[1] <= 45
    c.done(call.key)


async def test_a_bridged_call_of_a_dead_server_is_adopted_renewed_then_settled(
    db, ledger, card, ami
):
    """The server died during a call: the restarted one follows the call again from its
    channels, renews its hold (else Asterisk cuts it when the hold runs out), and
    settles it once it has ended."""
    key = "1700000000.8-1"
    grant = ledger.authorize("12125550000", card_id=card.card_id, call_key=key,
                             channel="PJSIP/in-8", hold=30)
    assert isinstance(grant, Grant) and grant.seconds == 30
    ami.channels["PJSIP/in-8"] = "1700000000.8"
    ami.variables["PJSIP/in-8"] = {"BRIDGEPEER": "Local/callee-8;1", "CHANNEL(language)": "es"}
    ami.channels["Local/callee-8;1"] = "1700000000.9"
    # Both clocks stand still: 19.5 s after the answer however slowly the test runs
    # (under load, half a second between stamping and adopting made it 20.0 s in).
    now = time.time()
    ami.variables["Local/callee-8;1"] = {"IVR_CALL_KEY": key,
                                         "IVR_ANSWERED_AT": f"{now - 19.5:.3f}"}
    c = CallController(ami, Charging(ledger, hold=30),  # type: ignore[arg-type]
                       clock=lambda: 1000.0)
    report = await Recovery(c, wall_clock=lambda: now).recover_once()
    assert (report.adopted, report.live, report.settled) == ([key], [], [])
    call = c.live_call("1700000000.8")
    assert call is not None and call.adopted and call.language == "es"
    assert call.granted == 50 and call.affordable == 100  # 19.5 s in, one more hold
    dest, caller = limits(ami)
    assert dest[0] == "Local/callee-8;1" and 30 < float(dest[1]) <= 30.5
    assert caller == ("PJSIP/in-8", "61")
    # Still going: the next sweep leaves it be.
    assert await Recovery(c).recover_once() == RecoveryReport()
    # It ends: the callee's hang-up handler records it, the caller's Hangup comes.
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,41000"
    c._on_hangup({"Uniqueid": "1700000000.8", "Channel": "PJSIP/in-8"})
    assert c.live_call("1700000000.8") is None
    report = await Recovery(c).recover_once()
    assert report.settled == [key]
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal("0.59"), Decimal(0))


async def test_an_adopted_call_whose_hangup_was_missed_is_still_settled(db, ledger, card, ami):
    key = "1700000000.10-1"
    grant = reserve(ledger, card, key, channel="PJSIP/in-10")
    ami.channels["PJSIP/in-10"] = "1700000000.10"
    ami.variables["PJSIP/in-10"] = {"BRIDGEPEER": "Local/callee-10;1"}
    ami.channels["Local/callee-10;1"] = "1700000000.11"
    ami.variables["Local/callee-10;1"] = {"IVR_CALL_KEY": key,
                                          "IVR_ANSWERED_AT": f"{time.time():.3f}"}
    c = CallController(ami, Charging(ledger))  # type: ignore[arg-type]
    assert (await Recovery(c).recover_once()).adopted == [key]
    ami.astdb[(ASTDB_FAMILY, key)] = "ANSWER,5000"  # ended; no Hangup event reached us
    assert (await Recovery(c).recover_once()).settled == [key]
    assert c.live_call("1700000000.10") is None
    assert state(db, grant) == (ReservationStatus.SETTLED, Decimal("0.95"), Decimal(0))


@pytest.mark.parametrize("variables", [
    {},  # not bridged (still ringing, or its caller in the top-up menu)
    {"BRIDGEPEER": "Local/other;1"},  # bridged to a channel of another call
])
async def test_a_live_call_that_cannot_be_followed_is_left_alone(
    db, ledger, card, ami, variables
):
    key = "1700000000.12-1"
    reserve(ledger, card, key, channel="PJSIP/in-12")
    ami.channels["PJSIP/in-12"] = "1700000000.12"
    ami.variables["PJSIP/in-12"] = variables
    ami.channels["Local/other;1"] = "1700000000.13"
    ami.variables["Local/other;1"] = {"IVR_CALL_KEY": "1700000000.99-1",
                                      "IVR_ANSWERED_AT": "1700000000.000"}
    c = CallController(ami, Charging(ledger))  # type: ignore[arg-type]
    report = await Recovery(c).recover_once()
    assert (report.adopted, report.live) == ([], [key])
    assert c.live_calls == 0


async def test_a_hold_that_ran_out_in_the_top_up_menu_is_renewed_after_it(
    db, ledger, card, ami
):
    """The caller pressed *9 near the end of a hold and paid nothing: back from the menu
    the call gets the next hold from the money there is, not the old, passed limit."""
    now = [0.0]
    c = CallController(ami, Charging(ledger), low_balance_warning=5, final_warning=2,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    call, _ = held_call(ledger, card, hold=30)  # 100 s of money, 30 s held
    c.track(call)
    now[0] = 25.0
    await c.hold_open(call.uniqueid, 60)  # the menu: at least 60 s, renewal held
    assert call._timers == [] and limits(ami)[0] == ("Local/callee-9", "60.000")
    now[0] = 70.0  # 40 s in the menu: past the old hold's end
    await c.charging.renew(call)
    assert call.granted == 100  # min(all the money, 70 s in + one hold)
    assert limits(ami)[-2] == ("Local/callee-9", "30.000")
    c.done(call.key)


async def test_a_credit_renews_the_other_live_calls_of_the_account(db, ledger, card, ami):
    """Money came into an account (a top-up during one of its calls): its other live
    call, which had all the money there was, may now last longer; the call that paid is
    left to its own menu's renewal."""
    charging = Charging(ledger, hold=600)
    c = CallController(ami, charging, clock=lambda: 0.0)  # type: ignore[arg-type]
    other = new_card(db, Decimal("0"), account=card.account)
    calls = []
    for n, holder in ((1, card), (2, other)):
        key = CallKey(f"u.{n}", 1)
        grant = ledger.authorize("12125550000", card_id=holder.card_id, call_key=str(key),
                                 channel=f"PJSIP/in-{n}", hold=600)
        assert isinstance(grant, Grant)
        call = LiveCall(key, f"PJSIP/in-{n}", grant.reservation_id, grant.seconds, hold=600,
                        account_id=grant.account_id, affordable=grant.affordable,
                        dest_channel=f"Local/callee-{n};1", answered_at=c.now())
        c.track(call)
        calls.append(call)
    paying, sharing = calls
    # 1.00 buys 100 s: the first call held half while the other card was idle.
    assert (paying.granted, sharing.granted) == (50, 50)
    with db.transaction() as s:
        credit(s, paying.account_id, Decimal("0.50"), EntryKind.TOPUP, ref="test-topup")
    await charging.credited(paying.account_id, but=paying.key)
    # The other call holds what the 0.50 buys on top of its own 50 s; the paying one is
    # renewed by its own menu, not here.
    assert (paying.granted, sharing.granted) == (50, 100)
    assert limits(ami) == [("Local/callee-2;1", "100.000"), ("PJSIP/in-2", "130")]
    for call in calls:
        c.done(call.key)
