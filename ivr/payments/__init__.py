"""Top-ups paid by payment card, in layers (each module imports only those above it):

- :mod:`.cards`: a typed card (:class:`CardDetails`, never stored nor logged) and the
  checks made before any charge (:func:`validate_card`, :class:`CardInvalid`);
- :mod:`.gateway`: the card processor interface (:class:`PaymentGateway`, its
  :class:`ChargeResult`, :class:`GatewayTimeout`) and :func:`gateway_from_settings`;
- :mod:`.sandbox`: :class:`SandboxGateway`, a processor that charges nothing;
- :mod:`.service`: the payment service: a ``Payment`` row per attempt and a ledger credit
  per approval (:func:`pay_with_card`, :func:`pay_with_stored`, :class:`TopUpResult`);
- :mod:`.autorecharge`: auto-recharge during a call (:func:`maybe_auto_recharge`,
  :func:`recharge`);
- :mod:`.reconcile`: settling payments left pending or timed out (:func:`reconcile`).

Money comes in only through :func:`ivr.money.ledger.credit`, which also re-arms the low-balance
notice. The names below are the package's public face: ``from ivr import payments`` and
``payments.pay_with_card(...)``.
"""

from __future__ import annotations

from ..db.models import PaymentStatus
from .autorecharge import (
    AUTO_PENDING_STALE,
    auto_recharge_payment_id,
    maybe_auto_recharge,
    recharge,
)
from .cards import CardDetails, CardInvalid, card_brand, expiry_month, validate_card
from .gateway import (
    ChargeResult,
    ChargeStatus,
    GatewayTimeout,
    PaymentGateway,
    gateway_from_settings,
)
from .reconcile import UNRESOLVED, reconcile
from .sandbox import SANDBOX_APPROVE, SANDBOX_DECLINE, SANDBOX_TIMEOUT, SandboxGateway
from .service import (
    PAYMENT_ID_MAX,
    TopUpResult,
    TopUpVerdict,
    active_method,
    parse_topup_amounts,
    pay_with_card,
    pay_with_stored,
)

__all__ = [
    "AUTO_PENDING_STALE",
    "PAYMENT_ID_MAX",
    "SANDBOX_APPROVE",
    "SANDBOX_DECLINE",
    "SANDBOX_TIMEOUT",
    "UNRESOLVED",
    "CardDetails",
    "CardInvalid",
    "ChargeResult",
    "ChargeStatus",
    "GatewayTimeout",
    "PaymentGateway",
    "PaymentStatus",
    "SandboxGateway",
    "TopUpResult",
    "TopUpVerdict",
    "active_method",
    "auto_recharge_payment_id",
    "card_brand",
    "expiry_month",
    "gateway_from_settings",
    "maybe_auto_recharge",
    "parse_topup_amounts",
    "pay_with_card",
    "pay_with_stored",
    "recharge",
    "reconcile",
    "validate_card",
]
