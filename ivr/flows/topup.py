"""Mid-call top-up (route ``topup``): the caller presses ``*9`` during a call.

Asterisk runs this route on the caller's channel through the ``topup`` feature
(features.conf applicationmap, enabled per call by DYNAMIC_FEATURES); meanwhile the called
party hears music on hold, and when the route returns the bridge goes on. The same menu
(:func:`topup_menu`) is offered at log-in to a card with nothing left.

Menu: 1 a payment card (number, expiry MMYY, security code; the last four digits are read
back), 2 a recharge code, 3 the payment method already linked to the account, confirmed
with the PIN; then an amount from ``topup_amounts``. On success the account is credited
(once per payment id), the live call's Asterisk-side limit moves to what the new balance
buys, and the caller hears the new balance and time. On failure or timeout: a prompt, and
back to the call with its old limit. While the route runs Asterisk cannot see the feature
key, so ``*9`` typed during those last words ("returning to your call") opens the menu
again.

Every key typed here is read with ``secret=True``: never logged by us, and the server's
AMI session receives no DTMF or AGI events. Only the last four digits of a card are
spoken or logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from .. import login, payments
from ..agi import AgiSession
from ..ami import AmiError
from ..config import Settings
from ..live.calls import CallController, LiveCall, backstop
from ..login import LoginPolicy, Verdict
from ..money import vouchers
from ..numbers import keypad_digits
from .base import LineCall

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("ivr.flows.topup")

MAX_TRIES = 3
# The top-up key is *9 (features.conf); after the *, the 9 may come this late (ms): the
# featuredigittimeout that features.conf gives Asterisk during the call.
FEATURE_DIGIT_TIMEOUT_MS = 1000


@dataclass
class TopUpSession(LineCall):
    """A caller in the top-up menu: during a call (``*9``) or at log-in."""

    card_id: int
    account_id: int
    currency: str
    callerid: str | None = None


async def topup(call: AgiSession, app: App) -> None:
    """The ``*9`` feature during a call. The live call carries its card, account and
    currency, so nothing is looked up before the menu."""
    controller = app.controller_for(call)
    live = controller.live_call(call.env.uniqueid) if controller else None
    if controller is None or live is None or live.card_id is None:
        log.warning("[%s] top-up key outside a tracked call", call.env.uniqueid)
        await app.voice.play(call, "service-unavailable")
        return
    app.voice.set_language(call, live.language)
    session = TopUpSession(call, app, live.card_id, live.account_id, live.currency,
                           live.callerid)
    log.info("%s top-up menu during call %s", session.tag, live.key)
    while await menu_during_call(session, controller, live):
        log.info("%s *9 again while returning to call %s", session.tag, live.key)


async def menu_during_call(s: TopUpSession, controller: CallController,
                           live: LiveCall) -> bool:
    """One round of the menu, then back to the call; True when the caller pressed *9
    again while being told so (the feature key cannot work until this route returns)."""
    call = s.call
    # Paying takes a minute; the call must not end meanwhile. The caller channel's own
    # backstop counts from when it is set.
    await controller.hold_open(call.env.uniqueid, s.settings.topup_grace)
    await call.set_variable("TIMEOUT(absolute)", backstop(s.settings.topup_grace))
    added = False
    # A server shutting down cancels the menu while it waits on the caller; the finally
    # block restores the limit and the caller goes back to the call (AgiServer.shutdown).
    call.interruptible = True
    try:
        added = await topup_menu(s)
    except asyncio.CancelledError:
        await end_waiting_input(call, controller)
        raise
    finally:
        call.interruptible = False
        # The hold from the money there is now: bigger after a top-up; without one, the
        # limit from before the menu, or the next hold if this one ran out meanwhile.
        try:
            await s.app.charging.renew(live)
        except (AmiError, LookupError) as exc:  # the call ended meanwhile
            log.info("%s limit not moved: %s", s.tag, exc)
    if added:  # the account's other live calls (shared cards) may last longer too
        await s.app.charging.credited(s.account_id, but=live.key)
    await call.set_variable("TIMEOUT(absolute)",
                            backstop(controller.seconds_left(live)))
    key = ""
    if added:
        left = controller.seconds_affordable(live)
        log.info("%s call %s may now last %ss (%ss left)", s.tag, live.key,
                 live.granted, left)
        key = await s.voice.play(call, "you-have", "*")
        key = key or await s.voice.say_duration(call, left, whole_minutes=left >= 60,
                                                escape_digits="*")
        key = key or await s.voice.play(call, "for-this-call", "*")
    key = key or await s.voice.play(call, "returning-to-call", "*")
    return key == "*" and await call.wait_for_digit(FEATURE_DIGIT_TIMEOUT_MS) == "9"


async def end_waiting_input(call: AgiSession, controller: CallController) -> None:
    """Shutdown ended the menu while Asterisk waits for keys: a "#" received on the
    caller's channel ends that wait now (the AGI then ends and the bridge goes on)."""
    ami = controller.ami
    if ami is None:
        return
    try:
        await ami.action("PlayDTMF", Channel=call.env.channel, Digit="#", Receive="true",
                         timeout=2)
    except (AmiError, TimeoutError) as exc:
        log.info("[%s] menu input not ended: %s", call.env.uniqueid, exc)


async def topup_menu(s: TopUpSession) -> bool:
    """The menu; True when money was added."""
    for _ in range(MAX_TRIES):
        choice = await s.voice.ask(s.call, "topup-menu", 6000, 1)
        if choice is None or choice == "*":
            return False
        if choice == "1":
            return await by_card(s)
        if choice == "2":
            return await by_code(s)
        if choice == "3":
            return await by_saved_method(s)
        await s.voice.play(s.call, "invalid-option")
    return False


# --------------------------------------------------------------------------- methods


async def by_card(s: TopUpSession) -> bool:
    card = await read_card(s)
    if card is None:
        return False
    amount = await choose_amount(s)
    if amount is None:
        return False
    await s.voice.play(s.call, "processing-payment")
    result = await payments.pay_with_card(s.db, s.app.gateway, s.account_id, card, amount,
                                          payment_id=new_payment_id())
    return await tell_payment(s, result)


async def read_card(s: TopUpSession) -> payments.CardDetails | None:
    """Number, expiry and security code, checked, with the last four read back."""
    for _ in range(MAX_TRIES):
        number = keypad_digits(await s.voice.ask(s.call, "enter-credit-card", 15_000, 19,
                                                 secret=True))
        expiry = keypad_digits(await s.voice.ask(s.call, "enter-expiry", 10_000, 4,
                                                 secret=True))
        cvv = keypad_digits(await s.voice.ask(s.call, "enter-cvv", 10_000, 4, secret=True))
        try:
            payments.validate_card(number, expiry, cvv, datetime.now(UTC).date())
        except payments.CardInvalid as exc:
            log.info("%s card details refused: %s", s.tag, exc)
            await s.voice.play(s.call, "card-not-valid")
            continue
        await s.voice.play(s.call, "card-ending-in")
        await s.call.say_digits(number[-4:])
        choice = await s.voice.ask(s.call, "confirm-or-reenter", 6000, 1)
        if choice == "1":
            return payments.CardDetails(number, expiry, cvv)
        if choice != "2":
            return None
    return None


async def by_code(s: TopUpSession) -> bool:
    typed = keypad_digits(await s.voice.ask(s.call, "enter-voucher", 15_000, 20, secret=True))
    if not typed:
        await s.voice.play(s.call, "no-input")
        return False
    result = await s.db.run(
        vouchers.redeem, s.db, typed, account_id=s.account_id, card_id=s.card_id,
        max_failures=s.settings.pin_max_failures, key=s.app.secret_key,
    )
    verdict = result.verdict.name
    log.info("%s recharge code: %s", s.tag, verdict)
    if verdict == "OK":
        await tell_topped_up(s, result.balance)
        return True
    if verdict == "USED":
        await s.voice.play(s.call, "voucher-used")
    elif verdict == "LOCKED":
        await s.voice.play(s.call, "card-locked")
    else:
        await s.voice.play(s.call, "invalid-voucher")
    return False


async def by_saved_method(s: TopUpSession) -> bool:
    pin = keypad_digits(await s.voice.ask(s.call, "enter-pin-to-confirm", 10_000, 12,
                                          secret=True))
    checked = await s.db.run(login.verify_pin, s.db, s.card_id, pin, s.callerid,
                             LoginPolicy.from_settings(s.settings, s.app.pin_keys))
    if checked.verdict not in (Verdict.OK, Verdict.EMPTY):
        log.info("%s saved-method top-up refused: %s", s.tag, checked.verdict.value)
        if checked.verdict is Verdict.WRONG_PIN:
            await s.voice.play(s.call, "wrong-pin")
        else:
            await s.voice.play(s.call, "card-locked")
        return False
    amount = await choose_amount(s)
    if amount is None:
        return False
    await s.voice.play(s.call, "processing-payment")
    result = await payments.pay_with_stored(s.db, s.app.gateway, s.account_id, amount,
                                            payment_id=new_payment_id())
    return await tell_payment(s, result)


# --------------------------------------------------------------------------- helpers


def amount_choices(settings: Settings) -> list[Decimal]:
    return payments.parse_topup_amounts(settings.topup_amounts)[:9]


async def choose_amount(s: TopUpSession) -> Decimal | None:
    """"Please choose an amount. For 5 dollars press 1. For 10 dollars press 2. ..." """
    choices = amount_choices(s.settings)
    if not choices:
        await s.voice.play(s.call, "payment-unavailable")
        return None
    keys = "".join(str(i + 1) for i in range(len(choices)))
    for _ in range(MAX_TRIES):
        digit = await s.voice.play(s.call, "choose-amount", keys)
        for i, value in enumerate(choices):
            digit = digit or await s.voice.play(s.call, "for-amount", keys)
            digit = digit or await s.voice.say_money(s.call, value, s.currency, keys)
            digit = digit or await s.voice.play(s.call, "press", keys)
            digit = digit or await s.call.say_digits(str(i + 1), keys)
            if digit:
                break
        if not digit:
            digit = await s.call.wait_for_digit(5000)
        if digit and digit in keys:
            return choices[int(digit) - 1]
        if digit:
            await s.voice.play(s.call, "invalid-option")
        else:
            await s.voice.play(s.call, "no-input")
    return None


async def tell_payment(s: TopUpSession, result: payments.TopUpResult) -> bool:
    verdict = result.verdict.name
    log.info("%s payment %s: %s", s.tag, result.payment_id, verdict)
    if verdict == "APPROVED":
        await tell_topped_up(s, result.balance)
        return True
    if verdict == "DECLINED":
        await s.voice.play(s.call, "payment-declined")
    elif verdict == "NO_METHOD":
        await s.voice.play(s.call, "no-saved-method")
    else:  # TIMEOUT, ERROR
        await s.voice.play(s.call, "payment-unavailable")
    return False


async def tell_topped_up(s: TopUpSession, balance: Decimal) -> None:
    await s.voice.play(s.call, "topup-done")
    await s.voice.play(s.call, "your-new-balance-is")
    await s.voice.say_money(s.call, balance, s.currency)


def new_payment_id() -> str:
    return f"ivr-{uuid.uuid4().hex}"
