"""The recharge codes' encryption and keyed hash (ivr.revalue.codes): a round trip, and
every way a stored code must fail to decrypt (altered, moved to another pool, another
secret key, unknown scheme)."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from ivr.revalue.codes import (
    CodeKeys,
    CodeUnreadable,
    Issued,
    Pool,
    code_mac,
    decrypt_code,
    encrypt_code,
    normalise,
)

SECRET = b"a server secret key for the tests"
CODE = "48213377019921"
POOL = Pool.of("Orange", Decimal("10"), "eur")


@pytest.fixture(scope="module")
def keys() -> CodeKeys:
    return CodeKeys.derive(SECRET)


def test_round_trip_and_format(keys):
    stored = encrypt_code(CODE, POOL, keys)
    assert stored.startswith("v1:") and CODE not in stored
    raw = base64.b64decode(stored[3:], validate=True)
    assert len(raw) == 12 + len(CODE) + 16  # nonce, ciphertext, tag
    assert decrypt_code(stored, POOL, keys) == CODE
    # A fresh random nonce each time: the same code never gives the same text twice.
    again = encrypt_code(CODE, POOL, keys)
    assert again != stored and decrypt_code(again, POOL, keys) == CODE
    assert raw[:12] != base64.b64decode(again[3:])[:12]


def test_the_pool_is_normalised_for_the_associated_data(keys):
    same = Pool.of(" Orange ", Decimal("10.000"), "EUR")
    assert same == POOL and same.currency == "EUR"
    assert decrypt_code(encrypt_code(CODE, POOL, keys), same, keys) == CODE


@pytest.mark.parametrize("index", [0, 5, 11, 12, 20, -1])  # nonce, ciphertext, tag
def test_any_altered_byte_is_refused(keys, index):
    raw = bytearray(base64.b64decode(encrypt_code(CODE, POOL, keys)[3:]))
    raw[index] ^= 0x01
    with pytest.raises(CodeUnreadable):
        decrypt_code("v1:" + base64.b64encode(bytes(raw)).decode(), POOL, keys)


@pytest.mark.parametrize("other", [
    Pool.of("Orange", Decimal("20"), "EUR"),  # another value
    Pool.of("Orange", Decimal("10"), "USD"),  # another currency
    Pool.of("Vodafone", Decimal("10"), "EUR"),  # another operator
    Pool.of("Orange", Decimal("10.000001"), "EUR"),
])
def test_a_code_moved_to_another_pool_is_refused(keys, other):
    with pytest.raises(CodeUnreadable):
        decrypt_code(encrypt_code(CODE, POOL, keys), other, keys)


def test_another_secret_key_is_refused(keys):
    stored = encrypt_code(CODE, POOL, keys)
    with pytest.raises(CodeUnreadable):
        decrypt_code(stored, POOL, CodeKeys.derive(SECRET + b"!"))


@pytest.mark.parametrize("stored", ["", "v1:", "v1:AAAA", "v1:not base64!",
                                    "v2:" + "A" * 48, CODE])
def test_malformed_values_are_refused(keys, stored):
    with pytest.raises(CodeUnreadable):
        decrypt_code(stored, POOL, keys)


def test_derived_keys_are_separate_from_each_other_and_from_the_secret(keys):
    assert len(keys.enc) == len(keys.mac) == 32
    assert keys.enc != keys.mac and SECRET not in (keys.enc, keys.mac)
    assert CodeKeys.derive(SECRET) == keys  # deterministic
    assert CodeKeys.derive(b"another secret").enc != keys.enc
    assert repr(keys.enc) not in repr(keys) and repr(keys.mac) not in repr(keys)
    with pytest.raises(ValueError):
        CodeKeys.derive(b"")


def test_code_mac_is_keyed_per_operator_and_stable(keys):
    mac = code_mac(CODE, "Orange", keys)
    assert len(mac) == 64 and CODE not in mac
    assert code_mac(CODE, "Orange", keys) == mac
    assert code_mac(CODE, "Vodafone", keys) != mac
    assert code_mac(CODE, "Orange", CodeKeys.derive(b"other")) != mac
    assert code_mac("48213377019922", "Orange", keys) != mac


@pytest.mark.parametrize(("text", "code"), [
    ("4821 3377 0199 21", CODE), ("4821-3377-0199-21", CODE), ("  48213377019921\r\n", CODE),
    ("123456", "123456"),
])
def test_normalise(text, code):
    assert normalise(text) == code


@pytest.mark.parametrize("text", ["", "12345", "1" * 41, "4821x3377", "4821.3377",
                                  "４８２１３３７７", "48213377\t019921", "+48213377019921"])
def test_normalise_refuses_without_quoting_the_text(text):
    with pytest.raises(ValueError) as caught:
        normalise(text)
    assert text.strip() == "" or text.strip() not in str(caught.value)


def test_pool_checks():
    for operator, value, currency in [("", Decimal(10), "EUR"), ("x" * 65, Decimal(10), "EUR"),
                                      ("Or\0ange", Decimal(10), "EUR"),
                                      ("Orange", Decimal(0), "EUR"),
                                      ("Orange", Decimal("0.0000001"), "EUR"),
                                      ("Orange", Decimal(10), "EURO")]:
        with pytest.raises(ValueError):
            Pool.of(operator, value, currency)
    with pytest.raises(TypeError):
        Pool.of("Orange", 10, "EUR")  # type: ignore[arg-type]


def test_an_issued_code_stays_out_of_its_repr():
    issued = Issued(7, CODE, 3)
    assert CODE not in repr(issued) and CODE not in str(issued)
