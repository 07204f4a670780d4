"""The 0800 revalue line (context ``ivr-revalue``, route ``revalue``): a registered
customer recharges their mobile's airtime.

Steps, in order, each a function below over the caller's :class:`RevalueCall`:
welcome; identify (the caller ID, normalised, is a customer's; withheld or no
customer's: the caller keys their mobile number, read as E.164 in ``default_region``);
the first code (ivr.revalue.customers.verify: the lock-out and per-caller-ID throttle of
card PINs; a number that is no customer's is answered like a wrong code); which operator
(the configured lookup); the amount (a menu of the operator's products,
``revalue_products``, # for ``revalue_default_amount``), read back and confirmed; then
the recharge: ``service.request`` holds the money and ``fulfil_code`` or
``fulfil_direct`` makes it, as a task, while the caller hears the messages of
``revalue_wait_prompts`` in turn; past ``revalue_wait_timeout`` seconds the caller is
told it is pending (confirmed by SMS) and the task goes on. Last the result: a code read
digit by digit in groups of four (``*`` again), a direct recharge completed or declined,
a refusal's reason, the loyalty points earned; and an SMS of it to the customer's own
number (the code only there), and the low-stock notice when one is due.

Direct recharges go through the operator's configured interface (``revalue_operators``);
a direct customer whose operator has none gets a code from the pool instead.

Money safety: the service's records are the truth. A hang-up at any step loses nothing:
before ``request`` nothing is held; after it the task is never cancelled by the call
(shielded), its result is still sent by SMS, and what it leaves unsettled (an operator
that did not answer) the reconciler settles. First codes are read with ``secret=True``
and recharge codes said inside ``call.secret()``: neither is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from ..agi import AgiSession
from ..config import ConfigError, Settings
from ..login import LoginPolicy
from ..numbers import keypad_digits, normalise_callerid
from ..revalue import codes, loyalty
from ..revalue import service as svc
from ..revalue.customers import CodeVerdict, CustomerInfo, customer_for_callerid, verify
from ..revalue.direct import OperatorInterface
from ..revalue.lookup import InvalidMsisdn, LookupFailed, parse_msisdn
from ..revalue.messages import SETTLED, code_groups, sms_text
from .base import LineCall

if TYPE_CHECKING:
    from ..app import App
    from ..money.notify import Sender

log = logging.getLogger("ivr.flows.revalue")

MAX_TRIES = 3  # per question: the mobile number, the amount menu, the confirmation
MSISDN_MAX_DIGITS = 16
REPEATS = 3  # times the code may be heard again
WAIT_GRACE = 0.5  # seconds a quick recharge is waited for before any message plays
MAX_PRODUCTS = 9  # one key each


# --------------------------------------------------------------------------- settings


def parse_products(text: str) -> dict[str, list[Decimal]]:
    """``revalue_products``: ``NAME=5,10,20;*=5,10`` -> {name casefolded or "*": amounts}.
    ConfigError names the bad entry."""
    table: dict[str, list[Decimal]] = {}
    for number, entry in enumerate(re.split(r"[;\n]", text), 1):
        entry = entry.strip()
        if not entry:
            continue
        name, eq, values = (part.strip() for part in entry.partition("="))
        where = f"revalue_products entry {number} ({name!r})"
        if not eq or not name:
            raise ConfigError(f"{where}: write NAME=AMOUNT,AMOUNT (or *=... for any other)")
        amounts = []
        for raw in values.split(","):
            if not raw.strip():
                continue
            try:
                amount = Decimal(raw.strip())
            except InvalidOperation:
                raise ConfigError(f"{where}: {raw.strip()!r} is not an amount") from None
            exponent = amount.as_tuple().exponent
            if not amount.is_finite() or amount <= 0 or int(exponent) < -6:
                raise ConfigError(f"{where}: {raw.strip()!r} is not a positive amount")
            amounts.append(amount)
        if not amounts or len(amounts) > MAX_PRODUCTS:
            raise ConfigError(f"{where}: 1 to {MAX_PRODUCTS} amounts")
        key = name.casefold()
        if key in table:
            raise ConfigError(f"{where}: given twice")
        table[key] = amounts
    return table


def products_for(settings: Settings, operator: str) -> list[Decimal]:
    """The amounts offered for ``operator`` (its own, else ``*``'s; [] for none)."""
    table = parse_products(settings.revalue_products)
    return table.get(operator.strip().casefold(), table.get("*", []))


def default_amount(settings: Settings, amounts: list[Decimal]) -> Decimal | None:
    """``revalue_default_amount`` when it is one of ``amounts``."""
    try:
        wanted = Decimal(settings.revalue_default_amount.strip())
    except InvalidOperation:
        return None
    return next((a for a in amounts if a == wanted), None)


def wait_prompts(s: RevalueCall) -> list[str]:
    """``revalue_wait_prompts`` that the catalogue has (an unknown id is skipped)."""
    ids = [x.strip() for x in s.settings.revalue_wait_prompts.split(",") if x.strip()]
    known = [x for x in ids if x in s.voice.catalogue]
    if len(known) < len(ids):
        log.warning("revalue_wait_prompts: not in the catalogue, skipped: %s",
                    ", ".join(x for x in ids if x not in known))
    return known


# --------------------------------------------------------------------------- the call


@dataclass
class RevalueCall(LineCall):
    """One caller's session on the revalue line."""

    callerid: str | None  # E.164 digits, None when withheld
    customer: CustomerInfo | None = None
    operator: str = ""
    finished: bool = False


async def revalue(call: AgiSession, app: App) -> None:
    s = RevalueCall(call, app, normalise_callerid(call.env.callerid,
                                                  app.settings.default_region))
    await call.answer()
    await s.voice.play(call, "revalue-welcome")
    customer = await identify(s)
    if customer is not None:
        s.customer = customer
        if customer.language in s.voice.catalogue.languages:
            s.voice.set_language(call, customer.language)
        await recharge(s)
    await finish(s)


async def finish(s: RevalueCall) -> None:
    """The route's own end (IVR_DONE: see dialplan/ivr-revalue.conf); once."""
    if s.finished:
        return
    s.finished = True
    await s.call.set_variable("IVR_DONE", "1", dead_ok=True)
    await s.voice.play(s.call, "goodbye")
    await s.call.hangup()


# --------------------------------------------------------------------------- identify


async def identify(s: RevalueCall) -> CustomerInfo | None:
    """The caller ID's customer, else the number keyed in; then their first code."""
    region = s.settings.default_region
    known = await s.db.run(customer_for_callerid, s.db, s.call.env.callerid, region=region)
    if known is not None:
        msisdn = known.msisdn
        log.info("%s customer ...%s by caller ID", s.tag, msisdn[-4:])
    else:
        if s.callerid is not None:
            await s.voice.play(s.call, "not-registered")
        typed = await ask_msisdn(s)
        if typed is None:
            return None
        msisdn = typed
    return await check_code(s, msisdn)


async def ask_msisdn(s: RevalueCall) -> str | None:
    """The caller's mobile number keyed in, as E.164; None after MAX_TRIES."""
    for _ in range(MAX_TRIES):
        typed = keypad_digits(await s.voice.ask(s.call, "enter-mobile-number", 10_000,
                                                MSISDN_MAX_DIGITS) or "")
        if not typed:
            await s.voice.play(s.call, "no-input")
            continue
        try:
            return parse_msisdn(typed, s.settings.default_region)
        except InvalidMsisdn as exc:
            log.info("%s mobile number keyed in refused (%s)", s.tag, exc)
            await s.voice.play(s.call, "invalid-number")
    await s.voice.play(s.call, "too-many-attempts")
    return None


async def check_code(s: RevalueCall, msisdn: str) -> CustomerInfo | None:
    """The first code, as many tries as the policy locks after (``pin_max_failures``);
    a wrong code and a number that is no customer's sound the same."""
    policy = LoginPolicy.from_settings(s.settings)
    for _ in range(max(1, policy.pin_max_failures)):
        code = keypad_digits(await s.voice.ask(s.call, "enter-first-code", 10_000, 12,
                                               secret=True) or "")
        if not code:
            await s.voice.play(s.call, "no-input")
            continue
        checked = await s.db.run(verify, s.db, msisdn, code, s.call.env.callerid, policy)
        verdict = checked.verdict
        if verdict is CodeVerdict.OK:
            assert checked.customer is not None
            log.info("%s customer ...%s identified", s.tag, msisdn[-4:])
            return checked.customer
        if verdict is CodeVerdict.LOCKED:
            log.info("%s customer ...%s is locked", s.tag, msisdn[-4:])
            await s.voice.play(s.call, "revalue-locked")
            return None
        if verdict is CodeVerdict.THROTTLED:
            log.warning("%s first code refused: too many failures from this caller ID",
                        s.tag)
            await s.voice.play(s.call, "too-many-attempts")
            return None
        log.info("%s wrong first code for ...%s (%s)", s.tag, msisdn[-4:], verdict)
        await s.voice.play(s.call, "wrong-first-code")
        if checked.failures >= policy.pin_max_failures:
            break  # locked now: another try would only say so
    await s.voice.play(s.call, "too-many-attempts")
    return None


# --------------------------------------------------------------------------- amount


async def which_operator(s: RevalueCall, msisdn: str) -> str | None:
    try:
        found = await s.app.number_lookup().lookup(msisdn)
    except LookupFailed as exc:
        log.warning("%s operator lookup for ...%s failed: %s", s.tag, msisdn[-4:], exc)
        return None
    if not found.operator:
        log.info("%s no operator known for ...%s", s.tag, msisdn[-4:])
        return None
    log.info("%s ...%s is with %s%s", s.tag, msisdn[-4:], found.operator,
             "" if found.verified else " (unverified)")
    return found.operator


async def choose_amount(s: RevalueCall, amounts: list[Decimal], currency: str
                        ) -> Decimal | None:
    """A key per amount, # for the default; None after MAX_TRIES."""
    default = default_amount(s.settings, amounts)
    keys = "".join(str(i + 1) for i in range(len(amounts))) + ("#" if default else "")
    for _ in range(MAX_TRIES):
        digit = await s.voice.play(s.call, "choose-recharge-amount", keys)
        for i, value in enumerate(amounts):
            digit = digit or await s.voice.play(s.call, "for-amount", keys)
            digit = digit or await s.voice.say_money(s.call, value, currency, keys)
            digit = digit or await s.voice.play(s.call, "press", keys)
            digit = digit or await s.call.say_digits(str(i + 1), keys)
            if digit:
                break
        if default is not None:
            digit = digit or await s.voice.play(s.call, "default-amount", keys)
            digit = digit or await s.voice.say_money(s.call, default, currency, keys)
        if not digit:
            digit = await s.call.wait_for_digit(5000)
        if digit == "#" and default is not None:
            return default
        if digit and digit in keys:
            return amounts[int(digit) - 1]
        await say_no_choice(s, digit)
    await s.voice.play(s.call, "too-many-attempts")
    return None


async def say_no_choice(s: RevalueCall, digit: str) -> None:
    if digit:
        await s.voice.play(s.call, "invalid-option")
    else:
        await s.voice.play(s.call, "no-input")


async def confirmed_amount(s: RevalueCall, amounts: list[Decimal], currency: str
                           ) -> Decimal | None:
    """The amount chosen, read back: 1 confirms it, 2 chooses again."""
    for _ in range(MAX_TRIES):
        amount = await choose_amount(s, amounts, currency)
        if amount is None:
            return None
        for _ in range(MAX_TRIES):
            digit = await s.voice.play(s.call, "you-chose-amount", "12")
            digit = digit or await s.voice.say_money(s.call, amount, currency, "12")
            digit = digit or await s.voice.play(s.call, "confirm-amount", "12")
            digit = digit or await s.call.wait_for_digit(5000)
            if digit == "1":
                return amount
            if digit == "2":
                break
            await say_no_choice(s, digit)
        else:
            break
    await s.voice.play(s.call, "too-many-attempts")
    return None


# --------------------------------------------------------------------------- recharge


async def recharge(s: RevalueCall) -> None:
    customer = s.customer
    assert customer is not None
    operator = await which_operator(s, customer.msisdn)
    amounts = products_for(s.settings, operator) if operator else []
    if operator is None or not amounts:
        await s.voice.play(s.call, "operator-unknown")
        return
    s.operator = operator
    amount = await confirmed_amount(s, amounts, customer.currency)
    if amount is None:
        return
    interface = direct_interface(s, customer, operator)
    mode = svc.Mode.DIRECT if interface is not None else svc.Mode.CODE
    held = await svc.request(s.db, customer_id=customer.id, amount=amount, operator=operator,
                             gateway=s.app.gateway, mode=mode,
                             rates=loyalty.rates_from_settings(s.settings))
    log.info("%s recharge %s of %s %s for ...%s (%s): %s", s.tag, held.request_id, amount,
             customer.currency, customer.msisdn[-4:], mode, held.state)
    if held.state is not svc.State.HELD:
        await refused(s, held)
        await notify(s, held)
        return
    task = start(fulfil(s, held, interface))
    outcome: svc.Outcome | None = None
    try:
        outcome = await wait_with_messages(s, task)
        if outcome is None:
            await s.voice.play(s.call, "recharge-pending")
            await finish(s)  # the caller is told; the recharge goes on
        else:
            await announce(s, outcome)
    finally:
        # Whatever the caller did, the recharge ends (an operator's answer is bounded by
        # its timeout) and its result goes out by SMS.
        try:
            outcome = await asyncio.shield(task)
        except Exception:
            log.exception("%s recharge %s failed; left to the reconciler", s.tag,
                          held.request_id)
        else:
            if outcome.changed or outcome.state not in SETTLED:
                await notify(s, outcome)
            else:  # settled first by a callback or the reconciler, which sent its SMS
                log.info("%s recharge %s was settled (%s) elsewhere: SMS sent from there",
                         s.tag, outcome.request_id, outcome.state)


def direct_interface(s: RevalueCall, customer: CustomerInfo, operator: str
                     ) -> OperatorInterface | None:
    """The operator's interface for a direct customer; None: a code from the pool."""
    if customer.mode.value != svc.Mode.DIRECT.value:
        return None
    try:
        interface = s.app.revalue_operators().get(operator)
    except ConfigError as exc:
        log.error("%s revalue_operators: %s", s.tag, exc)
        interface = None
    if interface is None:
        log.warning("%s %s has no direct interface (revalue_operators): a code instead",
                    s.tag, operator)
    return interface


_RUNNING: set[asyncio.Task[Any]] = set()  # the recharges in progress (kept referenced)


def start(work: Coroutine[Any, Any, svc.Outcome]) -> asyncio.Task[svc.Outcome]:
    task = asyncio.get_running_loop().create_task(work)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    return task


async def fulfil(s: RevalueCall, held: svc.Outcome,
                 interface: OperatorInterface | None) -> svc.Outcome:
    if interface is None:
        return await svc.fulfil_code(s.db, held.request_id, key=s.app.secret_key,
                                     low_stock=s.settings.code_low_stock)
    return await svc.fulfil_direct(s.db, s.app.operator_client(interface), held.request_id)


async def wait_with_messages(s: RevalueCall, task: asyncio.Task[svc.Outcome]
                             ) -> svc.Outcome | None:
    """The task's outcome, the wait messages playing in turn meanwhile (each to its
    end); None when it has not ended after ``revalue_wait_timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.settings.revalue_wait_timeout
    prompts = wait_prompts(s)
    speaker = s.voice  # ids checked against the catalogue by wait_prompts
    turn = 0
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return None
        wait = min(WAIT_GRACE, left) if prompts else left
        done, _ = await asyncio.wait({task}, timeout=wait)
        if done:
            return task.result()
        if prompts and deadline - loop.time() > 0:
            prompt = prompts[turn % len(prompts)]
            turn += 1
            await s.call.stream_file(speaker.path(s.call, prompt))
            if task.done():
                return task.result()


# --------------------------------------------------------------------------- the result


async def refused(s: RevalueCall, outcome: svc.Outcome) -> None:
    reason = outcome.reason
    if reason == svc.Reason.INSUFFICIENT_FUNDS:
        await s.voice.play(s.call, "refused-insufficient-funds")
    elif reason == svc.Reason.PAYMENT_DECLINED:
        await s.voice.play(s.call, "refused-payment-declined")
    elif reason == svc.Reason.NO_SAVED_METHOD:
        await s.voice.play(s.call, "refused-no-saved-card")
    elif reason == svc.Reason.ACCOUNT_INACTIVE:
        await s.voice.play(s.call, "refused-account-inactive")
    elif reason == svc.Reason.NONE_LEFT:
        await s.voice.play(s.call, "no-codes-left")
    else:
        await s.voice.play(s.call, "recharge-failed")


async def announce(s: RevalueCall, outcome: svc.Outcome) -> None:
    state = outcome.state
    if state is svc.State.ISSUED:
        await read_code(s, outcome.code)
    elif state is svc.State.COMPLETED:
        await s.voice.play(s.call, "recharge-applied")
    elif state is svc.State.DECLINED:
        await s.voice.play(s.call, "recharge-failed")
    elif state is svc.State.REFUSED:
        await refused(s, outcome)
    else:  # CREATED, UNKNOWN: the operator has not said yet
        await s.voice.play(s.call, "recharge-pending")
    if state in (svc.State.ISSUED, svc.State.COMPLETED) and outcome.points > 0:
        await s.voice.play(s.call, "points-earned")
        await s.call.say_number(outcome.points)
        await s.voice.play(s.call, "loyalty-points")


async def read_code(s: RevalueCall, code: str) -> None:
    """The code digit by digit, in groups; * says it again."""
    for _ in range(1 + REPEATS):
        await s.voice.play(s.call, "your-code-is")
        with s.call.secret():  # the code never reaches a log
            for group in code_groups(code):
                await s.call.say_digits(group)
        await s.voice.play(s.call, "code-sent-by-sms")
        digit = await s.voice.play(s.call, "repeat-code", "*")
        digit = digit or await s.call.wait_for_digit(3000)
        if digit != "*":
            return


# --------------------------------------------------------------------------- SMS


async def notify(s: RevalueCall, outcome: svc.Outcome) -> None:
    """The SMS of the result, and the low-stock notice when one is due. A sender that
    fails is logged (never the text: it may hold a code)."""
    customer = s.customer
    assert customer is not None
    email, sms = senders(s)
    if sms is not None:
        try:
            await sms.send(customer.msisdn, "Recharge", sms_text(outcome, s.operator))
            log.info("%s SMS of recharge %s (%s) sent to ...%s", s.tag, outcome.request_id,
                     outcome.state, customer.msisdn[-4:])
        except Exception as exc:
            log.warning("%s SMS of recharge %s not sent: %s", s.tag, outcome.request_id,
                        type(exc).__name__)
    else:
        log.info("%s no SMS of recharge %s (sms_mode is off)", s.tag, outcome.request_id)
    if outcome.notice is not None:
        await codes.send_low_stock_notice(s.db, outcome.notice, sender=email,
                                          to=s.settings.operator_email)


def senders(s: RevalueCall) -> tuple[Sender | None, Sender | None]:
    controller = s.app.controller_for(s.call)
    try:
        return s.app.notice_senders(controller.ami if controller else None)
    except ValueError as exc:
        log.warning("%s no notices sent: %s", s.tag, exc)
        return None, None

