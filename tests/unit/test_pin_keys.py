"""The card PINs' keyed hash and its key ring (ivr.secrets.PinKeys, load_pin_keys)."""

from __future__ import annotations

import stat

import pytest

from ivr.config import ConfigError
from ivr.secrets import (
    PIN_KEY_FILE,
    PinKeyError,
    PinKeys,
    check_pin,
    hash_pin,
    key_id_of,
    load_pin_keys,
    rotate_pin_keys,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
CARD = "123456789012"


def ring(*keys: tuple[str, bytes]) -> PinKeys:
    return PinKeys(tuple(keys))


def test_a_keyed_hash_names_its_key_and_checks_the_pin():
    keys = ring(("k1", KEY_A))
    stored = keys.hash("1234", CARD)
    scheme, kid, digest = stored.split("$")
    assert (scheme, kid, len(digest)) == ("hmac", "k1", 64)
    assert keys.verify("1234", stored, CARD)
    assert not keys.verify("1235", stored, CARD)
    assert not keys.verify("", stored, CARD)
    assert "1234" not in stored


def test_equal_pins_differ_across_cards_and_the_card_is_part_of_the_check():
    keys = ring(("k1", KEY_A))
    a, b = keys.hash("1234", CARD), keys.hash("1234", "123456789029")
    assert a != b
    assert not keys.verify("1234", a, "123456789029")
    assert keys.hash("1234", CARD) == a  # deterministic: no salt needed, the key is secret


def test_another_key_gives_another_hash_and_does_not_verify_it():
    stored = ring(("k1", KEY_A)).hash("1234", CARD)
    assert not ring(("k1", KEY_B)).verify("1234", stored, CARD)  # same id, other key
    assert not ring(("k2", KEY_B)).verify("1234", stored, CARD)  # its key id is unknown


def test_the_batch_hasher_matches_hash():
    keys = ring(("k1", KEY_A))
    hasher = keys.hasher()
    for pin, card in [("0000", CARD), ("987654321098", "5"), ("1234", CARD)]:
        assert hasher(pin, card) == keys.hash(pin, card)


def test_rotation_puts_a_new_key_first_and_old_hashes_still_verify():
    old = ring(("k1", KEY_A))
    stored = old.hash("4321", CARD)
    new = old.rotated(KEY_B, "k2")
    assert new.current_id == "k2" and [k for k, _ in new.keys] == ["k2", "k1"]
    assert new.verify("4321", stored, CARD)
    assert not new.is_current(stored) and old.is_current(stored)
    rekeyed = new.hash("4321", CARD)
    assert rekeyed.startswith("hmac$k2$") and new.is_current(rekeyed)
    assert not old.verify("4321", rekeyed, CARD)  # the old ring does not know k2
    assert new.rotated().current_id not in ("k1", "k2")  # a random key, its fingerprint


def test_parse_and_text_round_trip():
    text = f"# newest first\nk2:{KEY_B.hex()}\n\nk1:{KEY_A.hex()}  # the first one\n"
    keys = PinKeys.parse(text)
    assert keys.keys == (("k2", KEY_B), ("k1", KEY_A))
    assert PinKeys.parse(keys.text()) == keys
    bare = PinKeys.parse(KEY_A.hex())  # the pin_key setting may be one bare hex key
    assert bare.keys == ((key_id_of(KEY_A), KEY_A),)
    assert PinKeys.parse(f"k2:{KEY_B.hex()}, k1:{KEY_A.hex()}") == keys


@pytest.mark.parametrize("text", [
    "", "k1:nothex", f"k1:{KEY_A.hex()}\nk1:{KEY_B.hex()}", "k1:00ff",
    f"bad id!:{KEY_A.hex()}",
])
def test_bad_rings_are_refused(text: str):
    with pytest.raises(PinKeyError):
        PinKeys.parse(text)


def test_the_key_file_is_made_once_private_and_kept(tmp_path):
    path = tmp_path / "data" / PIN_KEY_FILE
    keys = load_pin_keys("", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_pin_keys("", path) == keys  # the same ring on every start
    assert len(keys.keys) == 1 and len(keys.keys[0][1]) == 32
    assert path.read_text() == keys.text()
    configured = load_pin_keys(f"k9:{KEY_A.hex()}", path)  # the setting wins
    assert configured.keys == (("k9", KEY_A),)


def test_an_empty_key_file_is_an_error_not_a_new_key(tmp_path):
    path = tmp_path / PIN_KEY_FILE
    path.write_text("\n")
    with pytest.raises(ConfigError):
        load_pin_keys("", path)


def test_rotate_the_key_file(tmp_path):
    path = tmp_path / PIN_KEY_FILE
    first = load_pin_keys("", path)
    stored = first.hash("1234", CARD)
    rotated = rotate_pin_keys(path)
    assert rotated.keys[1:] == first.keys and rotated.current_id != first.current_id
    assert load_pin_keys("", path) == rotated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rotated.verify("1234", stored, CARD)
    trimmed = rotate_pin_keys(path, keep=[rotated.current_id])  # first's key dropped
    assert [k for k, _ in trimmed.keys] == [trimmed.current_id, rotated.current_id]
    assert not trimmed.verify("1234", stored, CARD)


def test_check_pin_takes_both_kinds_and_refuses_a_keyed_hash_without_keys():
    keys = ring(("k1", KEY_A))
    old = hash_pin("1234", log2_n=4)  # an older scrypt hash, made cheap
    assert check_pin("1234", old, CARD, keys) and check_pin("1234", old, CARD, None)
    assert not check_pin("1235", old, CARD, keys)
    keyed = keys.hash("1234", CARD)
    assert check_pin("1234", keyed, CARD, keys)
    assert not check_pin("1235", keyed, CARD, keys)
    with pytest.raises(PinKeyError):
        check_pin("1234", keyed, CARD, None)
