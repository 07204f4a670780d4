"""The newcomer's demo: what `ivr run` prints so that a first-time user can register any
SIP softphone and call the access number at once.

On first run :func:`ensure_demo` makes

- a softphone account named ``softphone`` (:func:`ivr.sip.add_phone`: the database keeps
  only its md5 credential, like any phone's);
- when the database has no rating plan yet, a ``demo`` plan with a small rate deck
  (:data:`DEMO_RATES`: per-second billing, the US at 0.60/min, so a call of n seconds
  costs exactly n cents) and one demo card on it with 5.00.

The phone's password and the card's number and PIN are kept in ``data_dir/softphone.txt``
(mode 0600 from the moment it exists) so that every later run prints the same account
and card. Keeping a PIN in clear breaks the rule that PINs exist in clear only in the
card file handed over at issue; it is acceptable here because the demo card is the
operator's own, holds 5.00 of play money on a plan the demo made, and the file sits in
the server's private data directory next to its secret key and AMI secret, which are as
sensitive (whoever reads that directory can do far more than spend 5.00). The same goes
for the phone's password: a phone reaches only the IVR lines, never a trunk.
`ivr run --no-demo` makes nothing and prints nothing; delete the file, the phone
(`ivr sip phones remove softphone`) and the card to start again.

What is made is decided from the database, not from the file alone:

- the phone is made when no phone named ``softphone`` exists; when one exists but the
  file does not hold a password matching its credential (someone else added it, or the
  file was removed) the password is unknown and the text says how to get a new one;
- the plan is made only when no plan exists at all: an operator's own plans are never
  joined by a second one. The card is made only on the demo's own plan and only while
  the database has no card at all, so a database already in use gets the phone and no
  demo card, and a card lost between the plan's commit and the card's (a crash) is made
  on the next run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select

from . import sip
from .asterisk.instance import sip_line_routes, write_private
from .config import Settings
from .db import Database
from .db.models import Account, Card, RatingPlan, SipPhone
from .db.types import display
from .money.accounts import issue_cards
from .money.rates_store import create_plan, import_rows
from .rating import RateRow

DEMO_FILE = "softphone.txt"
PHONE = "softphone"
PLAN = "demo"
CURRENCY = "USD"
CARD_BALANCE = Decimal("5.00")
# Per-second billing (increment 1): a call of n seconds to the US costs exactly n cents,
# to the UK 2n cents. The 1999x prefixes are the sandbox test carrier's behaviours.
DEMO_RATES = (
    ("1", "USA and Canada", "0.60"),
    ("44", "United Kingdom", "1.20"),
    ("19999", "Test busy", "0.60"),
    ("19998", "Test no answer", "0.60"),
    ("19997", "Test congestion", "0.60"),
    ("19995", "Test unavailable", "0.60"),
)
# A number the sandbox test carrier answers and keeps up (dialplan/ivr-test.conf).
TRY_NUMBER = "2125550100"
TEST_CARRIER = "@ivr-test-callee"  # in trunk_dial: the sandbox test carrier
WEB_ADMIN = "admin"  # the web console's first user, made by `ivr run`


@dataclass(frozen=True)
class Demo:
    """The demo account and card as `ivr run` prints them."""

    phone: str
    password: str | None  # None: the phone exists, its password is not ours to show
    card: str | None  # None: no demo card (the database has plans and cards of its own)
    pin: str | None
    balance: Decimal | None
    currency: str
    outbound_trunk: str | None  # the trunk paid calls go out on, if one is marked
    web_user: str | None = None  # the console's first admin (None: users of its own)
    web_password: str | None = None  # None: not ours to show (changed, or not made here)


def ensure_demo(db: Database, settings: Settings) -> Demo:
    """Make the demo phone, plan and card when missing (see the module's rules) and
    return them; a second call makes nothing and returns the same."""
    path = settings.data_dir / DEMO_FILE
    kept = read_kept(path)
    with db.transaction() as s:
        row = s.scalar(select(SipPhone).where(SipPhone.name == PHONE))
        if row is None:
            password: str | None = sip.add_phone(s, PHONE).password
        else:
            password = kept.get("password")
            if password is None or sip.md5_cred(PHONE, password) != row.md5_cred:
                password = None
        plans = list(s.scalars(select(RatingPlan.name)))
        if not plans:
            create_plan(s, PLAN, CURRENCY)
            import_rows(s, [RateRow(PLAN, prefix, Decimal(rate), destination=name,
                                    increment=1) for prefix, name, rate in DEMO_RATES])
            plans = [PLAN]
        no_cards = s.scalar(select(func.count(Card.id))) == 0
        outbound = sip.outbound(s)
    card, pin = kept.get("card"), kept.get("pin")
    if card is not None and pin is not None and not _card_exists(db, card):
        card = pin = None
    if card is None and plans == [PLAN] and no_cards:
        with tempfile.TemporaryDirectory() as tmp:  # issue_cards' CSV: PIN kept below
            issued = issue_cards(db, PLAN, 1, CARD_BALANCE, Path(tmp) / "demo.csv")[0]
        card, pin = issued.number, issued.pin
    if card is None:
        pin = None
    web_user, web_password = _ensure_web_admin(db, kept)
    wanted = {"phone": PHONE, "password": password, "card": card, "pin": pin,
              "web_user": web_user, "web_password": web_password}
    if wanted != {k: kept.get(k) for k in wanted}:
        save_kept(path, wanted)
    balance, currency = _balance(db, card) if card else (None, CURRENCY)
    return Demo(PHONE, password, card, pin, balance, currency,
                outbound.name if outbound else None, web_user, web_password)


def _ensure_web_admin(db: Database, kept: dict[str, str]) -> tuple[str | None, str | None]:
    """The web console's first admin, made when the console has no users; its password
    is shown while it still logs in (a changed one is not ours to show)."""
    from .web import users

    if not users.has_users(db):
        return WEB_ADMIN, users.add_user(db, WEB_ADMIN, users.Role.ADMIN)
    name, password = kept.get("web_user"), kept.get("web_password")
    if name and password and users.password_ok(db, name, password):
        return name, password
    return None, None


def read_kept(path: Path) -> dict[str, str]:
    """The ``key = value`` lines of the demo file (empty when there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    kept: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            kept[key.strip()] = value.strip()
    return kept


def save_kept(path: Path, values: dict[str, str | None]) -> None:
    """Write the demo file, mode 0600 from creation (it holds a password and a PIN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# `ivr run`'s demo softphone account and card (ivr/demo.py). Private: "
             "it holds their password and PIN."]
    lines += [f"{k} = {v}" for k, v in values.items() if v is not None]
    write_private(path, "\n".join(lines) + "\n")


def _card_exists(db: Database, number: str) -> bool:
    with db.reading() as s:
        return s.scalar(select(Card.id).where(Card.number == number)) is not None


def _balance(db: Database, number: str) -> tuple[Decimal, str]:
    with db.reading() as s:
        account = s.scalar(select(Account).join(Card, Card.account_id == Account.id)
                           .where(Card.number == number))
        assert account is not None  # checked above, cards are never deleted
        return account.balance, account.currency


def sip_domain(settings: Settings) -> str:
    """The domain a phone registers to: the SIP bind address, or the public one when
    it listens on every address."""
    host, _, port = settings.sip_bind.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::"):
        host = settings.sip_external_address or "<this machine's address>"
    return f"{host}:{port}"


def demo_text(demo: Demo, settings: Settings) -> str:
    """The lines `ivr run` prints: how to register a softphone and what to call."""
    routes = sip_line_routes(settings.sip_lines)
    access = next((n for n, ctx in routes.items() if ctx == "ivr-access"), None)
    lines_text = ", ".join(
        f"{number} for the {'access line' if ctx == 'ivr-access' else 'operator'}"
        for number, ctx in routes.items())
    out = ["ivr: register any SIP softphone (UDP or TCP) with this account:",
           f"  domain    {sip_domain(settings)}",
           f"  user      {demo.phone}"]
    if demo.password is not None:
        out.append(f"  password  {demo.password}")
    else:
        out.append(f"  password  (not known here: `ivr sip phones remove {demo.phone}` "
                   "and run again for a new one)")
    out.append(f"  then dial {lines_text}" if lines_text else "  (sip_lines is empty)")
    if demo.card is not None and demo.pin is not None:
        left = (f" ({display(demo.balance)} {demo.currency} left)"
                if demo.balance is not None else "")
        out.append(f"ivr: demo card: number {demo.card}, PIN {demo.pin}{left}")
        if demo.outbound_trunk is None and TEST_CARRIER in settings.trunk_dial:
            out.append(f"  dial {access or 'the access line'}, type the card number #, the "
                       f"PIN #, then {TRY_NUMBER} # (the sandbox test carrier answers it; "
                       "19999... is busy, 19998... never answers)")
    if demo.web_user is not None and settings.web_bind:
        out.append(f"ivr: web console log-in (its address is printed when the server is "
                   f"up): user {demo.web_user}, password {demo.web_password}")
    out.append("ivr: (`ivr run --no-demo` makes and prints none of this)")
    return "\n".join(out)
