"""The SMS a revalue-line customer gets of a recharge's result: the same text whether the
line sends it at the end of the call (ivr.flows.revalue) or a later settlement does (an
operator's callback, the reconciler: :func:`sms_notifier`, the ``notify`` hook of
``service.callback_handler`` and ``service.reconcile``).

Who sends is decided by the settlement itself: each change of state is made once, in one
transaction with the revaluation locked, and only the path whose :class:`~.service.Outcome`
has ``changed`` true tells the customer. The line's own recharge is told by the line (in
the call, then by SMS); what a callback or the reconciler settles later (after the caller
heard "pending", or never heard anything) is sent by that path, once: a duplicated
callback, or the reconciler racing a callback, finds the state already there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..db.types import display
from .service import Outcome, Reason, State

if TYPE_CHECKING:
    from ..money.notify import Sender

log = logging.getLogger("ivr.revalue.messages")

CODE_GROUP = 4  # digits of a recharge code said (and written) together
SUBJECT = "Recharge"

# What a later settlement tells the customer about (CREATED, UNKNOWN: not settled yet).
SETTLED = frozenset({State.ISSUED, State.COMPLETED, State.DECLINED, State.REVERSED,
                     State.REFUSED})

Notify = Callable[[Outcome], Awaitable[None]]


def code_groups(code: str) -> list[str]:
    return [code[i:i + CODE_GROUP] for i in range(0, len(code), CODE_GROUP)]


def sms_text(outcome: Outcome, operator: str) -> str:
    """What the customer is sent (the code in clear: to their own number only)."""
    amount = f"{display(outcome.amount)} {outcome.currency}"
    state = outcome.state
    if state is State.ISSUED:
        return (f"Your {operator} recharge code of {amount}: "
                f"{' '.join(code_groups(outcome.code))}")
    if state is State.COMPLETED:
        extra = f" You earned {outcome.points} loyalty points." if outcome.points else ""
        return f"Your {operator} mobile was recharged with {amount}.{extra}"
    if state is State.DECLINED:
        return (f"Your {operator} recharge of {amount} could not be made. "
                "You have not been charged.")
    if state is State.REVERSED:
        return (f"Your {operator} recharge of {amount} was reversed by the operator. "
                "The amount is back on your account.")
    if state is State.REFUSED:
        reasons: dict[str, str] = {
            Reason.INSUFFICIENT_FUNDS: "your account does not have enough credit "
                                       f"(available {display(outcome.available)})",
            Reason.PAYMENT_DECLINED: "your saved card was declined",
            Reason.NO_SAVED_METHOD: "there is no saved card for your account",
            Reason.ACCOUNT_INACTIVE: "your account cannot pay at the moment",
            Reason.NONE_LEFT: "no recharge code of that value is available",
        }
        why = reasons.get(outcome.reason, "it could not be made")
        return (f"Your {operator} recharge of {amount} was refused: {why}. "
                "You have not been charged.")
    return (f"Your {operator} recharge of {amount} is being processed; we will "
            "confirm it by text message.")


def sms_notifier(sms: Callable[[], Sender | None]) -> Notify:
    """The ``notify`` hook of a later settlement: the result's SMS to the revaluation's
    number through the sender ``sms()`` gives when it is called (None: SMS is off; a
    ValueError: it cannot send now, e.g. ``sms_mode`` ami without a connection). A failed
    send is logged (never the text) and not retried."""

    async def notify(outcome: Outcome) -> None:
        if not outcome.changed or outcome.state not in SETTLED or not outcome.msisdn:
            return
        try:
            sender = sms()
        except ValueError as exc:
            log.warning("SMS of recharge %s (%s) not sent: %s", outcome.request_id,
                        outcome.state, exc)
            return
        if sender is None:
            log.info("no SMS of recharge %s (%s): sms_mode is off", outcome.request_id,
                     outcome.state)
            return
        try:
            await sender.send(outcome.msisdn, SUBJECT, sms_text(outcome, outcome.operator))
        except Exception as exc:
            log.warning("SMS of recharge %s (%s) not sent: %s", outcome.request_id,
                        outcome.state, type(exc).__name__)
            return
        log.info("SMS of recharge %s (%s) sent to ...%s", outcome.request_id, outcome.state,
                 outcome.msisdn[-4:])

    return notify
