"""Direct recharge IVR to IVR: dial the operator's own revalue line and key the request in.

:class:`IvrOperator` is the :class:`~ivr.revalue.direct.DirectRecharge` of an operator
configured as ``NAME=ivr:NUMBER@CODE`` (``revalue_operators``, :mod:`ivr.revalue.direct`).
One recharge is one call:

1. AMI ``Originate`` (class "originate") of the operator's number through the same dial
   target as paid calls (:meth:`ivr.app.App.dial_target`: the outbound SIP trunk, else
   ``trunk_dial``) into the ``ivr-revalue-ivr`` context (dialplan/ivr-revalue-ivr.conf),
   with the request id in the channel variable ``IVR_RECHARGE``. Nothing else of the
   request goes to Asterisk's channel or dialplan.
2. When the operator's IVR answers, that context runs the FastAGI route ``revalue-ivr``
   (:mod:`ivr.flows.revalue_ivr`), which takes the request from ``App.ivr_recharges``,
   waits :attr:`IvrOperator.pause` for the operator's greeting, then keys in
   ``<msisdn digits>#<amount in cents>#<code>#`` while it waits for one acknowledgement
   key: ``1`` recharged (COMPLETED), ``2`` refused (DECLINED).
3. Any other outcome once keys were sent (the operator hangs up, another key, no key
   before ``timeout`` seconds from dialling) is UNKNOWN: the money stays held. A call
   that was never answered (busy, no answer, unreachable) sent nothing: DECLINED, the
   money released.

The keys are sent with AMI ``PlayDTMF`` (class "call"), one action per key, not with the
AGI ``EXEC SendDTMF``: Asterisk writes every AGI ``EXEC`` with its arguments ("AGI Script
Executing Application: (SendDTMF) Options: (...)") and every dialplan application with its
arguments to its verbose log (level 3, messages.log), and neither Asterisk nor this server
logs a ``PlayDTMF`` action or its key. DTMF events are in AMI's class "dtmf", which no
AMI user of this project reads.

:meth:`IvrOperator.status` can only repeat an acknowledgement this process saw: an
operator's IVR cannot be asked afterwards, so an UNKNOWN recharge stays UNKNOWN (held)
until a person checks it with the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..agi import AgiSession
from ..agi.protocol import AgiError
from ..ami import AmiError
from .direct import RechargeAnswer, RechargeRequest, RechargeState

if TYPE_CHECKING:
    from ..ami import AmiClient
    from ..app import App

log = logging.getLogger("ivr.revalue.ivr_operator")

# The dialplan context the answered call runs (dialplan/ivr-revalue-ivr.conf) and the
# channel variable naming its request.
CONTEXT = "ivr-revalue-ivr"
RECHARGE_VARIABLE = "IVR_RECHARGE"
# The operator's acknowledgement keys.
ACK_COMPLETED = "1"
ACK_DECLINED = "2"
# Seconds between the answer and the first key (the operator's greeting), and each key's
# length and the silence after it, in ms (a trunk sends them as RFC 4733 events).
ANSWER_PAUSE = 1.0
KEY_MS = 100
GAP_MS = 60


def request_keys(req: RechargeRequest, code: str) -> str:
    """What is keyed in: ``<msisdn without +>#<amount in cents>#<code>#``. ValueError for
    an amount that is not a whole number of cents."""
    cents = req.amount * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"amount {req.amount} is not a whole number of cents")
    return f"{req.msisdn.removeprefix('+')}#{int(cents)}#{code}#"


@dataclass(eq=False)
class PendingIvrRecharge:
    """A recharge being dialled, found by the route through ``App.ivr_recharges``.
    ``sent``: keys went out (from then on only an acknowledgement can settle it);
    ``closed``: :meth:`IvrOperator.recharge` gave up, the route must send nothing."""

    request: RechargeRequest
    keys: str = field(repr=False)
    ami: AmiClient = field(repr=False)
    deadline: float  # loop time
    pause: float
    operator: str
    result: asyncio.Future[RechargeAnswer] = field(repr=False)
    sent: bool = False
    closed: bool = False

    def answer(self, state: RechargeState, reason: str) -> RechargeAnswer:
        return RechargeAnswer(self.request.request_id, state, "", reason, self.operator)

    def resolve(self, answer: RechargeAnswer) -> None:
        if not self.result.done():
            self.result.set_result(answer)


class IvrOperator:
    """:class:`~ivr.revalue.direct.DirectRecharge` through an operator's own IVR (see the
    module). ``app`` gives the dial target, the Asterisk connection (its first call
    controller's AMI) and the registry the route reads; without it (a command that only
    reconciles) every recharge is DECLINED unsent. ``timeout`` bounds a recharge from
    dialling to the acknowledgement; ``code`` is never logged."""

    def __init__(self, app: App | None, number: str, code: str = "", timeout: float = 30.0,
                 *, operator: str = "", pause: float = ANSWER_PAUSE) -> None:
        if not number.isdigit():
            raise ValueError(f"number: digits only, not {number!r}")
        if not timeout > 0:
            raise ValueError("timeout: must be more than 0")
        self.app = app
        self.number = number
        self._code = code
        self.timeout = timeout
        self.operator = operator
        self.pause = pause
        self._seen: dict[str, RechargeAnswer] = {}  # acknowledgements, by request id

    def __repr__(self) -> str:
        return f"IvrOperator({self.operator or '?'} at {self.number})"

    async def __aenter__(self) -> IvrOperator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing to close (the calls are the application's)."""

    def _ami(self) -> AmiClient | None:
        if self.app is None or not self.app.asterisks:
            return None
        return next(iter(self.app.asterisks.values())).ami

    async def status(self, request_id: str) -> RechargeAnswer:
        """The acknowledgement this process saw for ``request_id``, else UNKNOWN: an
        operator's IVR cannot be asked afterwards."""
        seen = self._seen.get(request_id)
        if seen is not None:
            return seen
        return RechargeAnswer(request_id, RechargeState.UNKNOWN, "",
                              "an operator's IVR cannot be asked afterwards: check with the "
                              "operator", self.operator)

    async def recharge(self, req: RechargeRequest) -> RechargeAnswer:
        seen = self._seen.get(req.request_id)
        if seen is not None:  # acknowledged already: never keyed in twice
            return seen

        def unsent(reason: str) -> RechargeAnswer:
            log.warning("recharge %s through %s's IVR not sent: %s", req.request_id,
                        self.operator or "?", reason)
            return RechargeAnswer(req.request_id, RechargeState.DECLINED, "",
                                  f"{reason}: nothing was sent"[:200], self.operator)

        ami = self._ami()
        if self.app is None or ami is None or not ami.connected:
            return unsent("no connection to Asterisk")
        registry = self.app.ivr_recharges
        if req.request_id in registry:  # the same request already on the line
            return await asyncio.shield(registry[req.request_id].result)
        try:
            keys = request_keys(req, self._code)
            target = await self.app.dial_target(self.number)
        except ValueError as exc:
            return unsent(str(exc))
        loop = asyncio.get_running_loop()
        pending = PendingIvrRecharge(req, keys, ami, loop.time() + self.timeout, self.pause,
                                     self.operator, loop.create_future())
        registry[req.request_id] = pending
        try:
            answer = await self._call(pending, ami, target)
        finally:
            pending.closed = True
            registry.pop(req.request_id, None)
        if answer.state is not RechargeState.UNKNOWN:
            self._seen[req.request_id] = answer
        log.info("recharge %s through %s's IVR: %s%s", req.request_id, self.operator or "?",
                 answer.state.name, f" ({answer.reason})" if answer.reason else "")
        return answer

    async def _call(self, pending: PendingIvrRecharge, ami: AmiClient, target: str
                    ) -> RechargeAnswer:
        req = pending.request
        loop = asyncio.get_running_loop()
        failure: str | None = None
        try:
            reply = await ami.action(
                "Originate", timeout=self.timeout + 5, Channel=target, Context=CONTEXT,
                Exten="s", Priority=1, Async="true", Timeout=int(self.timeout * 1000),
                CallerID='"ivr recharge" <0>',
                Variable=f"{RECHARGE_VARIABLE}={req.request_id}")
            failure = _originate_failure(reply)
        except AmiError as exc:
            failure = f"the call could not be placed ({exc})"
        if failure is not None and not pending.sent:
            pending.closed = True  # a call answered after all sends nothing
            return pending.answer(RechargeState.DECLINED,
                                  f"{failure}: nothing was sent"[:200])
        try:
            async with asyncio.timeout(max(pending.deadline - loop.time(), 0.1)):
                return await asyncio.shield(pending.result)
        except TimeoutError:
            pending.closed = True
            if not pending.sent:
                return pending.answer(RechargeState.DECLINED,
                                      "the operator's IVR answered but the request could "
                                      "not be keyed in: nothing was sent")
            return pending.answer(RechargeState.UNKNOWN,
                                  f"no acknowledgement within {self.timeout:g} s")


def _originate_failure(reply: object) -> str | None:
    """Why an async Originate failed (its OriginateResponse), None when it was answered."""
    messages = reply if isinstance(reply, list) else [reply]
    for message in messages:
        get = getattr(message, "get", None)
        if get is None or get("Event") != "OriginateResponse":
            continue
        if get("Response") == "Success":
            return None
        return f"the operator's IVR did not answer ({_REASONS.get(str(get('Reason')), 'failed')})"
    return None  # no response event: the route tells


# OriginateResponse's Reason (Asterisk's AST_CONTROL_* of the failed call).
_REASONS = {"0": "no such number or trunk", "1": "hung up", "3": "no answer",
            "5": "busy", "8": "congestion"}


async def converse(call: AgiSession, pending: PendingIvrRecharge) -> None:
    """The answered call (route ``revalue-ivr``): key the request in, wait for the
    acknowledgement, hang up, resolve the waiting recharge. Sends nothing once the
    recharge gave up (or when another call already took it)."""
    loop = asyncio.get_running_loop()
    channel = call.env.get("channel", "")
    try:
        if pending.closed or pending.sent or not channel:
            log.warning("recharge %s: the operator's IVR answered after the recharge gave "
                        "up: nothing sent", pending.request.request_id)
            return
        await asyncio.sleep(pending.pause)  # the operator's greeting
        if pending.closed:
            return
        pending.sent = True
        pending.resolve(await _exchange(call, pending, channel, loop))
    finally:
        with contextlib.suppress(AgiError):
            await call.hangup()


async def _exchange(call: AgiSession, pending: PendingIvrRecharge, channel: str,
                    loop: asyncio.AbstractEventLoop) -> RechargeAnswer:
    wait_ms = max(int((pending.deadline - loop.time()) * 1000), 500)
    # The acknowledgement is awaited from the start: a key the operator sends while no
    # AGI command reads the channel would be lost.
    ack = asyncio.ensure_future(call.wait_for_digit(wait_ms))
    complete = await _key_in(pending, channel, ack)
    try:
        key = await ack
    except AgiError:
        return pending.answer(RechargeState.UNKNOWN,
                              "the operator's IVR hung up without acknowledging")
    if key == ACK_DECLINED:
        return pending.answer(RechargeState.DECLINED, "declined by the operator's IVR")
    if key == ACK_COMPLETED and complete:
        return pending.answer(RechargeState.COMPLETED, "")
    if not key:
        return pending.answer(RechargeState.UNKNOWN,
                              "no acknowledgement from the operator's IVR in time")
    return pending.answer(RechargeState.UNKNOWN,
                          f"unexpected acknowledgement key {key!r}"
                          + ("" if complete else " before the request was complete"))


async def _key_in(pending: PendingIvrRecharge, channel: str,
                  ack: asyncio.Future[str]) -> bool:
    """Key the request in on our channel (towards the operator) while the
    acknowledgement is awaited; False when it was cut short (a key came back first, the
    call ended, AMI failed)."""
    for key in pending.keys:
        if ack.done():
            return False
        try:
            await pending.ami.action("PlayDTMF", Channel=channel, Digit=key,
                                     Duration=KEY_MS)
        except AmiError as exc:
            # Not the key (never in the error): the action's failure.
            log.warning("recharge %s: keying in failed (%s)", pending.request.request_id,
                        type(exc).__name__)
            with contextlib.suppress(AmiError):
                await pending.ami.action("Hangup", Channel=channel)
            return False
        await asyncio.sleep(GAP_MS / 1000)
    return True

