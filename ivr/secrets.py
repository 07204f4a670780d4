"""Card numbers, PINs and codes: generated from a CSPRNG, checked with Luhn, PINs hashed.

PINs are stored only as salted scrypt hashes in the form
``scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>``, so the cost can be raised later
without breaking old hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
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
    return "".join(secrets.choice("0123456789") for _ in range(length))


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
