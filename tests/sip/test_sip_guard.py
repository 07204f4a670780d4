"""Failed SIP attempts block their source (ivr.sipguard), against the real Asterisk: raw
REGISTERs over UDP from 127.0.0.4 (not the test trunk's 127.0.0.1, not the phones'
127.0.0.2) with a wrong digest, the guard started as `ivr serve` starts it, the block in
the database, the ACL refusing the source even with the right password while a phone
elsewhere still registers and a call in progress goes on, and the block lifted on expiry
or by `ivr sip blocks remove`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest
from sqlalchemy import delete

from ivr import sip
from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance
from ivr.db.models import SipBlock, SipPhone
from ivr.service import start_sip_guard
from ivr.sipguard import SipGuard, failed_attempt
from ivr.testing.access import AccessLine, Caller
from ivr.testing.sipua import SipUA

pytestmark = pytest.mark.sip

ATTACKER = "127.0.0.4"
PHONE_HOST = "127.0.0.2"
PHONE = "guarded"
FAILURES = 5  # sip_block_failures in these tests
REPLY_TIMEOUT = 5.0  # seconds Asterisk gets to answer one request over loopback


# --------------------------------------------------------------------------- a raw SIP UA


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324  (SIP digest is MD5)


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]


@dataclass
class RawRegistrar:
    """REGISTERs from one source address over a UDP socket bound to it, answering
    Asterisk's digest challenge with the password given (right or wrong)."""

    host: str
    server_port: int
    sock: socket.socket = field(init=False)
    cseq: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.host, 0))
        self.sock.connect(("127.0.0.1", self.server_port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    async def register(self, user: str, password: str, expires: int = 60) -> Reply:
        """One registration: the first answer when it is not a challenge (403 from the
        ACL), else the answer to the request carrying the digest."""
        call_id = f"{secrets.token_hex(8)}@{self.host}"
        tag = secrets.token_hex(4)
        first = await self._send(self._request(user, call_id, tag, expires))
        if first.status != 401:
            return first
        challenge = _params(first.headers["www-authenticate"])
        uri = f"sip:127.0.0.1:{self.server_port}"
        cnonce, nc = secrets.token_hex(8), "00000001"
        ha1 = _md5(f"{user}:{challenge['realm']}:{password}")
        ha2 = _md5(f"REGISTER:{uri}")
        if "auth" in challenge.get("qop", "").split(","):
            response = _md5(f"{ha1}:{challenge['nonce']}:{nc}:{cnonce}:auth:{ha2}")
            qop = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
        else:
            response = _md5(f"{ha1}:{challenge['nonce']}:{ha2}")
            qop = ""
        opaque = f', opaque="{challenge["opaque"]}"' if "opaque" in challenge else ""
        auth = (f'Digest username="{user}", realm="{challenge["realm"]}", '
                f'nonce="{challenge["nonce"]}", uri="{uri}", response="{response}", '
                f'algorithm=MD5{qop}{opaque}')
        return await self._send(self._request(user, call_id, tag, expires, auth))

    def _request(self, user: str, call_id: str, tag: str, expires: int,
                 auth: str | None = None) -> bytes:
        self.cseq += 1
        server = f"127.0.0.1:{self.server_port}"
        lines = [
            f"REGISTER sip:{server} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};rport;branch=z9hG4bK"
            f"{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{server}>;tag={tag}",
            f"To: <sip:{user}@{server}>",
            f"Call-ID: {call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{user}@{self.host}:{self.port}>",
            f"Expires: {expires}",
            *([f"Authorization: {auth}"] if auth else []),
            "User-Agent: ivr-guard-test",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _send(self, data: bytes) -> Reply:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, data)
        deadline = loop.time() + REPLY_TIMEOUT
        while True:  # skip provisional answers (100 Trying)
            left = deadline - loop.time()
            assert left > 0, f"no final answer from Asterisk to a REGISTER from {self.host}"
            raw = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), left)
            reply = _parse(raw)
            if reply.status >= 200:
                return reply


def _parse(raw: bytes) -> Reply:
    head = raw.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")
    _, status, reason = head[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return Reply(int(status), reason, headers)


def _params(header: str) -> dict[str, str]:
    return {k.lower(): v.strip('"') for k, v in
            re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', header.removeprefix("Digest "))}


# --------------------------------------------------------------------------- fixtures


@dataclass
class Guarded:
    """The access line with the SIP guard started as `ivr serve` starts it, a phone
    account, and the security events Asterisk sent the server's AMI user."""

    line: AccessLine
    guard: SipGuard
    asterisk: AsteriskInstance
    sip_port: int
    password: str
    events: list[Mapping[str, str]]

    def failures_from(self, address: str) -> int:
        return sum(1 for e in self.events if failed_attempt(e) == address)

    def registrar(self, host: str) -> RawRegistrar:
        return RawRegistrar(host, self.sip_port)

    async def wait_applied(self, blocked: bool, timeout: float) -> float:
        """Poll until the instance was given a block of ATTACKER (or its lifting);
        the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while (ATTACKER in (self.guard.applied or ())) != blocked:
            assert time.monotonic() < deadline, (
                f"block of {ATTACKER} {'not applied' if blocked else 'not lifted'} "
                f"within {timeout}s (applied: {self.guard.applied})")
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def wait_logged(self, text: str, timeout: float = 10) -> None:
        """Poll the instance's messages.log for a line (Asterisk writes it a moment after
        it answers)."""
        deadline = time.monotonic() + timeout
        while text not in self.asterisk.log_file.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"not in messages.log: {text}"
            await asyncio.sleep(0.05)

    async def ivr(self, *argv: str) -> tuple[int, str, str]:
        """An `ivr` command against this line's database and instance."""
        s = self.line.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
        env.update(
            IVR_DATA_DIR=str(s.data_dir), IVR_DATABASE_URL=s.database_url,
            IVR_ASTERISK_INSTANCE=s.asterisk_instance,
            IVR_ASTERISK_SANDBOX_DIR=str(s.asterisk_sandbox_dir),
            IVR_AMI_PORT=str(s.ami_port), IVR_AMI_SECRET=s.ami_secret,
            IVR_SIP_BIND=s.sip_bind, XDG_CONFIG_HOME=str(s.data_dir / "no-config"),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ivr.cli", *argv, env=env, cwd=s.data_dir,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def guarded(
    access_line: AccessLine, server_ami: AmiClient, asterisk: AsteriskInstance,
    sip_port: int,
) -> AsyncIterator[Guarded]:
    app = access_line.app
    with access_line.db.transaction() as s:
        password = sip.add_phone(s, PHONE).password
    events: list[Mapping[str, str]] = []
    unsubscribe = server_ami.on_event("*", lambda e: events.append(e)
                                      if "RemoteAddress" in e else None)
    # As `ivr serve` does: the same function, the application and the server's AMI user.
    guard = start_sip_guard(app, server_ami)
    try:
        await asyncio.wait_for(_applied_once(guard), 30)  # the phone is in the instance
        yield Guarded(access_line, guard, asterisk, sip_port, password, events)
    finally:
        unsubscribe()
        await guard.close()
        # No block nor phone outlives the test in the session's instance.
        with access_line.db.transaction() as s:
            s.execute(delete(SipBlock))
            s.execute(delete(SipPhone))
        await asyncio.to_thread(sip.apply_objects, access_line.settings, access_line.db,
                                app.secret_key)


async def _applied_once(guard: SipGuard) -> None:
    while guard.applied is None:
        await asyncio.sleep(0.05)


async def fail_until_blocked(g: Guarded, attacker: RawRegistrar) -> list[int]:
    """Wrong passwords (and an unknown user) from the attacker until the guard has a
    block for it applied; the status of each answer."""
    answers = []
    for attempt in range(FAILURES * 2):
        user = "nobody" if attempt % 2 else PHONE  # both count, both get the same answer
        reply = await attacker.register(user, "not-the-password")
        answers.append(reply.status)
        if ATTACKER in (g.guard.applied or ()):
            return answers
        if g.failures_from(ATTACKER) >= FAILURES:
            await g.wait_applied(True, timeout=20)
            return answers
    raise AssertionError(f"{ATTACKER} not blocked after {answers}")


# --------------------------------------------------------------------------- tests


BLOCK_LONG = {"sip_block_failures": FAILURES, "sip_block_window": 60,
              "sip_block_seconds": 600}
BLOCK_SHORT = {"sip_block_failures": FAILURES, "sip_block_window": 60,
               "sip_block_seconds": 4}


@pytest.mark.parametrize("access_line", [BLOCK_LONG], indirect=True)
async def test_failed_attempts_block_the_source_until_the_block_is_removed(
    guarded: Guarded, user_agent: SipUA, sip_calls,
):
    g = guarded
    attacker, phone = g.registrar(ATTACKER), g.registrar(PHONE_HOST)
    # A call in progress from the test trunk, at the access line's first question.
    card = g.line.card("5.00")
    await user_agent.dial(f"sip:100@127.0.0.1:{g.sip_port}")
    await user_agent.wait_established()
    caller = Caller(await sip_calls.next_call(user_agent))
    await caller.wait_prompt("enter-card-number")
    try:
        answers = await fail_until_blocked(g, attacker)
        # Every failed attempt got the same refusal, whatever the user name.
        assert set(answers) == {401}, answers
        seen = g.failures_from(ATTACKER)
        assert seen >= FAILURES, g.events
        print(f"attempts {len(answers)}, failed requests counted {seen}")

        # Now even the right password is refused, before any digest: the ACL.
        refused = await attacker.register(PHONE, g.password)
        assert refused.status == 403, refused
        assert "www-authenticate" not in refused.headers
        # ... by res_pjsip_acl (measured: 403 Forbidden, and this warning in messages.log)
        await g.wait_logged(f"Incoming SIP message from {ATTACKER}:{attacker.port} did not "
                            "pass ACL test")
        # Requests from the blocked source are not counted again.
        assert g.failures_from(ATTACKER) == seen
        # A phone elsewhere still registers meanwhile, and the call in progress went on
        # through the reload: its caller logs in (DTMF over RTP) and is asked the number.
        assert (await phone.register(PHONE, g.password)).status == 200
        await caller.log_in(card)
        await caller.wait_prompt("enter-destination")
        await user_agent.hangup()
        await user_agent.wait_closed()
        await caller.call.wait_ended()

        # The block is in the database, as the command shows it.
        code, out, err = await g.ivr("sip", "blocks", "list", "--json")
        assert code == 0, err
        (block,) = json.loads(out)["blocks"]
        assert block["address"] == ATTACKER
        assert "5 failed SIP attempts" in block["reason"], block

        # Lifted by the command: the instance is given the objects without it at once.
        code, out, err = await g.ivr("sip", "blocks", "remove", ATTACKER, "--json")
        assert code == 0, err
        assert json.loads(out) == {"address": ATTACKER, "removed": True, "applied": True}
        assert (await attacker.register(PHONE, g.password)).status == 200
        code, out, err = await g.ivr("sip", "blocks", "list", "--json")
        assert json.loads(out) == {"blocks": []}
        code, out, err = await g.ivr("sip", "blocks", "remove", ATTACKER)
        assert code == 1 and "is not blocked" in err
        # The guard follows the table: the address counts afresh from zero.
        await g.wait_applied(False, timeout=10)
        assert not g.guard.counter.is_blocked(ATTACKER)
        await phone.register(PHONE, g.password, expires=0)
        await attacker.register(PHONE, g.password, expires=0)
    finally:
        attacker.close()
        phone.close()


@pytest.mark.parametrize("access_line", [BLOCK_SHORT], indirect=True)
async def test_a_block_ends_by_itself(guarded: Guarded):
    g = guarded
    attacker = g.registrar(ATTACKER)
    try:
        await fail_until_blocked(g, attacker)
        blocked_at = time.monotonic()
        assert (await attacker.register(PHONE, g.password)).status == 403
        # 4 s block: lifted by the server within a second of its end (bounded poll).
        await g.wait_applied(False, timeout=10)
        took = time.monotonic() - blocked_at
        print(f"block lifted {took:.2f}s after it was applied")
        assert 2 < took < 4 + 5
        assert (await attacker.register(PHONE, g.password)).status == 200
        with g.line.db.reading() as s:
            assert s.query(SipBlock).count() == 0  # the ended row is gone
        await attacker.register(PHONE, g.password, expires=0)
    finally:
        attacker.close()
