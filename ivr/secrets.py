"""Card numbers, PINs and codes: generated from a CSPRNG, checked with Luhn, PINs hashed.

Card PINs are stored as keyed hashes, ``hmac$<key id>$<hex>``: HMAC-SHA256 under a PIN
key kept apart from the database (:class:`PinKeys`, a key ring loaded by
:func:`load_pin_keys` from ``pin.key`` in the data directory or the ``pin_key``
setting), over the card's number and the PIN, so equal PINs differ across cards. A
4-digit PIN has 10,000 values: a slow hash would not protect it from whoever holds the
database, a key they do not hold does. Hashes made before, salted scrypt in the form
``scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>`` (still used for the revalue
customers' first codes and the operator-line PINs), keep working; a card's is re-keyed
on its next successful log-in (ivr.login).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, Settings

SCRYPT_LOG2_N = 14  # 16384: ~16 MiB and tens of ms per hash
SCRYPT_R = 8
SCRYPT_P = 1


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass the Luhn check."""
    if not payload.isdigit():
        raise ValueError("Luhn payload must be digits")
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return len(number) >= 2 and number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def random_digits(length: int) -> str:
    """``length`` uniformly random digits (leading zeros kept)."""
    if length < 1:
        return ""
    return str(secrets.randbelow(10**length)).zfill(length)


def new_card_number(length: int = 12, prefix: str = "") -> str:
    """A card number of ``length`` digits: prefix, random digits, Luhn check digit."""
    body = length - 1 - len(prefix)
    if body < 6:
        raise ValueError("card number too short for its prefix")
    return with_check_digit(prefix + random_digits(body))


def with_check_digit(payload: str) -> str:
    return payload + luhn_check_digit(payload)


def new_pin(length: int = 4) -> str:
    return random_digits(length)


def hash_pin(pin: str, *, log2_n: int = SCRYPT_LOG2_N) -> str:
    if not pin.isdigit():
        raise ValueError("a PIN is digits")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        pin.encode(), salt=salt, n=1 << log2_n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    )
    return f"scrypt${log2_n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_pin(pin: str, stored: str) -> bool:
    """Constant-time check of a typed PIN against a stored hash."""
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            pin.encode(),
            salt=bytes.fromhex(salt),
            n=1 << int(log2_n),
            r=int(r),
            p=int(p),
            maxmem=64 << 20,
            dklen=len(digest) // 2,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed.hex(), digest)


# PIN checks run scrypt with a 16 MiB work area. glibc keeps that memory in the arena of
# whichever thread ran it, so on a big worker pool every thread ends up holding 16 MiB.
# Two dedicated threads bound it (and two checks at once keep two cores busy).
_PIN_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pin-check")


def pin_check(pin: str, stored: str) -> bool:
    """:func:`verify_pin` on the dedicated PIN threads (call it from any thread)."""
    return _PIN_POOL.submit(verify_pin, pin, stored).result()


# --------------------------------------------------------------------------- PIN keys

PIN_KEY_FILE = "pin.key"
HMAC_SCHEME = "hmac"
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class PinKeyError(ValueError):
    """A PIN key ring that cannot be used (a bad line in ``pin.key`` or ``pin_key``), or
    a keyed PIN hash checked without its key ring."""


def key_id_of(key: bytes) -> str:
    """The id a key gets when none is given: a fingerprint (8 hex digits)."""
    return hashlib.sha256(b"ivr-pin-key-id\0" + key).hexdigest()[:8]


@dataclass(frozen=True)
class PinKeys:
    """The PIN key ring: ``(key id, key)`` pairs, the newest (the one new hashes use)
    first; older keys only verify, until every hash made with them has been re-keyed."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise PinKeyError("a PIN key ring needs at least one key")
        ids = [kid for kid, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise PinKeyError("two PIN keys have the same id")
        for kid, key in self.keys:
            if not _KEY_ID.fullmatch(kid):
                raise PinKeyError(f"a PIN key id is 1 to 32 of A-Z a-z 0-9 _ . -: {kid!r}")
            if len(key) < 16:
                raise PinKeyError(f"PIN key {kid} is shorter than 16 bytes")

    @classmethod
    def parse(cls, text: str) -> PinKeys:
        """A ring written as ``id:hex`` entries, newest first, one a line (or separated by
        commas or spaces); a bare ``hex`` entry gets its fingerprint as id. Blank lines
        and ``#`` comments are skipped."""
        entries: list[tuple[str, bytes]] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            for entry in line.replace(",", " ").split():
                kid, sep, hexkey = entry.rpartition(":")
                try:
                    key = bytes.fromhex(hexkey)
                except ValueError:
                    raise PinKeyError("a PIN key is hex digits (as `id:hex`)") from None
                entries.append((kid if sep else key_id_of(key), key))
        return cls(tuple(entries))

    def text(self) -> str:
        """The ring as ``pin.key`` holds it."""
        return "".join(f"{kid}:{key.hex()}\n" for kid, key in self.keys)

    @property
    def current_id(self) -> str:
        return self.keys[0][0]

    def hash(self, pin: str, subject: str) -> str:
        """The stored form of ``pin`` for ``subject`` (a card's number), under the
        newest key."""
        if not pin.isdigit():
            raise ValueError("a PIN is digits")
        kid, key = self.keys[0]
        return f"{HMAC_SCHEME}${kid}${_pin_mac(key, subject, pin)}"

    def hasher(self) -> _PinHasher:
        """:meth:`hash` for many PINs at once (a batch): the key's HMAC state is made
        once and copied for each PIN."""
        return _PinHasher(self.keys[0][0], self.keys[0][1])

    def verify(self, pin: str, stored: str, subject: str) -> bool:
        """Constant-time check of a typed PIN against a keyed hash; False for a hash of a
        key not in the ring (or not a keyed hash)."""
        try:
            scheme, kid, digest = stored.split("$")
        except ValueError:
            return False
        key = self.key(kid)
        if scheme != HMAC_SCHEME or key is None:
            return False
        return hmac.compare_digest(_pin_mac(key, subject, pin), digest)

    def key(self, kid: str) -> bytes | None:
        return next((key for k, key in self.keys if k == kid), None)

    def is_current(self, stored: str) -> bool:
        """Whether ``stored`` is a keyed hash under the newest key (else it is re-keyed
        on the next successful log-in)."""
        return stored.startswith(f"{HMAC_SCHEME}${self.current_id}$")

    def rotated(self, key: bytes | None = None, kid: str | None = None) -> PinKeys:
        """This ring with a new newest key (random unless given); the old keys kept."""
        key = key or secrets.token_bytes(32)
        return PinKeys(((kid or key_id_of(key), key), *self.keys))


class _PinHasher:
    def __init__(self, kid: str, key: bytes) -> None:
        self._prefix = f"{HMAC_SCHEME}${kid}$"
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, pin: str, subject: str) -> str:
        mac = self._mac.copy()
        mac.update(f"{subject}\0{pin}".encode())
        return self._prefix + mac.hexdigest()


def _pin_mac(key: bytes, subject: str, pin: str) -> str:
    return hmac.new(key, f"{subject}\0{pin}".encode(), hashlib.sha256).hexdigest()


def is_keyed_hash(stored: str) -> bool:
    return stored.startswith(HMAC_SCHEME + "$")


def check_pin(pin: str, stored: str, subject: str, keys: PinKeys | None) -> bool:
    """A typed PIN against its stored hash, keyed (under ``keys``) or an older scrypt
    one (on the PIN threads, :func:`pin_check`). A keyed hash without a key ring is an
    error, not a wrong PIN (:class:`PinKeyError`): counting it would lock the card."""
    if is_keyed_hash(stored):
        if keys is None:
            raise PinKeyError("a keyed PIN hash was checked without the PIN key ring")
        return keys.verify(pin, stored, subject)
    return pin_check(pin, stored)


def load_pin_keys(configured: str, path: Path) -> PinKeys:
    """The PIN key ring: the ``pin_key`` setting when set (``id:hex`` entries or one bare
    hex key), else ``path`` (``pin.key`` in the data directory: ``id:hex`` lines, newest
    first, mode 0600), made with one random key on first use. Keep it apart from the
    database and back it up apart from it: without it no card's PIN can be checked."""
    if configured.strip():
        return PinKeys.parse(configured)
    try:
        text = path.read_text()
    except FileNotFoundError:
        first = _new_ring()
        _write_private(path, first.text(), exclusive=True)
        text = path.read_text()
    if not text.strip():
        raise ConfigError(f"{path} is empty: restore it from its backup")
    return PinKeys.parse(text)


def pin_keys_of(settings: Settings) -> PinKeys:
    """:func:`load_pin_keys` for ``settings``: the ring the server and ``ivr cards issue``
    use."""
    return load_pin_keys(settings.pin_key, settings.data_dir / PIN_KEY_FILE)


def rotate_pin_keys(path: Path, keep: Iterable[str] | None = None) -> PinKeys:
    """Put a new random key at the head of the ring in ``path`` (new hashes use it; the
    old keys stay to verify, and cards are re-keyed to the new one on their next
    successful log-in). ``keep``: key ids to keep of the old ones (default all)."""
    ring = load_pin_keys("", path)
    if keep is not None:
        wanted = set(keep)
        ring = PinKeys(tuple((k, v) for k, v in ring.keys if k in wanted) or ring.keys[:1])
    new = ring.rotated()
    _write_private(path, new.text(), exclusive=False)
    return new


def _new_ring() -> PinKeys:
    key = secrets.token_bytes(32)
    return PinKeys(((key_id_of(key), key),))


def _write_private(path: Path, text: str, *, exclusive: bool) -> None:
    """Write ``text`` to ``path`` (mode 0600), complete when it appears; with
    ``exclusive`` a file made meanwhile by another process is kept instead."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
        else:
            os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)


def load_secret_key(configured: str, path: Path) -> bytes:
    """The server's secret for keyed hashes (recharge codes): ``configured`` when set,
    else a random key kept in ``path`` (mode 0600), made on first use. Keep it with the
    database's backups: without it no stored code can be matched."""
    if configured:
        return configured.encode()
    return bytes.fromhex(_kept_random_hex(path, 32))


# The AMI secret the project once shipped as its default: public, so never accepted.
PUBLISHED_AMI_SECRETS = frozenset({"ivr-sandbox-secret"})
AMI_SECRET_FILE = "ami.secret"


def load_ami_secret(configured: str, path: Path) -> str:
    """The secret of the server's AMI user: ``configured`` when set, else a random one
    kept in ``path`` (mode 0600), made on first use. The published default is refused."""
    if configured in PUBLISHED_AMI_SECRETS:
        raise ConfigError(
            "ami_secret is the old published default; remove the setting (a random secret "
            f"is then kept in {path}) or set your own"
        )
    return configured or _kept_random_hex(path, 24)


def ami_secret(settings: Settings) -> str:
    """:func:`load_ami_secret` for ``settings``: what manager.conf gets and the server
    logs in with."""
    return load_ami_secret(settings.ami_secret, settings.data_dir / AMI_SECRET_FILE)


def _kept_random_hex(path: Path, nbytes: int) -> str:
    """The hex string kept in ``path``; on first use a random one, in a file created
    0600 (never readable by others, whatever the umask) and complete when it appears."""
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        pass
    else:
        if not kept:
            raise ConfigError(f"{path} is empty: restore it, or delete it to make a new one")
        return kept
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        os.link(draft, path)
    except FileExistsError:  # made meanwhile by another process
        return path.read_text().strip()
    finally:
        draft.unlink()
    return value
