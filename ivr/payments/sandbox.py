"""A card processor for tests and demonstrations: nothing is charged.

Card numbers (the usual test numbers of card processors): :data:`SANDBOX_APPROVE` is
approved (with a valid, not past, expiry and a 3-digit CVV), :data:`SANDBOX_DECLINE` is
declined, :data:`SANDBOX_TIMEOUT` never answers, any other number is declined.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from .cards import CardDetails, CardInvalid, card_brand, validate_card
from .gateway import ChargeResult, ChargeStatus, GatewayTimeout

SANDBOX_APPROVE = "4111111111111111"
SANDBOX_DECLINE = "4000000000000002"
SANDBOX_TIMEOUT = "4000000000000119"

_REASONS = {"luhn": "invalid card number", "expiry": "invalid expiry", "past": "card expired",
            "cvv": "invalid cvv"}


@dataclass(frozen=True)
class _Tokenised:
    last4: str
    brand: str
    number_class: str  # approve, decline, timeout


class SandboxGateway:
    """A :class:`~ivr.payments.gateway.PaymentGateway` that charges nothing.

    A timeout card raises GatewayTimeout after ``timeout`` seconds. Tokens are
    ``"sbx_" + HMAC-SHA256(secret, number)[:24]``: the same card always gets the same
    token, so a token saved in the database stays chargeable by a new process with the
    same secret. Everything else (idempotency records) is kept in memory, per instance.
    """

    def __init__(self, secret: bytes, delay: float = 0.05, timeout: float = 10.0) -> None:
        if not secret:
            raise ValueError("the sandbox gateway needs a secret")
        self._secret = secret
        self.delay = delay
        self.timeout = timeout
        # payment_id -> (fingerprint of the request, result)
        self._results: dict[str, tuple[str, ChargeResult]] = {}
        self._tokens: dict[str, _Tokenised] = {}
        for number, kind in ((SANDBOX_APPROVE, "approve"), (SANDBOX_DECLINE, "decline"),
                             (SANDBOX_TIMEOUT, "timeout")):
            self._tokens[self.token_for(number)] = _Tokenised(number[-4:], card_brand(number),
                                                              kind)
        self.charges = 0  # charges actually processed (not answered from idempotency)

    def token_for(self, number: str) -> str:
        digest = hmac.new(self._secret, number.encode(), hashlib.sha256).hexdigest()
        return "sbx_" + digest[:24]

    def _fingerprint(self, *parts: str) -> str:
        return hmac.new(self._secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def _ref(self, payment_id: str) -> str:
        return "sbxch_" + self._fingerprint("charge", payment_id)[:20]

    async def charge_card(
        self, card: CardDetails, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult:
        fingerprint = self._fingerprint("card", card.number, str(amount), currency)
        return await self._idempotent(payment_id, fingerprint,
                                      lambda: self._card(card, payment_id))

    async def charge_token(
        self, token: str, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult:
        fingerprint = self._fingerprint("token", token, str(amount), currency)
        return await self._idempotent(payment_id, fingerprint,
                                      lambda: self._token(token, payment_id))

    async def _idempotent(
        self, payment_id: str, fingerprint: str,
        process: Callable[[], Awaitable[ChargeResult]],
    ) -> ChargeResult:
        if payment_id in self._results:
            return self._replay(payment_id, fingerprint)
        try:
            async with asyncio.timeout(self.timeout):
                result = await process()
        except TimeoutError:
            raise GatewayTimeout(f"sandbox gateway: no answer in {self.timeout:g}s") from None
        if payment_id in self._results:  # a concurrent request with this id won
            return self._replay(payment_id, fingerprint)
        self.charges += 1
        self._results[payment_id] = (fingerprint, result)
        return result

    async def lookup(self, payment_id: str) -> ChargeResult | None:
        """The result of a charge this sandbox answered (its records live in memory, so
        a new process knows none of the earlier ones)."""
        recorded = self._results.get(payment_id)
        return None if recorded is None else recorded[1]

    def _replay(self, payment_id: str, fingerprint: str) -> ChargeResult:
        first_fingerprint, result = self._results[payment_id]
        if first_fingerprint != fingerprint:
            return ChargeResult(ChargeStatus.ERROR, reason="payment id reused for another charge")
        return result

    async def _card(self, card: CardDetails, payment_id: str) -> ChargeResult:
        await asyncio.sleep(self.delay)
        last4, brand = card.last4, card.brand
        if card.number == SANDBOX_TIMEOUT:
            await asyncio.Event().wait()  # never answers; the timeout ends it
        try:
            validate_card(card.number, card.expiry, card.cvv, datetime.now(UTC).date())
        except CardInvalid as exc:
            status = ChargeStatus.ERROR if exc.reason == "luhn" else ChargeStatus.DECLINED
            return ChargeResult(status, last4=last4, brand=brand, gateway_ref=self._ref(payment_id),
                                reason=_REASONS[exc.reason])
        if card.number != SANDBOX_APPROVE:
            reason = "card declined" if card.number == SANDBOX_DECLINE else "not a test card"
            return ChargeResult(ChargeStatus.DECLINED, last4=last4, brand=brand,
                                gateway_ref=self._ref(payment_id), reason=reason)
        return ChargeResult(ChargeStatus.APPROVED, token=self.token_for(card.number), last4=last4,
                            brand=brand, gateway_ref=self._ref(payment_id))

    async def _token(self, token: str, payment_id: str) -> ChargeResult:
        await asyncio.sleep(self.delay)
        known = self._tokens.get(token)
        if known is None or known.number_class == "decline":
            reason = "card declined" if known else "unknown token"
            return ChargeResult(ChargeStatus.DECLINED, last4=known.last4 if known else "",
                                brand=known.brand if known else "",
                                gateway_ref=self._ref(payment_id), reason=reason)
        if known.number_class == "timeout":
            await asyncio.Event().wait()
        return ChargeResult(ChargeStatus.APPROVED, token=token, last4=known.last4,
                            brand=known.brand, gateway_ref=self._ref(payment_id))
