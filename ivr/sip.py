"""SIP trunks and softphone accounts: what an operator adds with ``ivr sip ...``, and the
PJSIP objects the Asterisk instance is given for them.

- A **trunk** is a carrier. Its calls are told apart by source address (``match``
  CIDRs, else its host) and land in ``ivr-sip-inbound``, which routes on the called
  number (``sip_lines``). With ``register`` the instance registers to it; the trunk
  marked ``outbound`` takes the paid calls' outgoing legs (:func:`outbound`), with
  ``strip`` digits taken off the front of the E.164 number and ``prefix`` put before.
- A **phone** is a softphone account. It authenticates (digest, md5 credential only)
  and lands in ``ivr-sip-phones``: the IVR lines by short number, never a trunk, so a
  phone's password cannot buy a call to anywhere (no toll fraud through a phone).

Trunk passwords are encrypted with Fernet (the ``cryptography`` package: authenticated
encryption, not our own) under a key derived from the server's secret key
(``App.secret_key``); Asterisk needs the clear password to answer a carrier's challenge,
so it appears only in the rendered ``pjsip-objects.conf`` (mode 0600). Phone passwords
are shown once and never stored: only MD5(name:realm:password), which Asterisk checks.

The source addresses blocked after repeated failed attempts (ivr.sipguard) are rendered
here too, as one PJSIP ACL (:data:`BLOCK_ACL`) res_pjsip_acl checks every request against.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from .asterisk.instance import SIP_OBJECTS_FILE, write_private
from .db.models import SipBlock, SipPhone, SipTrunk

if TYPE_CHECKING:
    from .config import Settings
    from .db import Database

REALM = "ivr"  # the digest realm of the phones (their md5 credentials depend on it)
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,255}|\[?[0-9A-Fa-f:]+\]?")
USER_RE = re.compile(r"[A-Za-z0-9._+-]{1,128}")
PASSWORD_LENGTH = 16  # characters of a generated phone password (base32: 80 bits)
RESERVED_PREFIX = "ivr-"  # the instance's own objects (transports, test endpoints)
BLOCK_ACL = "ivr-blocked"  # the PJSIP ACL of the blocked source addresses


class SipError(ValueError):
    """A trunk or phone the operator asked for cannot be made as asked."""


class SipNotFound(LookupError):
    """No trunk or phone of that name."""


@dataclass(frozen=True)
class NewPhone:
    name: str
    password: str  # shown once
    callerid: str | None


# --------------------------------------------------------------------------- trunks


def add_trunk(session: Session, name: str, host: str, *, key: bytes, port: int = 5060,
              username: str | None = None, password: str | None = None,
              register: bool = False, match: Sequence[str] = (), outbound: bool = False,
              prefix: str = "", strip: int = 0) -> SipTrunk:
    """A new trunk; SipError names what is wrong with the request."""
    _check_name(session, SipTrunk, name)
    if not HOST_RE.fullmatch(host):
        raise SipError(f"--host: not a host name or address: {host!r}")
    if not 1 <= port <= 65535:
        raise SipError(f"--port: {port} is not a port")
    if (username is None) != (password is None):
        raise SipError("give --username and --password together")
    if username is not None and not USER_RE.fullmatch(username):
        raise SipError(f"--username: {username!r} has characters a SIP user name cannot")
    if password is not None and (not password or any(c in password for c in "\r\n;")):
        raise SipError("--password: empty, or holds a line break or ';'")
    if register and username is None:
        raise SipError("--register needs --username and --password")
    networks = [_network(m) for m in match]
    if prefix and not prefix.isdigit():
        raise SipError(f"--prefix: digits only, not {prefix!r}")
    if not 0 <= strip <= 15:
        raise SipError(f"--strip: 0 to 15 digits, not {strip}")
    if outbound:
        for other in session.scalars(select(SipTrunk).where(SipTrunk.outbound)):
            raise SipError(f"trunk {other.name!r} is the outbound one already: remove it "
                           "first, or add this one without --outbound")
    trunk = SipTrunk(
        name=name, host=host, port=port, username=username,
        password_enc=_cipher(key).encrypt(password.encode()).decode() if password else None,
        register=register, match=",".join(str(n) for n in networks), outbound=outbound,
        prefix=prefix, strip=strip, created_at=datetime.now(UTC))
    session.add(trunk)
    session.flush()
    return trunk


def list_trunks(session: Session) -> Sequence[SipTrunk]:
    return session.scalars(select(SipTrunk).order_by(SipTrunk.name)).all()


def remove_trunk(session: Session, name: str) -> None:
    trunk = session.scalar(select(SipTrunk).where(SipTrunk.name == name))
    if trunk is None:
        raise SipNotFound(f"no trunk {name!r}")
    session.delete(trunk)


@dataclass(frozen=True)
class Outbound:
    """The trunk that takes the paid calls' outgoing legs."""

    name: str
    prefix: str
    strip: int

    def dial(self, number: str) -> str:
        """The Dial() target for an E.164 number (digits only, checked here too: nothing
        else ever reaches a dial string)."""
        if not number.isdigit():
            raise SipError(f"not a number to dial: {number!r}")
        return f"PJSIP/{self.prefix}{number[self.strip:]}@{self.name}"


def outbound(session: Session) -> Outbound | None:
    """The outbound trunk, None when no trunk is marked so (``trunk_dial`` then)."""
    trunk = session.scalar(select(SipTrunk).where(SipTrunk.outbound))
    return None if trunk is None else Outbound(trunk.name, trunk.prefix, trunk.strip)


# --------------------------------------------------------------------------- phones


def add_phone(session: Session, name: str, callerid: str | None = None) -> NewPhone:
    """A new softphone account and its password, in clear this once."""
    _check_name(session, SipPhone, name)
    if callerid is not None and not callerid.isdigit():
        raise SipError(f"--callerid: digits only (E.164 without +), not {callerid!r}")
    password = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:PASSWORD_LENGTH]
    session.add(SipPhone(name=name, md5_cred=md5_cred(name, password), callerid=callerid,
                         created_at=datetime.now(UTC)))
    session.flush()
    return NewPhone(name, password, callerid)


def list_phones(session: Session) -> Sequence[SipPhone]:
    return session.scalars(select(SipPhone).order_by(SipPhone.name)).all()


def remove_phone(session: Session, name: str) -> None:
    phone = session.scalar(select(SipPhone).where(SipPhone.name == name))
    if phone is None:
        raise SipNotFound(f"no phone {name!r}")
    session.delete(phone)


def md5_cred(name: str, password: str, realm: str = REALM) -> str:
    """Asterisk's ``md5_cred``: what a digest check needs, not the password (MD5 is the
    algorithm SIP digest authentication itself uses)."""
    return hashlib.md5(f"{name}:{realm}:{password}".encode()).hexdigest()  # noqa: S324


# --------------------------------------------------------------------------- rendering


def render_pjsip(session: Session, *, key: bytes, phone_context: str = "ivr-sip-phones",
                 trunk_context: str = "ivr-sip-inbound", now: datetime | None = None) -> str:
    """The PJSIP objects of every trunk and phone, and the ACL of the source addresses
    blocked at ``now`` (default: the present), in pjsip.conf syntax."""
    out = ["; Written by `ivr sip ...` from the database: edits here are overwritten.\n"]
    for t in list_trunks(session):
        out.append(_trunk_sections(t, key, trunk_context))
    for p in list_phones(session):
        out.append(_phone_sections(p, phone_context))
    blocked = blocked_addresses(session, now or datetime.now(UTC))
    if blocked:
        out.append(_acl_section(blocked))
    return "\n".join(out)


def blocked_addresses(session: Session, now: datetime) -> list[str]:
    """The source addresses whose block is live at ``now``, sorted."""
    rows = session.scalars(select(SipBlock.address).where(SipBlock.until > now))
    return sorted(rows)


def _acl_section(addresses: Sequence[str]) -> str:
    """res_pjsip_acl answers every request from a denied address with 403, before any
    endpoint is looked up (addresses were checked when the block was made; checked
    again here: nothing else reaches a config line)."""
    lines = [f"[{BLOCK_ACL}]", "type = acl"]
    for address in addresses:
        ip = ipaddress.ip_address(address)
        lines.append(f"deny = {ip}/{ip.max_prefixlen}")
    return "\n".join([*lines, ""])


def _trunk_sections(t: SipTrunk, key: bytes, context: str) -> str:
    auth = ""
    lines = [f"[{t.name}]", "type = endpoint", f"context = {context}", "disallow = all",
             "allow = ulaw,alaw,g722", "dtmf_mode = rfc4733", "direct_media = no",
             f"aors = {t.name}", "rtp_symmetric = yes", "rewrite_contact = yes"]
    password = decrypt_password(t, key)
    if t.username and password is not None:
        lines.append(f"outbound_auth = {t.name}-auth")
        auth = "\n".join([f"[{t.name}-auth]", "type = auth", "auth_type = userpass",
                          f"username = {t.username}", f"password = {password}", ""])
    sections = ["\n".join(lines), "",
                "\n".join([f"[{t.name}]", "type = aor",
                           f"contact = sip:{t.host}:{t.port}", "qualify_frequency = 60", ""])]
    matches = t.match.split(",") if t.match else [t.host]
    sections.append("\n".join([f"[{t.name}-identify]", "type = identify",
                               f"endpoint = {t.name}",
                               *(f"match = {m}" for m in matches), ""]))
    if auth:
        sections.append(auth)
    if t.register:
        sections.append("\n".join([
            f"[{t.name}-reg]", "type = registration", f"outbound_auth = {t.name}-auth",
            f"server_uri = sip:{t.host}:{t.port}",
            f"client_uri = sip:{t.username}@{t.host}:{t.port}", "retry_interval = 60", ""]))
    return "\n".join(sections)


def _phone_sections(p: SipPhone, context: str) -> str:
    callerid = f"callerid = <{p.callerid}>\n" if p.callerid else ""
    return (f"[{p.name}]\ntype = endpoint\ncontext = {context}\ndisallow = all\n"
            "allow = ulaw,alaw,g722\ndtmf_mode = rfc4733\ndirect_media = no\n"
            f"auth = {p.name}-auth\naors = {p.name}\n{callerid}"
            f"\n[{p.name}-auth]\ntype = auth\nauth_type = md5\nrealm = {REALM}\n"
            f"username = {p.name}\nmd5_cred = {p.md5_cred}\n"
            f"\n[{p.name}]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n")


# --------------------------------------------------------------------------- helpers


def _check_name(session: Session, model: type[SipTrunk] | type[SipPhone], name: str) -> None:
    if not NAME_RE.fullmatch(name) or name.lower().startswith(RESERVED_PREFIX):
        raise SipError(f"{name!r}: a name is a letter then up to 39 letters, digits, '-' "
                       f"or '_', not starting with {RESERVED_PREFIX!r}")
    for other in (SipTrunk, SipPhone):  # one namespace: both are PJSIP endpoints
        if session.scalar(select(other.id).where(other.name == name)) is not None:
            what = "trunk" if other is SipTrunk else "phone"
            raise SipError(f"a {what} named {name!r} exists already")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SipError(f"--match: not an address or CIDR: {text!r}") from None


def _cipher(key: bytes) -> Fernet:
    """Fernet under a key derived from the server's secret (a separate purpose: the
    recharge codes' HMAC uses the secret as it is)."""
    derived = hashlib.sha256(b"ivr sip trunk passwords\0" + key).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def decrypt_password(trunk: SipTrunk, key: bytes) -> str | None:
    """A trunk's password in clear (None without one); SipError under another key."""
    if trunk.password_enc is None:
        return None
    try:
        return _cipher(key).decrypt(trunk.password_enc.encode()).decode()
    except InvalidToken:
        raise SipError(f"trunk {trunk.name!r}: its password was stored under another "
                       "secret key") from None


def write_objects(session: Session, etc_dir: Path, *, key: bytes) -> Path:
    """Write the trunks', phones' and blocks' PJSIP objects into an instance's config
    directory, mode 0600 from creation (trunk passwords are in it), and in one step (a
    reload never reads half a file). Asterisk applies them with ``module reload
    res_pjsip.so``: live calls are not touched."""
    path = etc_dir / SIP_OBJECTS_FILE
    partial = path.with_name(f".{SIP_OBJECTS_FILE}.{os.getpid()}.tmp")
    write_private(partial, render_pjsip(session, key=key))
    os.replace(partial, path)
    return path


def apply_objects(settings: Settings, db: Database, key: bytes) -> bool:
    """Write the PJSIP objects into the settings' Asterisk instance and reload res_pjsip
    when it runs: what every change (``ivr sip ...``, a block made or lifted by the
    server) does. False when the instance does not run (its next start writes them) or
    has no config directory (an Asterisk the project does not run: nothing written).
    Blocking: a database read, a file, an ``asterisk -rx``."""
    from .asterisk import AsteriskSetupError, instance_for

    try:
        instance = instance_for(settings, build=False)
    except AsteriskSetupError:
        return False
    etc = instance.host(instance.etc_dir)
    if not etc.is_dir():
        return False
    with db.reading() as s:
        write_objects(s, etc, key=key)
    if not instance.running():
        return False
    instance.cli("module reload res_pjsip.so")
    return True
