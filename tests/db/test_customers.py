"""The revalue line's customers (ivr.revalue.customers), the ported-numbers table and the
local lookup (ivr.revalue.lookup) on SQLite and PostgreSQL, and their commands
(``ivr customers``, ``ivr ported``, ``ivr lookup``) as an operator types them."""

from __future__ import annotations

import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from ivr import login
from ivr.config import Settings
from ivr.db import Database
from ivr.db.models import Account, AccountStatus, AuthFailure, Customer, PaymentMethod
from ivr.login import ANONYMOUS, LoginPolicy
from ivr.money.accounts import NotFound
from ivr.revalue import customers as c
from ivr.revalue.customers import CodeVerdict, CustomerExists, CustomerRefused, Mode, Pay
from ivr.revalue.lookup import (
    InvalidMsisdn,
    LocalLookup,
    Lookup,
    LookupFailed,
    SimulatedHlr,
    add_ported,
    list_ported,
    lookup_from_settings,
    remove_ported,
)
from ivr.secrets import verify_pin
from ivr.testing.access import PLAN, create_test_plan, new_account

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MOBILE = "+447912345678"
OTHER = "+4915123456789"
CALLER = "+447984123456"
POLICY = LoginPolicy(pin_max_failures=3, callerid_max_failures=5, callerid_failure_window=600)


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)
    return db


def add(db: Database, msisdn: str = MOBILE, **kw: object) -> c.WithCode:
    kw.setdefault("plan", None if "account" in kw else PLAN)
    return c.add_customer(db, msisdn, region="GB", **kw)  # type: ignore[arg-type]


def wrong(code: str) -> str:
    return "".join("1" if d != "1" else "2" for d in code)


def row(db: Database, msisdn: str = MOBILE) -> Customer:
    with db.transaction() as s:
        found = s.scalar(select(Customer).where(Customer.msisdn == msisdn))
        assert found is not None
        s.expunge(found)
        return found


def failures(db: Database) -> list[str]:
    with db.transaction() as s:
        return [f.callerid for f in s.scalars(select(AuthFailure).order_by(AuthFailure.id))]


def check(db: Database, code: str, msisdn: str = MOBILE, caller: str | None = CALLER,
          **kw: object) -> c.Verification:
    return c.verify(db, msisdn, code, caller, POLICY, now=kw.pop("now", NOW))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- adding


def test_add_makes_an_account_and_a_code_shown_once(plan: Database):
    made = add(plan, "07912 345678", mode="direct", language="fr")
    info = made.customer
    assert made.account_created
    assert (info.msisdn, info.mode, info.pay, info.currency, info.language) == (
        MOBILE, Mode.DIRECT, Pay.ACCOUNT, "USD", "fr")
    assert (info.locked, info.failures, info.saved_card) == (False, 0, "")
    assert len(made.code) == 6 and made.code.isdigit()
    stored = row(plan)
    # Only a salted scrypt hash, which the code (and only it) matches.
    assert stored.code_hash.startswith("scrypt$") and made.code not in stored.code_hash
    assert verify_pin(made.code, stored.code_hash)
    assert not verify_pin(wrong(made.code), stored.code_hash)
    assert not {"code", "code_hash", "first_code"} & set(info.as_dict())
    with plan.transaction() as s:
        account = s.get(Account, info.account_id)
        assert account is not None
        assert (account.number, account.currency, account.balance) == (
            info.account, "USD", Decimal(0))
        assert account.name == f"revalue {MOBILE}"


def test_add_on_an_existing_account_with_a_saved_card(plan: Database):
    number = new_account(plan, Decimal("10.00"))
    made = add(plan, OTHER, account=number, pay="saved-method", code_length=10)
    assert not made.account_created and len(made.code) == 10
    info = made.customer
    assert (info.account, info.pay, info.saved_card) == (number, Pay.SAVED_METHOD, "")
    with plan.transaction() as s:
        s.add(PaymentMethod(account_id=info.account_id, token="tok", last4="4242",
                            brand="visa", expiry="1230", active=True, created_at=NOW))
    # Needed when a recharge is paid, not when added: seen as it is now.
    assert c.get_customer(plan, OTHER, region="GB").saved_card == "4242"
    # Two customers may draw on one account.
    second = add(plan, MOBILE, account=number)
    assert second.customer.account_id == info.account_id
    assert [i.msisdn for i in c.list_customers(plan)] == [MOBILE, OTHER]


@pytest.mark.parametrize(("kw", "error", "why"), [
    ({"msisdn": "020 7946 0000"}, InvalidMsisdn, "not a mobile number"),
    ({"msisdn": "+447700900123"}, InvalidMsisdn, "not a valid number"),
    ({"mode": "sms"}, CustomerRefused, "neither 'code' nor 'direct'"),
    ({"pay": "cash"}, CustomerRefused, "neither 'account' nor 'saved-method'"),
    ({"language": "english!"}, CustomerRefused, "not a language code"),
    ({"code_length": 3}, CustomerRefused, "4 to 12 digits"),
    ({"plan": None}, CustomerRefused, "not both"),
    ({"account": "12345", "plan": None}, NotFound, "no account 12345"),
])
def test_refused_additions_change_nothing(plan: Database, kw: dict, error: type, why: str):
    kw = dict(kw)  # the same dict serves both databases
    msisdn = kw.pop("msisdn", MOBILE)
    with pytest.raises(error, match=why):
        c.add_customer(plan, msisdn, region="GB", **({"plan": PLAN} | kw))
    assert c.list_customers(plan) == []


def test_a_number_is_one_customer_and_an_inactive_account_cannot_pay(plan: Database):
    add(plan)
    with pytest.raises(CustomerExists, match="customer already"):
        add(plan, "07912345678")
    number = new_account(plan, Decimal(0))
    with plan.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == number))
        assert account is not None
        account.status = AccountStatus.SUSPENDED
    with pytest.raises(CustomerRefused, match="is suspended"):
        add(plan, OTHER, account=number)
    assert [i.msisdn for i in c.list_customers(plan)] == [MOBILE]


# --------------------------------------------------------------------------- verify


def test_right_code_is_ok_and_resets_the_count(plan: Database):
    code = add(plan).code
    assert check(plan, wrong(code)).verdict is CodeVerdict.WRONG
    assert row(plan).failures == 1
    result = check(plan, code, msisdn=MOBILE.removeprefix("+"))  # a caller ID's digits
    assert result.verdict is CodeVerdict.OK
    assert result.customer is not None and result.customer.msisdn == MOBILE
    assert result.customer.failures == 0 and row(plan).failures == 0
    assert failures(plan) == [CALLER]  # the one wrong code, against the caller ID


def test_wrong_codes_lock_and_the_state_is_told_only_with_the_right_code(plan: Database):
    code = add(plan).code
    verdicts = [check(plan, wrong(code)) for _ in range(POLICY.pin_max_failures)]
    assert [v.verdict for v in verdicts] == [CodeVerdict.WRONG] * 3
    assert [v.failures for v in verdicts] == [1, 2, 3]
    assert row(plan).locked
    assert check(plan, wrong(code), caller="+447400123456").verdict is CodeVerdict.WRONG
    locked = check(plan, code, caller="+447400123456")
    assert (locked.verdict, locked.customer) == (CodeVerdict.LOCKED, None)
    assert row(plan).failures == 4  # the right code counted nothing
    # An operator unlocks: the count starts again.
    assert not c.set_locked(plan, "07912345678", False, region="GB").locked
    assert row(plan).failures == 0
    assert check(plan, code, caller="+447400123456").verdict is CodeVerdict.OK
    assert c.set_locked(plan, MOBILE, True, region="GB").locked
    assert check(plan, code, caller="+447400123456").verdict is CodeVerdict.LOCKED


def test_unknown_number_costs_a_hash_check_and_counts_against_the_caller(plan: Database,
                                                                          monkeypatch):
    add(plan)
    checked: list[str] = []
    real = login.pin_check

    def spy(code: str, stored: str) -> bool:
        checked.append(stored)
        return real(code, stored)

    monkeypatch.setattr(login, "pin_check", spy)
    result = check(plan, "123456", msisdn=OTHER)
    assert (result.verdict, result.customer) == (CodeVerdict.UNKNOWN, None)
    assert checked == [login.decoy_hash()]  # the same work as a real customer's code
    assert check(plan, "123456", msisdn="").verdict is CodeVerdict.UNKNOWN
    assert failures(plan) == [CALLER, CALLER]
    assert not row(plan).locked and row(plan).failures == 0


def test_the_caller_id_throttle_is_the_card_log_ins(plan: Database):
    code = add(plan).code
    add(plan, OTHER)
    # Failures from one caller ID across customers, unknown numbers and card PINs.
    for msisdn in (MOBILE, OTHER, "+447400123456", MOBILE):
        assert check(plan, wrong(code), msisdn=msisdn).verdict in (CodeVerdict.WRONG,
                                                                   CodeVerdict.UNKNOWN)
    assert login.log_in(plan, "0000", "1234", CALLER, POLICY, now=NOW).verdict \
        is login.Verdict.UNKNOWN_CARD
    assert login.throttled(plan, CALLER, POLICY, now=NOW)
    throttled = check(plan, code, now=NOW + timedelta(seconds=1))
    assert (throttled.verdict, throttled.customer) == (CodeVerdict.THROTTLED, None)
    assert len(failures(plan)) == 5  # a throttled attempt is not checked, nor counted
    assert row(plan).failures == 2
    # Another caller ID is not slowed; this one is again once the window has passed.
    assert check(plan, code, caller="+447400123456").verdict is CodeVerdict.OK
    later = NOW + timedelta(seconds=POLICY.callerid_failure_window + 1)
    assert check(plan, code, now=later).verdict is CodeVerdict.OK


def test_withheld_caller_ids_are_counted_together(plan: Database):
    code = add(plan).code
    for caller in (None, "", None):
        assert check(plan, wrong(code), caller=caller).verdict is CodeVerdict.WRONG
    assert failures(plan) == [ANONYMOUS] * 3


def test_concurrent_wrong_codes_are_all_counted(plan: Database, monkeypatch):
    """Wrong codes at once, all hashed (outside any lock) before any is counted: the
    count under the customer's row lock loses none of them."""
    code = add(plan).code
    attempts = 8
    barrier = threading.Barrier(attempts, timeout=60)
    real = login.pin_check

    def together(typed: str, stored: str) -> bool:
        ok = real(typed, stored)
        barrier.wait()
        return ok

    monkeypatch.setattr(login, "pin_check", together)
    policy = LoginPolicy(pin_max_failures=3, callerid_max_failures=1000)

    def attempt(i: int) -> CodeVerdict:
        return c.verify(plan, MOBILE, wrong(code), f"+4479841234{i:02d}", policy,
                        now=NOW).verdict

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        verdicts = list(pool.map(attempt, range(attempts)))
    assert verdicts == [CodeVerdict.WRONG] * attempts
    stored = row(plan)
    assert (stored.failures, stored.locked) == (attempts, True)
    assert len(failures(plan)) == attempts


def test_reset_code_replaces_the_code_and_keeps_a_lock(plan: Database):
    old = add(plan).code
    for _ in range(POLICY.pin_max_failures):
        check(plan, wrong(old))
    made = c.reset_code(plan, "07912 345678", region="GB", code_length=8)
    assert len(made.code) == 8 and made.customer.locked and made.customer.failures == 0
    assert not verify_pin(old, row(plan).code_hash)
    assert check(plan, made.code).verdict is CodeVerdict.LOCKED
    c.set_locked(plan, MOBILE, False, region="GB")
    assert check(plan, old).verdict is CodeVerdict.WRONG
    assert check(plan, made.code).verdict is CodeVerdict.OK
    with pytest.raises(NotFound, match=re.escape(f"no customer {OTHER}")):
        c.reset_code(plan, OTHER, region="GB")
    with pytest.raises(NotFound):
        c.set_locked(plan, OTHER, True, region="GB")


def test_customer_by_caller_id(plan: Database):
    add(plan)
    for callerid in (MOBILE, "07912 345678", "+44 7912-345678"):
        found = c.customer_for_callerid(plan, callerid, region="GB")
        assert found is not None and found.msisdn == MOBILE, callerid
    for callerid in (None, "", "anonymous", OTHER, "+44 7912 345678 & x"):
        assert c.customer_for_callerid(plan, callerid, region="GB") is None


def test_no_code_is_logged(plan: Database, caplog):
    caplog.set_level(logging.DEBUG, logger="ivr")
    made = add(plan)
    for _ in range(POLICY.pin_max_failures):
        check(plan, wrong(made.code))
    again = c.reset_code(plan, MOBILE, region="GB")
    c.set_locked(plan, MOBILE, False, region="GB")
    check(plan, again.code)
    text = caplog.text
    assert "...5678 added" in text and "locked after 3 wrong first codes" in text
    for secret in (made.code, again.code, MOBILE, MOBILE[1:]):
        assert secret not in text


# --------------------------------------------------------------------------- ported, lookup


async def test_ported_table_comes_before_carrier_data(plan: Database):
    local = lookup_from_settings(Settings(), plan)
    assert isinstance(local, LocalLookup)
    assert await local.lookup(MOBILE) == Lookup(MOBILE, "O2", "", False, None, False)
    entry, new = add_ported(plan, MOBILE, "Vodafone", "23415", now=NOW)
    assert new and (entry.operator, entry.mccmnc) == ("Vodafone", "23415")
    assert await local.lookup(MOBILE[1:]) == Lookup(MOBILE, "Vodafone", "23415", True,
                                                    None, False)
    entry, new = add_ported(plan, MOBILE, "  EE ", now=NOW)
    assert not new and (entry.operator, entry.mccmnc) == ("EE", "")
    add_ported(plan, OTHER, "Vodafone", "26202", now=NOW)
    assert [(p.msisdn, p.operator) for p in list_ported(plan)] == [
        (MOBILE, "EE"), (OTHER, "Vodafone")]
    with pytest.raises(ValueError, match="network code"):
        add_ported(plan, MOBILE, "EE", "2341")
    assert remove_ported(plan, MOBILE) and not remove_ported(plan, MOBILE)
    assert await local.lookup(MOBILE) == Lookup(MOBILE, "O2", "", False, None, False)
    # An HLR's answer is verified; the local one never is.
    hlr = SimulatedHlr({MOBILE: Lookup(MOBILE, "EE", "23430", True, True, False)})
    assert (await hlr.lookup(MOBILE)).verified


# --------------------------------------------------------------------------- the commands


def failing_hlr(settings: Settings) -> SimulatedHlr:
    """A plugged-in lookup whose provider never answers."""
    return SimulatedHlr({"+447912345678": LookupFailed("no answer in 5 s")})


@pytest.fixture
def ivr(tmp_path, monkeypatch, ivr_cli):
    monkeypatch.setenv("IVR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IVR_DEFAULT_REGION", "GB")
    monkeypatch.chdir(tmp_path)
    return ivr_cli


@pytest.fixture
def ivr_json(ivr, capsys):
    from ivr.cli import main

    def run(*args: str, expect: int = 1) -> dict:
        code = main([*args, "--json"])
        out, err = capsys.readouterr()
        assert code == expect, (args, out, err)
        return json.loads(out)

    return run


def test_cli_customers(ivr, tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_REVALUE_CODE_LENGTH", "10")  # no chance match in the DB file
    ivr("plans", "create", "retail", "--currency", "GBP")
    out = ivr("customers", "add", "--msisdn", "07912 345678", "--plan", "retail")
    code = out.split("first code: ")[1].split()[0]
    assert len(code) == 10 and out.count(code) == 1
    assert "+447912345678 added (new account" in out and "shown this once" in out
    assert "pays from the balance of account" in out
    ivr("accounts", "create", "--plan", "retail", "--number", "700100")
    added = json.loads(ivr("customers", "add", "--msisdn", "+4915123456789", "--mode",
                           "direct", "--pay", "saved-method", "--account", "700100",
                           "--language", "de", "--json"))
    second = added["first_code"]
    assert (added["msisdn"], added["mode"], added["pay"], added["account"]) == (
        "+4915123456789", "direct", "saved-method", "700100")
    assert added["account_created"] is False and added["saved_card"] is None
    assert "must have an active saved card when a recharge is paid" in added["paid_by"]
    assert "none yet" in added["paid_by"]

    shown = [ivr("customers", "list"), ivr("customers", "list", "--json"),
             ivr("customers", "show", "07912345678"),
             ivr("customers", "show", "+4915123456789", "--json"),
             ivr("customers", "lock", "+447912345678", "--json"),
             ivr("customers", "unlock", "+447912345678")]
    listed = json.loads(shown[1])["customers"]
    assert [r["msisdn"] for r in listed] == ["+447912345678", "+4915123456789"]
    assert json.loads(shown[4])["status"] == "locked" and "active" in shown[5]
    ivr("customers", "lock", "+447912345678")
    reset = ivr("customers", "reset-code", "+447912345678")
    new = reset.split("first code: ")[1].split()[0]
    assert new != code and "still locked: ivr customers unlock +447912345678" in reset
    for text in shown + [ivr("customers", "list", "--json")]:
        for secret in (code, second, new, "scrypt", "code_hash"):
            assert secret not in text
    # The database holds no code in clear.
    files = b"".join(p.read_bytes() for p in tmp_path.glob("cli.sqlite3*"))
    for secret in (code, second, new):
        assert secret.encode() not in files


def test_cli_refusals(ivr, ivr_json, monkeypatch):
    ivr("plans", "create", "retail", "--currency", "GBP")
    assert ivr_json("customers", "add", "--msisdn", "07912345678")["error"]["code"] == \
        "missing_option"
    monkeypatch.setenv("IVR_REVALUE_PLAN", "retail")
    ivr("customers", "add", "--msisdn", "07912345678")
    cases = [
        (("customers", "add", "--msisdn", "07912345678"), "exists"),
        (("customers", "add", "--msisdn", "020 7946 0000"), "bad_number"),
        (("customers", "add", "--msisdn", "x"), "bad_number"),
        (("customers", "add", "--msisdn", "07400123456", "--account", "1", "--plan",
          "retail"), "conflicting_options"),
        (("customers", "add", "--msisdn", "07400123456", "--account", "1"), "not_found"),
        (("customers", "add", "--msisdn", "07400123456", "--language", "??"), "refused"),
        (("customers", "show", "07400123456"), "not_found"),
        (("customers", "reset-code", "+4915123456789"), "not_found"),
        (("ported", "add", "020", "--operator", "EE"), "bad_number"),
        (("ported", "add", "07400123456", "--operator", "EE", "--mccmnc", "1"),
         "bad_argument"),
        (("ported", "remove", "07400123456"), "not_found"),
        (("lookup", "not a number"), "bad_number"),
    ]
    for args, expected in cases:
        error = ivr_json(*args)["error"]
        assert error["code"] == expected, (args, error)
        assert error["message"]
    usage = ivr_json("customers", "add", "--msisdn", "07400123456", "--mode", "sms",
                     expect=2)
    assert usage["error"]["code"] == "usage"
    assert "is not a mobile number" in ivr("customers", "add", "--msisdn", "020 7946 0000",
                                           expect=1)
    assert len(json.loads(ivr("customers", "list", "--json"))["customers"]) == 1


def test_cli_ported_and_lookup(ivr, ivr_json, tmp_path, monkeypatch):
    assert ivr("lookup", "07912345678") == (
        "+447912345678: O2, mccmnc unknown, not ported, reachable: unknown, unverified\n")
    assert "Vodafone (23415) (added)" in ivr("ported", "add", "07912 345678", "--operator",
                                             "Vodafone", "--mccmnc", "23415")
    assert "(replaced)" in ivr("ported", "add", "+447912345678", "--operator", "Vodafone",
                               "--mccmnc", "23415")
    answer = json.loads(ivr("lookup", "+447912345678", "--json"))
    assert answer == {"msisdn": "+447912345678", "operator": "Vodafone",
                      "mccmnc": "23415", "ported": True, "reachable": None,
                      "verified": False}
    ported = json.loads(ivr("ported", "list", "--json"))["ported"]
    assert [(p["msisdn"], p["operator"]) for p in ported] == [("+447912345678", "Vodafone")]
    assert "removed" in ivr("ported", "remove", "07912345678")
    assert ivr("ported", "list") == "no ported numbers\n"
    # A plugged-in lookup: the simulated HLR, from its file in the data directory.
    monkeypatch.setenv("IVR_REVALUE_LOOKUP", "ivr.revalue.lookup:simulated_hlr")
    data = Path(tmp_path / "data")
    data.mkdir(exist_ok=True)
    (data / "simulated-hlr.json").write_text(json.dumps(
        {"+447912345678": {"operator": "EE", "mccmnc": "23430", "ported": True,
                           "reachable": True}}))
    assert ivr("lookup", "07912345678") == (
        "+447912345678: EE, mccmnc 23430, ported, reachable, verified\n")
    monkeypatch.setenv("IVR_REVALUE_LOOKUP", f"{__name__}:failing_hlr")
    error = ivr_json("lookup", "07912345678")["error"]
    assert error == {"code": "lookup_failed",
                     "message": "the lookup failed: no answer in 5 s"}
    monkeypatch.setenv("IVR_REVALUE_LOOKUP", "nowhere")
    error = ivr_json("lookup", "07912345678", expect=2)["error"]
    assert error["code"] == "config" and "revalue_lookup" in error["message"]
