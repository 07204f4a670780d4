"""The card processor interface: what the payment service asks of a gateway, and what it
gets back.

Plugging in a real processor: write a class with the three coroutines of
:class:`PaymentGateway` (tokenise-and-charge a card, charge a token, look up a charge by
payment id), map the processor's answer to a :class:`ChargeResult`, pass ``payment_id`` as
the processor's idempotency key, raise :class:`GatewayTimeout` when it does not answer in
time, and point the ``payment_gateway`` setting at a factory:
``payment_gateway = "mypsp.ivr:make_gateway"``, where ``make_gateway(settings)`` returns
the gateway.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from ..config import Settings, plugin_factory
from .cards import CardDetails


class ChargeStatus(enum.StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    ERROR = "error"  # refused as malformed, or the processor failed: nothing charged


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    token: str = ""  # the card's token, to charge it again later ("" if none)
    last4: str = ""
    brand: str = ""
    gateway_ref: str = ""  # the processor's id for this charge
    reason: str = ""  # why it was declined or failed, for people


class GatewayTimeout(Exception):
    """The gateway did not answer in time. The charge may or may not have happened; retry
    with the same payment_id to find out."""


class PaymentGateway(Protocol):
    """A card processor. Both charges are idempotent per ``payment_id``: a repeated id
    returns the first result without charging again."""

    async def charge_card(
        self, card: CardDetails, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult: ...

    async def charge_token(
        self, token: str, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult: ...

    async def lookup(self, payment_id: str) -> ChargeResult | None:
        """What became of an earlier charge with this id; None when the processor has
        no record of it (nothing was charged). Used by reconciliation."""
        ...


def gateway_from_settings(settings: Settings) -> PaymentGateway:
    """The gateway the ``payment_gateway`` setting names: "sandbox", or
    "package.module:factory" (a callable taking the settings)."""
    name = settings.payment_gateway.strip()
    if name == "sandbox":
        # Imported here: the sandbox is built on this module's types.
        from .sandbox import SandboxGateway

        return SandboxGateway(settings.payment_sandbox_secret.encode(),
                              timeout=settings.payment_timeout)
    factory = plugin_factory("payment_gateway", name, "'sandbox'")
    gateway: PaymentGateway = factory(settings)
    return gateway
