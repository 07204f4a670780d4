"""The access-number line (context ``ivr-access``, route ``access``): a paid call.

Steps, in order: language, identify (pinless by caller ID, else card number and PIN,
checked together), balance, destination (filtered, normalised to E.164, rated), reserve,
dial, settle, and another call. Each step is a function below; the caller's state lives
in :class:`AccessCall`.

Money safety:
- The reservation is made before Dial and always closed: settled from the billable
  seconds when the called party answered, released otherwise, including when the caller
  hangs up at any prompt (``finally``).
- Asterisk enforces the call's limit itself: the ``ivr-access-answered`` Gosub (Dial
  ``U()``) sets ``TIMEOUT(absolute)`` on the called channel at answer, and a looser limit
  on the caller's channel is a backstop. If this server dies mid-call the call still ends
  on time; the ``ivr-access-hangup`` handler records how it ended in AstDB and the
  restarted server settles it (:mod:`ivr.live.calls`).
- Settlement is idempotent per call key (``<uniqueid>-<attempt>``).

Card numbers and PINs are read with ``secret=True`` and never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .. import login
from ..agi import AgiHangup, AgiSession
from ..live.calls import ASTDB_FAMILY, CallController, CallKey, CallOutcome, backstop
from ..live.charging import Charging
from ..login import Cardholder, LoginPolicy, LoginResult, Verdict
from ..money.ledger import Grant, Refusal, Settlement
from ..numbers import InvalidNumber, keypad_digits, normalise, normalise_callerid
from .base import LineCall
from .topup import TopUpSession, topup_menu

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("ivr.flows.access")

MAX_TRIES = 3  # per question: log-in (card number and PIN), destination, menu
DESTINATION_MAX_DIGITS = 20
DESTINATION_TIMEOUT_MS = 10_000

@dataclass
class AccessCall(LineCall):
    """One caller's session on the access line."""

    controller: CallController | None  # of the Asterisk box the call is on
    callerid: str | None  # E.164 digits, None when withheld
    holder: Cardholder | None = None
    attempts: int = 0

    @property
    def charging(self) -> Charging:
        return self.app.charging


@dataclass(frozen=True)
class DialResult:
    status: str  # DIALSTATUS
    settlement: Settlement | None  # when answered
    cut_at_limit: bool


async def access(call: AgiSession, app: App) -> None:
    session = AccessCall(
        call, app, app.controller_for(call),
        normalise_callerid(call.env.callerid, app.settings.default_region),
    )
    await call.answer()
    await choose_language(session)
    holder = await identify(session)
    if holder is not None:
        session.holder = holder
        await calls_until_done(session)
    await finish(session)


async def finish(s: AccessCall) -> None:
    """The route's own end. IVR_DONE tells the dialplan so: a channel it gets back
    without it (this server died or the session broke mid-call: AGISTATUS is SUCCESS all
    the same) hears "service unavailable" rather than silence."""
    await s.call.set_variable("IVR_DONE", "1", dead_ok=True)
    await s.voice.play(s.call, "goodbye")
    await s.call.hangup()


# --------------------------------------------------------------------------- steps


async def choose_language(s: AccessCall) -> None:
    """Each language's "press N" is played in that language; no key keeps the first."""
    catalogue = s.voice.catalogue
    wanted = [x.strip() for x in s.settings.access_languages.split(",") if x.strip()]
    languages = [lang for lang in (wanted or catalogue.languages) if lang in catalogue.languages]
    if not languages:
        languages = [catalogue.default_language]
    s.voice.set_language(s.call, languages[0])
    if len(languages) == 1:
        return
    keys = "".join(str(i + 1) for i in range(len(languages)))
    for _ in range(2):
        for lang in languages:
            digit, _pos = await s.call.stream_file(
                s.voice.path(s.call, "choose-language", lang), keys
            )
            if digit:
                break
        else:
            digit = await s.call.wait_for_digit(3000)
        if digit in keys and digit:
            s.voice.set_language(s.call, languages[int(digit) - 1])
            return
        if digit:
            await s.voice.play(s.call, "invalid-option")
        else:
            return  # no choice: the first language


async def identify(s: AccessCall) -> Cardholder | None:
    """Pinless by caller ID, else card number then PIN. None: the call ends."""
    await s.voice.play(s.call, "welcome")
    policy = LoginPolicy.from_settings(s.settings, s.app.pin_keys)
    arrived = await s.db.run(login.arrival, s.db, s.callerid, policy)
    if (result := arrived.pinless) is not None:
        log.info("%s pinless log-in, card ...%s", s.tag, _last4(result))
        if result.verdict in (Verdict.OK, Verdict.EMPTY):
            await s.voice.play(s.call, "welcome-back")
        return await _admit(s, result)
    if arrived.throttled:
        log.warning("%s log-in refused: too many failures from this caller ID", s.tag)
        await s.voice.play(s.call, "too-many-attempts")
        return None
    return await _log_in(s, policy)


async def _log_in(s: AccessCall, policy: LoginPolicy) -> Cardholder | None:
    """Card number, then PIN whatever the number: an unknown number and a wrong PIN get
    the same refusal and the same next question (both again), and a card's state (locked,
    expired) is said only after its right PIN, so nothing tells which numbers exist."""
    for _ in range(MAX_TRIES):
        typed = await s.voice.ask(s.call, "enter-card-number", 10_000, 20, secret=True)
        number = keypad_digits(typed)
        if not number:
            await s.voice.play(s.call, "no-input")
            continue
        pin = await s.voice.ask(s.call, "enter-pin", 10_000, 12, secret=True)
        result = await s.db.run(
            login.log_in, s.db, number, keypad_digits(pin), s.callerid, policy
        )
        if result.verdict not in (Verdict.UNKNOWN_CARD, Verdict.WRONG_PIN):
            return await _admit(s, result)
        if result.verdict is Verdict.UNKNOWN_CARD:
            log.info("%s unknown card number", s.tag)
        else:
            log.info("%s wrong PIN for card id %s", s.tag, result.card_id)
        await s.voice.play(s.call, "invalid-login")
    await s.voice.play(s.call, "too-many-attempts")
    return None


async def _admit(s: AccessCall, result: LoginResult) -> Cardholder | None:
    """Say why a card cannot call, or return its holder."""
    verdict = result.verdict
    if verdict is Verdict.LOCKED:
        await s.voice.play(s.call, "card-locked")
        return None
    if verdict is Verdict.EXPIRED:
        await s.voice.play(s.call, "card-expired")
        return None
    if verdict is Verdict.EMPTY:
        assert result.holder is not None
        await announce_balance(s, result.holder)
        await s.voice.play(s.call, "card-empty")
        # The top-up menu, as during a call; with money added the caller goes on.
        holder = result.holder
        menu = TopUpSession(s.call, s.app, holder.card_id, holder.account_id,
                            holder.currency, s.callerid)
        if not await topup_menu(menu):
            return None
        refreshed = await s.db.run(login.holder, s.db, holder.card_id)
        return refreshed if refreshed.available > 0 else None
    if verdict is not Verdict.OK or result.holder is None:
        await s.voice.play(s.call, "invalid-login")
        return None
    log.info("%s card ...%s logged in", s.tag, result.holder.last4)
    return result.holder


async def announce_balance(s: AccessCall, holder: Cardholder) -> None:
    await s.voice.play(s.call, "your-balance-is")
    await s.voice.say_money(s.call, holder.available, holder.currency)


async def calls_until_done(s: AccessCall) -> None:
    assert s.holder is not None
    await announce_balance(s, s.holder)
    while True:
        grant = await choose_destination(s)
        if grant is None:
            return
        result = await dial(s, grant)
        if s.call.hung_up:
            return
        s.holder = await holder_after(s, result)
        await after_call(s, result)
        if s.holder.available <= 0:
            await s.voice.play(s.call, "card-empty")
            return
        choice = await s.voice.ask(s.call, "another-call", 5000, 1)
        if choice != "1":
            return


async def holder_after(s: AccessCall, result: DialResult) -> Cardholder:
    """The card's holder after a call: a charged call's settlement says what the account
    can spend now (read under its lock); otherwise it is read again (another card of
    the account may have spent meanwhile)."""
    assert s.holder is not None
    settlement = result.settlement
    if settlement is not None and settlement.available is not None:
        return replace(s.holder, available=settlement.available)
    return await s.db.run(login.holder, s.db, s.holder.card_id)


async def choose_destination(s: AccessCall) -> _Reserved | None:
    """Ask for a number until one is rated and reserved; None after MAX_TRIES failures."""
    assert s.holder is not None
    for _ in range(MAX_TRIES):
        typed = await s.voice.ask(s.call, "enter-destination", DESTINATION_TIMEOUT_MS,
                                  DESTINATION_MAX_DIGITS)
        if not typed:
            await s.voice.play(s.call, "no-input")
            continue
        try:
            number = normalise(typed, s.settings.default_region)
        except InvalidNumber as exc:
            log.info("%s invalid destination (%s)", s.tag, exc)
            await s.voice.play(s.call, "invalid-number")
            continue
        reserved = await reserve(s, number)
        if isinstance(reserved, _Reserved):
            return reserved
        if reserved is Refusal.NO_RATE:
            await s.voice.play(s.call, "unknown-destination")
        elif reserved is Refusal.INSUFFICIENT_FUNDS:
            await s.voice.play(s.call, "not-enough-balance")
        else:  # the card or account was locked meanwhile
            await s.voice.play(s.call, "card-locked")
            return None
    await s.voice.play(s.call, "too-many-attempts")
    return None


@dataclass(frozen=True)
class _Reserved:
    key: CallKey
    number: str
    grant: Grant


async def reserve(s: AccessCall, number: str) -> _Reserved | Refusal:
    """Hold what the balance buys for this destination and tell the caller the minutes.
    The hold is released if anything (a hang-up) happens before dial() takes it over."""
    assert s.holder is not None
    s.attempts += 1
    key = CallKey(s.call.env.uniqueid or "call", s.attempts)
    grant = await s.charging.authorize(s.controller, key, number, card_id=s.holder.card_id,
                                       channel=s.call.env.channel)
    if not isinstance(grant, Grant):
        log.info("%s destination refused: %s", s.tag, grant.value)
        return grant
    reserved = _Reserved(key, number, grant)
    try:
        await s.voice.play(s.call, "you-have")
        # What the money buys; the hold may be less and is renewed during the call.
        await s.voice.say_duration(s.call, grant.affordable,
                                   whole_minutes=grant.affordable >= 60)
        await s.voice.play(s.call, "for-this-call")
    except BaseException:
        await _release(s, reserved, "caller hung up before dial")
        s.charging.done(s.controller, key)
        raise
    return reserved


async def dial(s: AccessCall, r: _Reserved) -> DialResult:
    """Dial with Asterisk enforcing the grant, then settle or release exactly once."""
    call, grant = s.call, r.grant
    assert s.holder is not None
    closed = dialled = False
    try:
        key = dialplan_word(str(r.key))
        await s.voice.play(call, "connecting")
        s.charging.track(s.controller, r.key, grant, channel=call.env.channel,
                         language=s.voice.language(call), card_id=s.holder.card_id,
                         callerid=s.callerid)
        target = await s.app.dial_target(r.number)
        log.info("%s dialling %s for up to %ss (reservation %s)", s.tag, r.number,
                 grant.seconds, grant.reservation_id)
        if call.hung_up:  # the session sends nothing more: Dial will not run
            raise AgiHangup("caller hung up before Dial")
        dialled = True
        # Dial's B() runs ivr-access-prepare on the caller's channel before it dials, in
        # the same round trip: from there a hang-up handler records the outcome in
        # Asterisk (AstDB) unless we settle first, so a call that outlives this server is
        # still settled (ivr.live.recovery); *9 opens the top-up menu (features.conf);
        # and the caller's leg gets its backstop limit. U() sets the called channel's.
        await call.exec("Dial", target, str(s.settings.dial_timeout),
                        f"U(ivr-access-answered^{grant.seconds}^{key})"
                        f"B(ivr-access-prepare^s^1({key}^"
                        f"{backstop(s.settings.dial_timeout + grant.seconds)}))")
        status, record = await dial_outcome(call, r.key)
        if record is None and status == "ANSWER":
            # Answered, but its length is not recorded yet: never settle an answered call
            # at 0 s. The recovery sweep settles it from the record once it is written.
            log.warning("%s call %s answered but not yet recorded; left to recovery",
                        s.tag, r.key)
            return DialResult(status, None, False)
        outcome = CallOutcome.parse(record) if record else CallOutcome(status, 0)
        settlement = await s.charging.close(r.key, grant.reservation_id, grant.account_id,
                                            outcome, caller=s.callerid or "", cause=status,
                                            controller=s.controller)
        if settlement is not None:
            log.info("%s call to %s: %ss, cost %s %s", s.tag, r.number, settlement.seconds,
                     settlement.cost, grant.currency)
        else:
            log.info("%s call to %s not answered: %s", s.tag, r.number, status)
        closed = True
        await call.set_variable("IVR_SETTLED", "1", dead_ok=True)
        if record is not None:
            # Only the called channel's hang-up handler has written a record by now, and
            # only for an answered call; the caller's own handler sees IVR_SETTLED.
            await call.database_del(ASTDB_FAMILY, str(r.key))
        if not call.hung_up:
            await call.set_variable("TIMEOUT(absolute)", 0)
        cut = settlement is not None and settlement.seconds >= settlement.granted
        return DialResult(status, settlement, cut)
    finally:
        if not closed and not dialled:
            await _release(s, r, "caller hung up before dial")
        # Dialled but not settled here (the AGI connection broke): Asterisk's hang-up
        # handler records the outcome and the recovery sweep settles it, once unclaimed.
        s.charging.done(s.controller, r.key)


_DIALPLAN_WORD = re.compile(r"[A-Za-z0-9._-]{1,120}")


def dialplan_word(text: str) -> str:
    """``text`` for a Gosub argument inside Dial's options: letters, digits, ``.``,
    ``_`` and ``-`` only, since ``,`` ``^`` ``(`` ``)`` ``|`` and ``$`` mean something
    there. A call key (``<uniqueid>-<n>``, the uniqueid from Asterisk) always is."""
    if not _DIALPLAN_WORD.fullmatch(text):
        raise ValueError(f"not usable in a dial string: {text!r}")
    return text


RECORD_WAIT = 3.0  # seconds to wait for an answered call's AstDB record
RECORD_POLL = 0.05


async def dial_outcome(call: AgiSession, key: CallKey) -> tuple[str, str | None]:
    """DIALSTATUS and the call's AstDB record. A record there at once is the called
    channel's (ANSWER and the length): it tells the status too, so DIALSTATUS is read only
    without one, and an answered call's record is then waited for."""
    record = await call.database_get(ASTDB_FAMILY, str(key))
    if record is not None:
        return CallOutcome.parse(record).dial_status, record
    status = await call.get_variable("DIALSTATUS", dead_ok=True) or "UNKNOWN"
    if status == "ANSWER":
        record = await answered_record(call, key, status)
    return status, record


async def answered_record(call: AgiSession, key: CallKey, status: str) -> str | None:
    """The call's AstDB record. The called channel's hang-up handler writes it while
    that channel is torn down, which can finish a moment after Dial has returned to us,
    so an answered call's record is waited for."""
    record = await call.database_get(ASTDB_FAMILY, str(key))
    waited = 0.0
    while record is None and status == "ANSWER" and waited < RECORD_WAIT:
        await asyncio.sleep(RECORD_POLL)
        waited += RECORD_POLL
        record = await call.database_get(ASTDB_FAMILY, str(key))
    return record


async def after_call(s: AccessCall, result: DialResult) -> None:
    """What happened, in the caller's ear: a failed dial's reason, or the cost and the
    new balance."""
    if result.settlement is None:
        await say_dial_failure(s, result.status)
        return
    if result.cut_at_limit:
        await s.voice.play(s.call, "time-up")
    assert s.holder is not None
    await s.voice.play(s.call, "call-cost")
    await s.voice.say_money(s.call, result.settlement.cost, s.holder.currency)
    await announce_balance(s, s.holder)


async def say_dial_failure(s: AccessCall, status: str) -> None:
    """BUSY, NOANSWER, CONGESTION and CHANUNAVAIL each have their prompt."""
    if status == "BUSY":
        await s.voice.play(s.call, "busy")
    elif status == "NOANSWER":
        await s.voice.play(s.call, "no-answer")
    elif status in ("CONGESTION", "CHANUNAVAIL"):
        await s.voice.play(s.call, "congestion")
    else:
        await s.voice.play(s.call, "call-failed")


# --------------------------------------------------------------------------- helpers


async def _release(s: AccessCall, r: _Reserved, why: str) -> None:
    """Free the hold of a call that never reached Dial."""
    await s.charging.release(r.key, r.grant.reservation_id, caller=s.callerid or "", why=why)


def _last4(result: LoginResult) -> str:
    return result.holder.last4 if result.holder else "????"
