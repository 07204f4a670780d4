"""The operator commands as a user types them (in process, on a fresh SQLite file)."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pytest

ASTPP = (Path(__file__).resolve().parents[2].parent
         / "shared/data/ratedecks/astpp_outbound_routes_AZ.csv")
DECK = """\
plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,start,end,service
retail,1,USA,0,0.06,60,6,0,*,,,voice
retail,44,UK,0.10,0.60,60,60,0,,,,
retail,*,Anywhere,0,1.20,60,60,0,,,,
"""


@pytest.fixture
def ivr(tmp_path, monkeypatch, ivr_cli):
    monkeypatch.setenv("IVR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return ivr_cli


@pytest.fixture
def ivr_json(ivr, capsys):
    """Run ``ivr ARGS --json`` expecting a refusal (exit ``expect``): its JSON object,
    the only thing on stdout."""
    from ivr.cli import main

    def run(*args: str, expect: int = 1) -> dict:
        code = main([*args, "--json"])
        out, err = capsys.readouterr()
        assert code == expect, (args, out, err)
        return json.loads(out)

    return run


def test_plan_deck_quote_and_max_seconds(ivr, tmp_path):
    ivr("plans", "create", "retail", "--currency", "usd", "--decimals", "2")
    (tmp_path / "deck.csv").write_text(DECK)
    assert "3 rates imported" in ivr("rates", "import", "deck.csv")
    q = json.loads(ivr("rates", "quote", "--plan", "retail", "--number", "15551234567",
                       "--seconds", "125", "--json"))
    assert (q["cost"], q["prefix"], q["destination"], q["charged_seconds"]) == (
        "0.13", "1", "USA", 126)
    m = json.loads(ivr("rates", "max-seconds", "--plan", "retail", "--number", "15551234567",
                       "--balance", "1", "--json"))
    assert m["max_seconds"] == 996
    # The first UK block (0.10 + 0.60) does not fit 0.50: refused, 0.
    text = ivr("rates", "max-seconds", "--plan", "retail", "--number", "447700900123",
               "--balance", "0.50")
    assert text.startswith("0s") and "refused" in text
    q = json.loads(ivr("rates", "quote", "--plan", "retail", "--number", "8613800138000",
                       "--seconds", "61", "--json"))
    assert (q["prefix"], q["cost"]) == ("*", "2.40")


def test_bad_deck_is_refused_with_line_numbers_and_changes_nothing(ivr, tmp_path):
    ivr("plans", "create", "retail", "--currency", "USD")
    (tmp_path / "deck.csv").write_text(DECK)
    ivr("rates", "import", "deck.csv")
    (tmp_path / "bad.csv").write_text(DECK + "retail,33,France,x,0.1,60,1,0,,,,\n"
                                      "retail,34,Spain,0,0.1,60,1,0,funday,,,\n")
    err = ivr("rates", "import", "bad.csv", expect=1)
    assert "line 5" in err and "line 6" in err and "previous rates are unchanged" in err
    plans = json.loads(ivr("plans", "list", "--json"))["plans"]
    assert plans[0]["rates"] == 3 and plans[0]["rates_version"] == 1


def test_accounts_and_cards(ivr, tmp_path):
    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("accounts", "create", "--plan", "retail", "--number", "700100", "--balance", "5")
    out = ivr("accounts", "credit", "700100", "2.50", "--ref", "pay-9", "--json")
    assert json.loads(out)["balance"] == "7.50"
    again = json.loads(ivr("accounts", "credit", "700100", "2.50", "--ref", "pay-9", "--json"))
    assert again["applied"] is False and again["balance"] == "7.50"
    hist = json.loads(ivr("accounts", "history", "700100", "--json"))
    assert [e["kind"] for e in hist["entries"]] == ["topup", "topup"]

    ivr("cards", "issue", "--plan", "retail", "--count", "3", "--balance", "2",
        "--out", "cards.csv")
    path = tmp_path / "cards.csv"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 3 and all(len(r["pin"]) == 4 for r in rows)
    shared = ivr("cards", "issue", "--plan", "retail", "--count", "2", "--account", "700100",
                 "--out", "shared.csv")
    assert "2 card(s)" in shared
    show = json.loads(ivr("accounts", "show", "700100", "--json"))
    assert len(show["cards"]) == 2 and all("pin" not in c for c in show["cards"])
    number = rows[0]["card_number"]
    assert json.loads(ivr("cards", "lock", number, "--json"))["status"] == "locked"
    assert json.loads(ivr("cards", "unlock", number, "--json"))["status"] == "active"
    card = json.loads(ivr("cards", "show", number, "--json"))
    assert card["balance"] == "2.00"
    # The database never holds a PIN in clear.
    db = (tmp_path / "cli.sqlite3").read_bytes()
    assert all(f",{r['pin']}".encode() not in db for r in rows)
    # Refusals are one clear line.
    assert "exists" in ivr("cards", "issue", "--plan", "retail", "--count", "1",
                           "--out", "cards.csv", expect=1)
    assert "no account 999" in ivr("accounts", "show", "999", expect=1)


def test_astpp_deck_import(ivr):
    assert ASTPP.exists(), f"the shared ASTPP deck is missing: {ASTPP}"
    out = ivr("rates", "import", str(ASTPP), "--format", "astpp", "--plan", "astpp",
              "--currency", "USD", "--json")
    assert json.loads(out)["plans"] == {"astpp": 36205}
    q = json.loads(ivr("rates", "quote", "--plan", "astpp", "--number", "93751234567",
                       "--seconds", "60", "--json"))
    assert (q["prefix"], q["destination"], q["cost"]) == ("9375", "Afghanistan Cellular-AT",
                                                          "0.2204")


def test_cards_set_callerid(ivr, tmp_path, monkeypatch):
    from ivr import login
    from ivr.db import Database

    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("cards", "issue", "--plan", "retail", "--count", "2", "--balance", "3",
        "--out", "cards.csv")
    first, second = (r["card_number"] for r in csv.DictReader((tmp_path / "cards.csv").open()))

    # Normalised as dialled in the default region (US): national, 1+10, or +international.
    out = json.loads(ivr("cards", "set-callerid", first, "(212) 555-1234", "--json"))
    assert (out["card"], out["callerid"]) == (first, "12125551234")
    text = ivr("cards", "set-callerid", first, "+1 212 555 1234")  # again: harmless
    assert text.strip() == f"card ...{first[-4:]}: pinless log-in from caller ID 12125551234"
    assert json.loads(ivr("cards", "show", first, "--json"))["callerid"] == "12125551234"
    db = Database(f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    try:
        result = login.pinless(db, "12125551234")
        assert result is not None and result.verdict is login.Verdict.OK
        assert result.holder is not None and result.holder.last4 == first[-4:]

        # One caller ID, one card: refused in a clear line, nothing changed.
        err = ivr("cards", "set-callerid", second, "2125551234", expect=1)
        assert err.count("\n") == 1 and "already registered" in err and first in err
        assert json.loads(ivr("cards", "show", second, "--json"))["callerid"] is None
        for bad in ("anonymous", "555", "5551234"):
            assert "not a caller ID" in ivr("cards", "set-callerid", second, bad, expect=1)
        assert "--clear" in ivr("cards", "set-callerid", second, expect=1)
        assert "not both" in ivr("cards", "set-callerid", first, "2125551234", "--clear",
                                 expect=1)
        assert "no card ending 0000" in ivr("cards", "set-callerid", "999990000",
                                            "2125551234", expect=1)

        # Cleared, it may go to the other card; a foreign caller ID keeps its country.
        out = json.loads(ivr("cards", "set-callerid", first, "--clear", "--json"))
        assert out["callerid"] is None
        assert "PIN log-in only" in ivr("cards", "set-callerid", first, "--clear")
        assert login.pinless(db, "12125551234") is None
        ivr("cards", "set-callerid", second, "2125551234")
        assert json.loads(ivr("cards", "set-callerid", first, "+44 20 7946 0000",
                              "--json"))["callerid"] == "442079460000"
        monkeypatch.setenv("IVR_DEFAULT_REGION", "GB")
        err = ivr("cards", "set-callerid", second, "020 7946 0000", expect=1)
        assert "442079460000 is already registered" in err
        out = json.loads(ivr("cards", "set-callerid", second, "020 7946 0001", "--json"))
        assert out["callerid"] == "442079460001"
    finally:
        db.dispose()


def test_vouchers(ivr, tmp_path):
    from ivr.db import Database
    from ivr.money.accounts import find_account
    from ivr.money.vouchers import RedeemVerdict, redeem
    from ivr.secrets import load_secret_key

    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("accounts", "create", "--plan", "retail", "--number", "700200", "--balance", "1")
    # The currency defaults to the plans' one.
    out = json.loads(ivr("vouchers", "generate", "--count", "3", "--value", "5",
                         "--out", "vouchers.csv", "--batch", "shop-7", "--json"))
    assert (out["generated"], out["currency"], out["batch"], out["value"]) == (
        3, "USD", "shop-7", "5.00")
    path = tmp_path / "vouchers.csv"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    rows = list(csv.DictReader(path.open()))
    assert [len(r["code"]) for r in rows] == [14, 14, 14]
    first, second, third = (r["code"] for r in rows)
    text = ivr("vouchers", "generate", "--count", "1", "--value", "2", "--currency", "eur",
               "--expires", "2027-12-31", "--length", "16", "--out", "eur.csv")
    assert "1 voucher(s) of 2.00 EUR" in text and "only copy" in text

    shown = json.loads(ivr("vouchers", "show", first, "--json"))
    assert (shown["voucher"], shown["status"], shown["value"], shown["currency"]) == (
        f"...{first[-4:]}", "new", "5.00", "USD")
    assert first not in json.dumps(shown)
    db = Database(f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    try:
        with db.transaction() as s:
            account_id = find_account(s, "700200").id
        # The CLI made the server's key (data_dir/secret.key) and hashed the codes with it.
        key = load_secret_key("", tmp_path / "data" / "secret.key")
        assert redeem(db, first, account_id=account_id, key=key).verdict is RedeemVerdict.OK
    finally:
        db.dispose()
    text = ivr("vouchers", "show", first)
    assert text.startswith(f"voucher ...{first[-4:]} redeemed: 5.00 USD, batch shop-7")
    assert "redeemed by account 700200" in text and first not in text
    assert json.loads(ivr("accounts", "show", "700200", "--json"))["balance"] == "6.00"
    hist = json.loads(ivr("accounts", "history", "700200", "--json"))
    assert [e["kind"] for e in hist["entries"]] == ["voucher", "topup"]

    assert json.loads(ivr("vouchers", "void", second, "--json"))["status"] == "void"
    assert "void" in ivr("vouchers", "void", second)  # twice: harmless
    # Refusals are one clear line, and never echo a whole code.
    for args, says in (
        (("vouchers", "void", first), "already redeemed"),
        (("vouchers", "show", third[:-1] + str((int(third[-1]) + 1) % 10)), "check digit"),
        (("vouchers", "generate", "--count", "1", "--value", "5", "--out", "vouchers.csv"),
         "exists"),
        (("vouchers", "generate", "--count", "0", "--value", "5", "--out", "x.csv"), "count"),
        (("vouchers", "generate", "--count", "1", "--value", "0", "--out", "x.csv"),
         "positive"),
    ):
        err = ivr(*args, expect=1)
        assert says in err and err.count("\n") == 1, err
        assert not any(r["code"] in err for r in rows)
    assert not (tmp_path / "x.csv").exists()
    ivr("plans", "create", "euro", "--currency", "EUR")
    assert "give --currency (plans use EUR, USD)" in ivr(
        "vouchers", "generate", "--count", "1", "--value", "5", "--out", "y.csv", expect=1)
    # The database holds hashes only.
    blob = (tmp_path / "cli.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("cli.sqlite3-*"))
    assert all(r["code"].encode() not in blob for r in rows)


def test_deck_values_the_database_cannot_hold_are_refused_by_line(ivr, ivr_json, tmp_path):
    ivr("plans", "create", "retail", "--currency", "USD")
    (tmp_path / "deck.csv").write_text(DECK)
    ivr("rates", "import", "deck.csv")
    bad = (DECK
           + "retail,33,France,0,0.0000001,60,1,0,,,,\n"  # 5: 7 decimals
           + "retail,34,Spain,0,0.1,60,99999999999999999999,0,,,,\n"  # 6: huge increment
           + "retail,35,Portugal,0,99999999999999999999,60,1,0,,,,\n"  # 7: huge rate
           + "retail,36,Italy,0,0.1,99999999999,1,0,,,,\n"  # 8: huge rate unit
           + "retail,３７,Greece,0,0.1,60,1,0,,,,\n"  # 9: full-width prefix
           + "retail,38,Malta,0,０.1,60,1,0,,,,\n")  # 10: full-width rate
    (tmp_path / "bad.csv").write_text(bad)
    refusal = ivr_json("rates", "import", "bad.csv")["error"]
    assert refusal["code"] == "bad_deck"
    for err in (ivr("rates", "import", "bad.csv", expect=1), refusal["message"]):
        assert "Traceback" not in err
        lines = {int(line.split(":")[0].split()[-1]): line for line in err.splitlines()
                 if line.startswith("  line ")}
        assert sorted(lines) == [5, 6, 7, 8, 9, 10], err
        assert "more than 6 decimal places" in lines[5]
        assert "increment" in lines[6] and "too large" in lines[6]
        assert "rate" in lines[7] and "too large" in lines[7]
        assert "rate_unit" in lines[8] and "bad prefix" in lines[9] and "bad rate" in lines[10]
        assert "previous rates are unchanged" in err
    plans = json.loads(ivr("plans", "list", "--json"))["plans"]
    assert plans[0]["rates"] == 3 and plans[0]["rates_version"] == 1


def test_deck_import_checks_across_lines_and_files(ivr, tmp_path):
    ivr("plans", "create", "retail", "--currency", "USD")
    (tmp_path / "deck.csv").write_text(DECK)
    ivr("rates", "import", "deck.csv")
    bad = (DECK
           + "retail,44,UK,0.10,0.60,60,60,0,,,,\n"  # 5: duplicate of line 3
           + "retail,49,Germany,0,0.1,60,1,30,,,,\n"  # 6: no from_second 0 row
           + "retail,33,France,0,0.1,60,1,0,mon-fri,,,\n"  # 7
           + "retail,33,France,0,0.2,60,1,0,fri-sun,,,\n")  # 8: overlaps line 7 (fri)
    (tmp_path / "bad.csv").write_text(bad)
    err = ivr("rates", "import", "bad.csv", expect=1)
    assert "line 5: duplicate of line 3" in err
    assert "line 6: no from_second 0 row" in err
    assert "line 8: window fri-sun 00:00-24:00 overlaps" in err
    plans = json.loads(ivr("plans", "list", "--json"))["plans"]
    assert plans[0]["rates"] == 3 and plans[0]["rates_version"] == 1
    # A missing file, a directory, a file that is not text: one line each.
    for path, says in (("missing.csv", "No such file"), (".", "Is a directory")):
        err = ivr("rates", "import", path, expect=1)
        assert says in err and err.count("\n") == 1 and "Traceback" not in err
    (tmp_path / "latin1.csv").write_bytes(DECK.replace("UK", "Espa\xf1a").encode("latin-1"))
    err = ivr("rates", "import", "latin1.csv", expect=1)
    assert "not UTF-8" in err and err.count("\n") == 1
    # Unknown plans: refused unless --currency creates them.
    (tmp_path / "new.csv").write_text(DECK.replace("retail,", "wholesale,"))
    assert "no plan named 'wholesale'" in ivr("rates", "import", "new.csv", expect=1)
    out = json.loads(ivr("rates", "import", "new.csv", "--currency", "eur", "--json"))
    assert out == {"plans": {"wholesale": 3}, "versions": {"wholesale": 1}}
    assert "3 rates imported (version 2)" in ivr("rates", "import", "deck.csv")


@pytest.mark.parametrize("amount", [
    "1e400", "1e13", "10000000000000", "-10000000000000", "NaN", "Infinity", "1e-6", "0.000001",
    "0.0000001", "５", "1_000", "1,5", "", " ", "0x10", "１.00",
])
def test_money_typed_on_the_command_line_is_refused_in_one_line(ivr, ivr_json, amount):
    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("accounts", "create", "--plan", "retail", "--number", "700300", "--balance", "5")
    refusal = ivr_json("accounts", "credit", "700300", amount)["error"]
    assert refusal["code"] == "bad_amount" and "\n" not in refusal["message"], refusal
    for args in (("accounts", "credit", "700300", amount),
                 ("accounts", "create", "--plan", "retail", "--balance", amount),
                 ("cards", "issue", "--plan", "retail", "--count", "1", "--balance", amount,
                  "--out", "cards.csv"),
                 ("vouchers", "generate", "--count", "1", "--value", amount,
                  "--out", "v.csv"),
                 ("rates", "max-seconds", "--plan", "retail", "--number", "1555",
                  "--balance", amount)):
        if args[0] == "rates" and amount in ("1e-6", "0.000001"):
            continue  # a balance may have any decimals up to 6 for a quote
        err = ivr(*args, expect=1)
        assert err.count("\n") == 1 and err.startswith("ivr: "), (args, err)
        assert "Traceback" not in err
    shown = json.loads(ivr("accounts", "show", "700300", "--json"))
    assert (shown["balance"], len(shown["cards"])) == ("5.00", 0)
    assert not any(Path(name).exists() for name in ("cards.csv", "v.csv"))


def test_amounts_within_the_plans_decimals_are_taken(ivr):
    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("accounts", "create", "--plan", "retail", "--number", "700400", "--balance", "5.000")
    out = json.loads(ivr("accounts", "credit", "700400", "999999999999.99", "--json"))
    assert out["balance"] == "1000000000004.99"
    err = ivr("accounts", "credit", "700400", "0.001", expect=1)
    assert "more decimals than the account's plan (retail, USD) allows (2)" in err
    out = json.loads(ivr("accounts", "credit", "700400", "-4.99", "--kind", "adjustment",
                         "--json"))
    assert out["balance"] == "1000000000000.00"
    for bad in ("５", "1_0", "0x1"):  # counts and seconds: ASCII digits only
        with pytest.raises(SystemExit):
            ivr("cards", "issue", "--plan", "retail", "--count", bad, "--out", "c.csv")


# ----------------------------------------------------------- options that would be ignored


def test_cards_issue_refuses_options_it_would_ignore(ivr, tmp_path):
    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("plans", "create", "other", "--currency", "USD", "--decimals", "2")
    ivr("accounts", "create", "--plan", "retail", "--number", "700500", "--balance", "5")
    # The cards share the account's balance: a --balance would be dropped.
    err = ivr("cards", "issue", "--account", "700500", "--count", "2", "--balance", "3",
              "--out", "shared.csv", expect=1)
    assert err.count("\n") == 1 and err.startswith("ivr: --balance cannot be used with "
                                                   "--account"), err
    assert "ivr accounts credit 700500" in err
    err = ivr("cards", "issue", "--plan", "other", "--account", "700500", "--count", "2",
              "--out", "shared.csv", expect=1)
    assert "account 700500, which is on plan retail" in err
    with pytest.raises(SystemExit):  # argparse: --count missing
        ivr("cards", "issue", "--account", "700500", "--out", "shared.csv")
    assert "give --plan" in ivr("cards", "issue", "--count", "1", "--out", "c.csv", expect=2)
    assert not (tmp_path / "shared.csv").exists() and not (tmp_path / "c.csv").exists()
    shown = json.loads(ivr("accounts", "show", "700500", "--json"))
    assert (shown["balance"], shown["cards"]) == ("5.00", [])
    # Without the contradiction: the account's plan (named or not), its own balance.
    ivr("cards", "issue", "--account", "700500", "--count", "1", "--out", "a.csv")
    ivr("cards", "issue", "--plan", "retail", "--account", "700500", "--count", "1",
        "--out", "b.csv")
    assert len(json.loads(ivr("accounts", "show", "700500", "--json"))["cards"]) == 2
    # Deck import: --plan names the plan of an astpp deck only; --tz goes with --currency.
    (tmp_path / "deck.csv").write_text(DECK)
    assert "--plan is for --format astpp" in ivr("rates", "import", "deck.csv", "--plan",
                                                 "other", expect=1)
    assert "--tz is the time zone of plans created by --currency" in ivr(
        "rates", "import", "deck.csv", "--tz", "Europe/Paris", expect=1)
    assert json.loads(ivr("plans", "list", "--json"))["plans"][1]["rates"] == 0


def test_money_is_written_alike_in_every_output(ivr, tmp_path):
    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    ivr("plans", "create", "fine", "--currency", "USD", "--decimals", "4")
    ivr("plans", "create", "yen", "--currency", "JPY", "--decimals", "0")
    ivr("accounts", "create", "--plan", "retail", "--number", "700600", "--balance", "5")
    ivr("cards", "issue", "--plan", "retail", "--count", "1", "--balance", "5",
        "--out", "new.csv")
    ivr("cards", "issue", "--account", "700600", "--count", "1", "--out", "shared.csv")
    rows = [*csv.DictReader((tmp_path / "new.csv").open()),
            *csv.DictReader((tmp_path / "shared.csv").open())]
    assert [r["balance"] for r in rows] == ["5.00", "5.00"]
    card = json.loads(ivr("cards", "show", rows[1]["card_number"], "--json"))
    assert card["balance"] == "5.00"
    assert "balance 5.00 USD" in ivr("cards", "show", rows[1]["card_number"])
    shown = json.loads(ivr("accounts", "show", "700600", "--json"))
    assert (shown["balance"], shown["reserved"], shown["available"]) == ("5.00", "0.00",
                                                                         "5.00")
    entries = json.loads(ivr("accounts", "history", "700600", "--json"))["entries"]
    assert [(e["amount"], e["balance_after"]) for e in entries] == [("5.00", "5.00")]
    assert "5.00" in ivr("accounts", "history", "700600")
    # A 4-decimal plan: cents, and every digit an amount has; a whole-unit plan: units.
    ivr("accounts", "create", "--plan", "fine", "--number", "700601", "--balance", "0.1234")
    ivr("accounts", "create", "--plan", "yen", "--number", "700602", "--balance", "500")
    assert json.loads(ivr("accounts", "show", "700601", "--json"))["balance"] == "0.1234"
    yen = json.loads(ivr("accounts", "credit", "700602", "20", "--json"))
    assert (yen["balance"], yen["reserved"]) == ("520", "0")
    ivr("cards", "issue", "--account", "700602", "--count", "1", "--out", "yen.csv")
    assert next(csv.DictReader((tmp_path / "yen.csv").open()))["balance"] == "520"
    (tmp_path / "deck.csv").write_text(DECK)
    ivr("rates", "import", "deck.csv")
    q = json.loads(ivr("rates", "quote", "--plan", "retail", "--number", "447700900123",
                       "--seconds", "60", "--json"))
    assert (q["cost"], q["connect_fee"]) == ("0.70", "0.10")
    m = json.loads(ivr("rates", "max-seconds", "--plan", "retail", "--number", "1555",
                       "--balance", "1", "--json"))
    assert m["balance"] == "1.00"


# ----------------------------------------------------------- --json refusals


def both(ivr, ivr_json, *args: str, expect: int = 1) -> dict:
    """The refusal of ``ivr ARGS``: one line on stderr, and under --json one object on
    stdout with the same message and exit status; returns the object's error."""
    err = ivr(*args, expect=expect)
    assert err.count("\n") == 1 and err.startswith("ivr: "), err
    refusal = ivr_json(*args, expect=expect)
    assert set(refusal) == {"error"} and set(refusal["error"]) == {"code", "message"}
    assert refusal["error"]["message"] == err[len("ivr: "):].rstrip("\n")
    return refusal["error"]


def test_json_refusals_are_one_object_on_stdout(ivr, ivr_json, tmp_path, monkeypatch,
                                                capsys):
    ivr("plans", "create", "retail", "--currency", "USD", "--decimals", "2")
    (tmp_path / "deck.csv").write_text(DECK.replace("retail,*,Anywhere,0,1.20,60,60,0,,,,\n",
                                                    ""))
    ivr("rates", "import", "deck.csv")
    ivr("accounts", "create", "--plan", "retail", "--number", "700700")
    error = both(ivr, ivr_json, "rates", "quote", "--plan", "retail", "--number",
                 "8613800138000", "--seconds", "60")
    assert error["code"] == "no_rate", error
    assert both(ivr, ivr_json, "accounts", "show", "404")["code"] == "not_found"
    assert both(ivr, ivr_json, "cards", "lock", "123456789012")["code"] == "not_found"
    assert both(ivr, ivr_json, "plans", "create", "retail", "--currency", "USD"
                )["code"] == "plan"
    error = both(ivr, ivr_json, "cards", "issue", "--account", "700700", "--count", "1",
                 "--balance", "3", "--out", "c.csv")
    assert error["code"] == "conflicting_options"
    assert both(ivr, ivr_json, "accounts", "credit", "700700", "1.001")["code"] == "bad_amount"
    # The top-up commands share them.
    assert both(ivr, ivr_json, "payments", "list", "--account", "404")["code"] == "not_found"
    assert both(ivr, ivr_json, "auto-recharge", "700700", "--threshold", "2")["code"] == (
        "refused")
    # Usage errors (argparse) exit 2 either way.
    with pytest.raises(SystemExit) as exit_:
        ivr("cards", "issue", "--plan", "retail", "--out", "c.csv")
    assert exit_.value.code == 2
    capsys.readouterr()
    error = ivr_json("cards", "issue", "--plan", "retail", "--out", "c.csv", expect=2)["error"]
    assert error["code"] == "usage" and "--count" in error["message"], error
    # A bad configuration file (exit 2), and a database that does not answer.
    (tmp_path / "bad.toml").write_text("agi_port = 'x'\n")
    monkeypatch.setenv("IVR_CONFIG", str(tmp_path / "bad.toml"))
    assert both(ivr, ivr_json, "plans", "list", expect=2)["code"] == "config"
    monkeypatch.delenv("IVR_CONFIG")
    monkeypatch.setenv("IVR_DATABASE_URL", "postgresql://ivr@127.0.0.1:9/nowhere")
    assert both(ivr, ivr_json, "accounts", "show", "700700")["code"] == (
        "database_unavailable")
