"""Card validation, redaction and the sandbox gateway (no database)."""

from __future__ import annotations

import asyncio
import copy
import pickle
import time
from datetime import date
from decimal import Decimal

import pytest

from ivr.config import ConfigError, Settings
from ivr.payments import (
    SANDBOX_APPROVE,
    SANDBOX_DECLINE,
    SANDBOX_TIMEOUT,
    CardDetails,
    CardInvalid,
    ChargeStatus,
    GatewayTimeout,
    SandboxGateway,
    card_brand,
    gateway_from_settings,
    parse_topup_amounts,
    validate_card,
)

TODAY = date(2026, 11, 22)
SECRET = b"test-secret"


def gateway(**kwargs) -> SandboxGateway:
    kwargs.setdefault("delay", 0)
    return SandboxGateway(SECRET, **kwargs)


def card(number: str = SANDBOX_APPROVE, expiry: str = "1230", cvv: str = "123") -> CardDetails:
    return CardDetails(number, expiry, cvv)


# --------------------------------------------------------------------------- validation


def test_valid_cards_pass():
    validate_card(SANDBOX_APPROVE, "1126", "123", TODAY)  # this month still valid
    validate_card(SANDBOX_DECLINE, "0135", "999", TODAY)
    validate_card("378282246310005", "1230", "1234", TODAY)  # amex: 4-digit CVV


@pytest.mark.parametrize(("number", "expiry", "cvv", "reason"), [
    ("4111111111111112", "1230", "123", "luhn"),
    ("411111111111111x", "1230", "123", "luhn"),
    ("42", "1230", "123", "luhn"),  # Luhn-valid, far too short
    ("4" * 20, "1230", "123", "luhn"),
    (SANDBOX_APPROVE, "1330", "123", "expiry"),
    (SANDBOX_APPROVE, "0030", "123", "expiry"),
    (SANDBOX_APPROVE, "123", "123", "expiry"),
    (SANDBOX_APPROVE, "12ab", "123", "expiry"),
    (SANDBOX_APPROVE, "1026", "123", "past"),
    (SANDBOX_APPROVE, "1225", "123", "past"),
    (SANDBOX_APPROVE, "1230", "12", "cvv"),
    (SANDBOX_APPROVE, "1230", "1234", "cvv"),
    (SANDBOX_APPROVE, "1230", "12a", "cvv"),
    ("378282246310005", "1230", "123", "cvv"),
])
def test_invalid_cards_are_refused_with_a_reason(number, expiry, cvv, reason):
    with pytest.raises(CardInvalid) as info:
        validate_card(number, expiry, cvv, TODAY)
    assert info.value.reason == reason
    assert number not in str(info.value) and cvv not in str(info.value)


def test_brands():
    assert card_brand(SANDBOX_APPROVE) == "visa"
    assert card_brand("5555555555554444") == "mastercard"
    assert card_brand("2223003122003222") == "mastercard"
    assert card_brand("378282246310005") == "amex"
    assert card_brand("6011111111111117") == "discover"
    assert card_brand("3530111333300000") == "card"


def test_card_details_show_only_the_last_four():
    c = card(cvv="737")
    for text in (repr(c), str(c), f"{c}", f"{c!r}", repr([c]), repr({"card": c})):
        assert SANDBOX_APPROVE not in text
        assert "737" not in text and "1230" not in text
        assert "1111" in text
    assert c.last4 == "1111" and c.brand == "visa"


def test_card_details_cannot_be_pickled_or_copied():
    with pytest.raises(TypeError):
        pickle.dumps(card())
    with pytest.raises(TypeError):
        copy.deepcopy(card())


# --------------------------------------------------------------------------- sandbox


async def test_sandbox_approves_the_test_card_with_a_token():
    gw = gateway()
    result = await gw.charge_card(card(), Decimal("10"), "USD", "p1")
    assert result.status is ChargeStatus.APPROVED
    assert result.status == "approved"
    assert result.last4 == "1111" and result.brand == "visa"
    assert result.token.startswith("sbx_") and len(result.token) == 4 + 24
    assert SANDBOX_APPROVE not in result.token
    assert result.gateway_ref and result.reason == ""


async def test_sandbox_declines():
    gw = gateway()
    result = await gw.charge_card(card(SANDBOX_DECLINE), Decimal("10"), "USD", "p1")
    assert result.status is ChargeStatus.DECLINED
    assert result.reason == "card declined" and result.token == "" and result.last4 == "0002"
    other = await gw.charge_card(card("5555555555554444"), Decimal("10"), "USD", "p2")
    assert other.status is ChargeStatus.DECLINED and other.reason == "not a test card"
    expired = await gw.charge_card(card(expiry="0120"), Decimal("10"), "USD", "p3")
    assert expired.status is ChargeStatus.DECLINED and expired.reason == "card expired"
    bad = await gw.charge_card(card("4111111111111112"), Decimal("10"), "USD", "p4")
    assert bad.status is ChargeStatus.ERROR


async def test_sandbox_times_out_on_the_third_test_number():
    gw = gateway(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(GatewayTimeout):
        await gw.charge_card(card(SANDBOX_TIMEOUT), Decimal("10"), "USD", "p1")
    assert 0.25 <= time.monotonic() - started < 2
    # Nothing recorded: a retry with the same id is processed (and times out) again.
    with pytest.raises(GatewayTimeout):
        await gw.charge_card(card(SANDBOX_TIMEOUT), Decimal("10"), "USD", "p1")
    assert gw.charges == 0


async def test_sandbox_delay_is_applied():
    gw = gateway(delay=0.2)
    started = time.monotonic()
    await gw.charge_card(card(), Decimal("1"), "USD", "p1")
    assert time.monotonic() - started >= 0.18


async def test_a_repeated_payment_id_returns_the_first_result():
    gw = gateway()
    first = await gw.charge_card(card(), Decimal("10"), "USD", "p1")
    again = await gw.charge_card(card(), Decimal("10"), "USD", "p1")
    assert again == first
    assert gw.charges == 1
    # The same id for a different charge is refused, not charged.
    other = await gw.charge_card(card(), Decimal("20"), "USD", "p1")
    assert other.status is ChargeStatus.ERROR and "reused" in other.reason
    assert gw.charges == 1
    # Concurrent requests with one id: one charge.
    results = await asyncio.gather(*(gw.charge_card(card(), Decimal("5"), "USD", "p2")
                                     for _ in range(5)))
    assert len({r.gateway_ref for r in results}) == 1
    assert gw.charges == 2


async def test_tokens_are_deterministic_and_chargeable():
    gw = gateway()
    approved = await gw.charge_card(card(), Decimal("10"), "USD", "p1")
    token = approved.token
    assert token == gw.token_for(SANDBOX_APPROVE)
    # Another process with the same secret recognises the token; another secret does not.
    later = await gateway().charge_token(token, Decimal("5"), "USD", "p2")
    assert later.status is ChargeStatus.APPROVED and later.last4 == "1111"
    assert later.token == token
    stranger = await SandboxGateway(b"other", delay=0).charge_token(token, Decimal("5"), "USD",
                                                                   "p2")
    assert stranger.status is ChargeStatus.DECLINED and stranger.reason == "unknown token"
    unknown = await gw.charge_token("sbx_" + "0" * 24, Decimal("5"), "USD", "p3")
    assert unknown.status is ChargeStatus.DECLINED
    declining = await gw.charge_token(gw.token_for(SANDBOX_DECLINE), Decimal("5"), "USD", "p4")
    assert declining.status is ChargeStatus.DECLINED and declining.last4 == "0002"
    assert (await gw.charge_token(token, Decimal("5"), "USD", "p2")) == later  # idempotent


async def test_a_token_of_the_timeout_card_times_out():
    gw = gateway(timeout=0.2)
    with pytest.raises(GatewayTimeout):
        await gw.charge_token(gw.token_for(SANDBOX_TIMEOUT), Decimal("5"), "USD", "p1")


# --------------------------------------------------------------------------- settings


def test_gateway_from_settings():
    gw = gateway_from_settings(Settings(payment_timeout=1.5))
    assert isinstance(gw, SandboxGateway) and gw.timeout == 1.5
    assert gw.token_for(SANDBOX_APPROVE) == SandboxGateway(
        b"ivr-sandbox-token-secret").token_for(SANDBOX_APPROVE)
    plugged = gateway_from_settings(Settings(payment_gateway=f"{__name__}:_factory"))
    assert isinstance(plugged, SandboxGateway) and plugged.timeout == 7
    for bad in ("stripe", "no.such.module:make", f"{__name__}:missing"):
        with pytest.raises(ConfigError):
            gateway_from_settings(Settings(payment_gateway=bad))


def _factory(settings: Settings) -> SandboxGateway:
    return SandboxGateway(b"plugged", timeout=7)


def test_topup_amounts():
    assert parse_topup_amounts(Settings().topup_amounts) == [Decimal(5), Decimal(10),
                                                             Decimal(20)]
    assert parse_topup_amounts(" 2.50, 10 ,") == [Decimal("2.50"), Decimal(10)]
    for bad in ("", "5,x", "0", "-5", "1e-9"):
        with pytest.raises(ConfigError):
            parse_topup_amounts(bad)
