"""Calls set up per second over real SIP into the access line: a stepped call rate until
the p99 of the set-up times passes 200 ms or a call fails.

    python bench/sipcalls.py [--rates 2,5,10,20,30,40,50,60,80,100] [--duration 20]
                             [--hold 4] [--warmup 10] [--agi-max-connections N]
                             [--silent-caller] [--keep]

The script brings up its own Asterisk instance (``bench-<pid>-sip``, the project's sandbox
build, the tests' SIP trunk so INVITEs from 127.0.0.1 land in ``ivr-sip-inbound``; number
100 is the access line) and runs ``ivr serve`` against it in its own process (SQLite in a
temporary directory, AMI connected, English only). Each step places calls at a steady
``rate`` per second for ``--duration`` seconds. A call is: INVITE to sip:100@127.0.0.1,
ACK, then the first RTP packet whose PCMU payload is mostly audible samples, which must
be the welcome prompt's first audible 20 ms byte for byte (Asterisk sends the store's
u-law file unchanged; measured, it sends nothing before it; one of its next 24 audible
frames is taken too, and counted as a lost first packet), ``--hold`` seconds, then
BYE. A call fails on any non-2xx answer, no 200 OK within 5 s, no audio within 5 s of
the 200 OK, a first audio that is not the welcome (a refused AGI connection gives "service
unavailable"), a BYE from Asterisk during the hold, or a BYE not answered 200. Per step:
INVITE -> 200 OK and INVITE -> first prompt audio (p50/p99 by nearest rank, from the
first INVITE's send to the kernel's receive time of the packet, SO_TIMESTAMPNS), the
peak of calls answered and not yet hung up, and the CPU time Asterisk, the server and
this load generator spent per call (/proc). The run stops after the first step with a
failed call or a p99 over 200 ms.

The SIP client (UAC) is written here by hand, on asyncio: there is no sipp or
pjsua on the machines this runs on, and baresip (ivr.testing.sipua) costs a process per
call, hundreds of them at the rates measured here. It is a load tool for this bench, not
a SIP stack: UDP only, one SIP socket for all calls (RFC 3261 timer A/E retransmission,
CSeq, branches and tags per transaction and dialog, 200 to Asterisk's BYE and OPTIONS),
an SDP offer of PCMU/8000 and telephone-event/8000, and per call one RTP socket (even
ports just above Asterisk's RTP range, each resting 2 s between calls) that takes only
packets from the address in Asterisk's SDP answer (a port's last call may still be
streaming for a moment) and is read only until the first prompt audio (later packets
fill a small receive buffer and are dropped by the kernel). From the
200 OK until that audio it sends PCMU silence every 20 ms from the same socket, as a
phone does: Asterisk's answer waits up to 500 ms for the caller's first voice frame
before the AGI's ANSWER returns, so a caller sending nothing hears every first prompt
500 ms late (``--silent-caller`` shows it). After the first audio it sends nothing more
(Asterisk keeps sending to the address it learnt).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ivr.asterisk import AsteriskInstance
    from ivr.config import Settings

TARGET_P99_MS = 200.0
T1 = 0.5  # RFC 3261 timer T1
T2 = 4.0  # RFC 3261 timer T2 (non-INVITE retransmission cap)
ANSWER_TIMEOUT = 5.0  # INVITE -> final response
AUDIO_TIMEOUT = 5.0  # 200 OK -> first prompt audio
BYE_TIMEOUT = 5.0  # BYE -> final response
ASTERISK_RTP_PORTS = 3000  # Asterisk's RTP range for the run (2 ports per call)
UAC_RTP_PORTS = 4000  # the load generator's RTP ports, just above Asterisk's (even ones)
SERVER_START_TIMEOUT = 90.0


# --------------------------------------------------------------------------- SIP messages

COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact",
           "l": "content-length", "c": "content-type", "k": "supported", "s": "subject"}


@dataclass
class SipMessage:
    """A parsed request or response: start line, headers in order (names lower-cased,
    compact forms expanded), body."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """A request's method; a response's is the one its CSeq names."""
        if self.is_request:
            return self.start.split(" ", 1)[0]
        return self.cseq[1]

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1]) if not self.is_request else 0

    @property
    def reason(self) -> str:
        parts = self.start.split(" ", 2)
        return parts[2] if len(parts) > 2 and not self.is_request else ""

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def call_id(self) -> str:
        return self.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.get("cseq") or "0 ").partition(" ")
        return int(number), method.strip().upper()

    @property
    def branch(self) -> str:
        """The branch of the top Via (the transaction a response belongs to)."""
        via = self.get("via") or ""
        return param(via.split(",", 1)[0], "branch") or ""


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP datagram; ValueError when it is not one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    if not start or not (start.startswith("SIP/2.0 ") or start.endswith(" SIP/2.0")):
        raise ValueError(f"not a SIP start line: {start[:60]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        headers.append((COMPACT.get(name, name), value.strip()))
    message = SipMessage(start, headers, body)
    length = message.get("content-length")
    if length is not None and length.strip().isdigit():
        message.body = body[: int(length)]
    return message


def param(header: str, name: str) -> str | None:
    """A ``;name=value`` parameter of a header value (outside its <uri>)."""
    rest = header.rpartition(">")[2] if "<" in header else header
    for item in rest.split(";")[1:]:
        key, _, value = item.partition("=")
        if key.strip().lower() == name:
            return value.strip()
    return None


def uri_of(header: str) -> str:
    """The URI of a name-addr (``"x" <sip:...>;tag=``) or addr-spec (``sip:...;tag=``)."""
    if "<" in header:
        return header.split("<", 1)[1].split(">", 1)[0].strip()
    return header.split(";", 1)[0].strip()


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


# Receive times come from the kernel (SO_TIMESTAMPNS, the wall clock): the figures do not
# include how late this generator reads its sockets, which it reports apart.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
ANC_SIZE = socket.CMSG_SPACE(16)


def stamped(sock: socket.socket) -> socket.socket:
    """``sock`` with receive timestamps on, non-blocking."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        pass  # then the time of reading (time.time) stands in
    sock.setblocking(False)
    return sock


def recv_stamped(sock: socket.socket) -> tuple[bytes, float, tuple[str, int]]:
    """One datagram, when it reached the socket (time.time's clock) and its source."""
    data, ancillary, _flags, addr = sock.recvmsg(65535, ANC_SIZE)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack("qq", payload[:16])
            return data, sec + nsec / 1e9, addr
    return data, time.time(), addr


def build_request(method: str, ruri: str, *, via: str, branch: str, from_: str, to: str,
                  call_id: str, cseq: int, contact: str | None = None,
                  body: bytes = b"", content_type: str | None = None,
                  cseq_method: str | None = None) -> bytes:
    """A request over UDP from ``via`` (host:port). ``from_``/``to`` are whole header
    values (with their tags)."""
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via};rport;branch={branch}",
        "Max-Forwards: 70",
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    if method == "INVITE":
        lines.append("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS")
    if body:
        lines.append(f"Content-Type: {content_type or 'application/sdp'}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def build_response(request: SipMessage, status: int, reason: str, *,
                   to_tag: str | None = None) -> bytes:
    """A body-less response to ``request``: its Via headers, From, Call-ID and CSeq
    copied; its To with ``to_tag`` added when it has none."""
    to = request.get("to") or ""
    if to_tag and param(to, "tag") is None:
        to = f"{to};tag={to_tag}"
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {via}" for via in request.get_all("via")]
    lines += [f"From: {request.get('from') or ''}", f"To: {to}",
              f"Call-ID: {request.call_id}", f"CSeq: {request.get('cseq') or ''}",
              "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sdp_offer(host: str, rtp_port: int, session: int) -> bytes:
    """PCMU/8000 and RFC 4733 events, as a G.711 phone offers."""
    return (
        "v=0\r\n"
        f"o=bench {session} {session} IN IP4 {host}\r\n"
        "s=bench\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    ).encode()


def sdp_media(body: bytes) -> tuple[str, int, list[int]]:
    """The (address, port, payload types) of an SDP answer's first audio stream."""
    address, port, formats = "", 0, []
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("c=") and not port:
            address = line.split()[-1]
        elif line.startswith("m=audio") and not port:
            parts = line.split()
            port, formats = int(parts[1]), [int(p) for p in parts[3:] if p.isdigit()]
    return address, port, formats


# --------------------------------------------------------------------------- RTP


def _ulaw_magnitude(byte: int) -> int:
    b = ~byte & 0xFF
    exponent, mantissa = (b >> 4) & 7, b & 0x0F
    return (((mantissa << 3) + 0x84) << exponent) - 0x84


# u-law bytes of the lowest segment (|sample| <= 120 of 32767; 0xFF and 0x7F are zero)
# map to 0, the others to 1: a payload's count of 1s is its count of audible samples.
AUDIBLE = bytes(0 if _ulaw_magnitude(b) <= 120 else 1 for b in range(256))
SILENCE = b"\xff" * 160  # 20 ms of PCMU silence


def rtp_payload(packet: bytes) -> tuple[int, bytes] | None:
    """(payload type, payload) of an RTP packet; None for anything else (RTCP)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    pt = packet[1] & 0x7F
    if 72 <= pt <= 76:  # RTCP (SR, RR, SDES, BYE, APP) on a shared port
        return None
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= offset + 4:  # header extension
        offset += 4 + 4 * int.from_bytes(packet[offset + 2:offset + 4], "big")
    end = len(packet)
    if packet[0] & 0x20 and end > offset:  # padding
        end -= packet[-1]
    return pt, packet[offset:end]


def is_prompt_audio(payload: bytes) -> bool:
    """A PCMU payload most of whose samples are audible (speech, not silence)."""
    return len(payload) >= 80 and payload.translate(AUDIBLE).count(1) * 2 > len(payload)


def audible_frames(ulaw: bytes, count: int = 25, size: int = 160) -> dict[bytes, int]:
    """The first ``count`` 20 ms frames of a u-law file that :func:`is_prompt_audio`
    hears, each with its rank: the payloads of the audible packets Asterisk sends first
    when it plays the file (rank 0 unless a packet was lost)."""
    frames: dict[bytes, int] = {}
    for start in range(0, len(ulaw) - size + 1, size):
        frame = ulaw[start:start + size]
        if is_prompt_audio(frame):
            frames.setdefault(frame, len(frames))
            if len(frames) == count:
                break
    if not frames:
        raise ValueError("no audible frame")
    return frames


# --------------------------------------------------------------------------- the UAC


class Transaction:
    """A client transaction's retransmissions (timer A for INVITE: doubling; timer E for
    the others: doubling up to T2) until stop()."""

    def __init__(self, uac: Uac, data: bytes, *, invite: bool) -> None:
        self.uac, self.data, self.invite = uac, data, invite
        self.interval = T1
        self.handle: asyncio.TimerHandle | None = None
        self.sends = 0

    def start(self) -> None:
        self._fire()

    def _fire(self) -> None:
        self.uac.send(self.data)
        self.sends += 1
        self.handle = self.uac.loop.call_later(self.interval, self._fire)
        self.interval = self.interval * 2 if self.invite else min(self.interval * 2, T2)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


@dataclass
class CallResult:
    ok: bool
    reason: str = ""
    answer_ms: float | None = None  # INVITE sent -> 200 OK received
    audio_ms: float | None = None  # INVITE sent -> first prompt audio received
    invite_sends: int = 0
    missed: int = 0  # the welcome's first audible packets not received
    caller: str = ""  # the From user (the caller ID the server logs)
    sent: float = 0.0  # when the first INVITE was sent (time.time)


class Call:
    """One call from INVITE to the BYE's 200 OK."""

    def __init__(self, uac: Uac, number: int, rtp: RtpSocket) -> None:
        self.uac, self.rtp = uac, rtp
        self.caller = f"1555{number % 10_000_000:07d}"
        self.call_id = f"{secrets.token_hex(10)}@bench"
        self.from_tag = secrets.token_hex(4)
        self.to_tag: str | None = None
        self.ruri = f"sip:100@{uac.target[0]}:{uac.target[1]}"
        self.remote_target = self.ruri
        self.invite_branch = new_branch()
        self.provisional = False
        self.invite_done: asyncio.Future[SipMessage] = uac.loop.create_future()
        self.answered_at = 0.0  # when the first 2xx reached the socket
        self.bye_done: asyncio.Future[SipMessage] | None = None
        self.bye_branch = ""
        self.remote_bye = asyncio.Event()
        self.invite_tx: Transaction | None = None
        self.bye_tx: Transaction | None = None
        self.abandoned = False

    @property
    def from_header(self) -> str:
        return f"<sip:{self.caller}@{self.uac.local[0]}>;tag={self.from_tag}"

    @property
    def to_header(self) -> str:
        to = f"<sip:100@{self.uac.target[0]}:{self.uac.target[1]}>"
        return f"{to};tag={self.to_tag}" if self.to_tag else to

    @property
    def via(self) -> str:
        return f"{self.uac.local[0]}:{self.uac.local[1]}"

    def _request(self, method: str, branch: str, cseq: int, ruri: str | None = None,
                 body: bytes = b"", cseq_method: str | None = None) -> bytes:
        return build_request(
            method, ruri or self.remote_target, via=self.via, branch=branch,
            from_=self.from_header, to=self.to_header, call_id=self.call_id, cseq=cseq,
            contact=f"<sip:{self.caller}@{self.via}>" if method == "INVITE" else None,
            body=body, cseq_method=cseq_method)

    # ------------------------------------------------------------------ from the socket

    def on_response(self, msg: SipMessage, stamp: float) -> None:
        cseq, method = msg.cseq
        if method == "INVITE" and cseq == 1:
            self._on_invite_response(msg, stamp)
        elif (method == "BYE" and self.bye_done is not None and msg.status >= 200
              and msg.branch == self.bye_branch):
            if self.bye_tx is not None:
                self.bye_tx.stop()
            if not self.bye_done.done():
                self.bye_done.set_result(msg)
        # CANCEL's 200 and anything else: nothing to do

    def _on_invite_response(self, msg: SipMessage, stamp: float) -> None:
        if msg.branch != self.invite_branch:
            return
        if 200 <= msg.status < 300 and not self.answered_at:
            self.answered_at = stamp
            self.uac.read_delays.append(time.time() - stamp)
        if msg.status < 200:
            self.provisional = True
            if self.invite_tx is not None:
                self.invite_tx.stop()  # timer A stops on a provisional response
            return
        if self.invite_tx is not None:
            self.invite_tx.stop()
        tag = param(msg.get("to") or "", "tag")
        if msg.status >= 300:
            # ACK of a non-2xx final: same branch, hop by hop, To with the response's tag
            self.to_tag = tag
            self.uac.send(self._request("ACK", self.invite_branch, 1, ruri=self.ruri))
        else:
            if self.to_tag is None:
                self.to_tag = tag
                contact = msg.get("contact")
                if contact:
                    self.remote_target = uri_of(contact)
            # ACK of a 2xx (each retransmitted 200 gets one): a new transaction
            self.uac.send(self._request("ACK", new_branch(), 1))
            if self.abandoned and self.bye_done is None:
                self.uac.loop.create_task(self.hang_up())  # a 200 after we gave up
        if not self.invite_done.done():
            self.invite_done.set_result(msg)

    def on_request(self, msg: SipMessage) -> None:
        if msg.method == "BYE":
            self.uac.send(build_response(msg, 200, "OK"))
            self.remote_bye.set()
        elif msg.method == "ACK":
            pass
        elif msg.method in ("OPTIONS", "INFO", "NOTIFY", "UPDATE"):
            self.uac.send(build_response(msg, 200, "OK"))
        else:
            self.uac.send(build_response(msg, 501, "Not Implemented", to_tag=self.from_tag))

    # ------------------------------------------------------------------ the call

    async def hang_up(self) -> SipMessage | None:
        cseq = 2
        self.bye_branch = new_branch()
        self.bye_done = self.uac.loop.create_future()
        self.bye_tx = Transaction(self.uac, self._request("BYE", self.bye_branch, cseq),
                                  invite=False)
        self.bye_tx.start()
        try:
            return await asyncio.wait_for(asyncio.shield(self.bye_done), BYE_TIMEOUT)
        except TimeoutError:
            return None
        finally:
            self.bye_tx.stop()

    async def run(self, hold: float) -> CallResult:
        uac, rtp = self.uac, self.rtp
        body = sdp_offer(uac.local[0], rtp.port, random.randrange(1 << 30))
        invite = self._request("INVITE", self.invite_branch, 1, ruri=self.ruri, body=body)
        self.invite_tx = Transaction(uac, invite, invite=True)
        sent = time.time()
        self.invite_tx.start()
        result = CallResult(False, caller=self.caller, sent=sent)
        answered = False
        try:
            try:
                final = await asyncio.wait_for(asyncio.shield(self.invite_done), ANSWER_TIMEOUT)
            except TimeoutError:
                self.abandoned = True
                if self.provisional:
                    cancel = self._request("CANCEL", self.invite_branch, 1, ruri=self.ruri)
                    uac.send(cancel)
                result.reason = f"no final answer in {ANSWER_TIMEOUT:g} s"
                return result
            finally:
                self.invite_tx.stop()
                result.invite_sends = self.invite_tx.sends
            if final.status >= 300:
                result.reason = f"{final.status} {final.reason}"
                return result
            result.answer_ms = (self.answered_at - sent) * 1000
            answered = True
            address, port, _ = sdp_media(final.body)
            if port:
                rtp.expect_from((address, port))
                if not uac.silent:
                    rtp.start_sending((address, port))
            uac.calls_up += 1
            uac.peak_up = max(uac.peak_up, uac.calls_up)
            try:
                heard = await asyncio.wait_for(asyncio.shield(rtp.heard), AUDIO_TIMEOUT)
                if rtp.wrong:  # no figure: it is not the time to the welcome
                    result.reason = "the first audio is not the welcome prompt"
                else:
                    result.audio_ms = (heard - sent) * 1000
                    result.missed = rtp.missed
            except TimeoutError:
                result.reason = f"no prompt audio in {AUDIO_TIMEOUT:g} s after 200 OK"
            if not result.reason:
                try:
                    await asyncio.wait_for(self.remote_bye.wait(), hold)
                    result.reason = "hung up by Asterisk during the hold"
                    return result
                except TimeoutError:
                    pass
            if self.remote_bye.is_set():
                return result
            reply = await self.hang_up()
            if reply is None:
                result.reason = result.reason or f"BYE not answered in {BYE_TIMEOUT:g} s"
            elif reply.status >= 300:
                result.reason = result.reason or f"BYE refused: {reply.status} {reply.reason}"
            result.ok = not result.reason
            return result
        finally:
            if answered:
                uac.calls_up -= 1
            rtp.release()
            # late retransmissions of this call's messages still find it for a while
            uac.loop.call_later(10, uac.calls.pop, self.call_id, None)


class RtpSocket:
    """A call's RTP port: read until the first prompt audio, then left to the kernel."""

    def __init__(self, uac: Uac, sock: socket.socket, port: int) -> None:
        self.uac, self.sock, self.port = uac, sock, port
        self.heard: asyncio.Future[float] = uac.loop.create_future()
        self.reading = False
        self.wrong = False  # the first audio is not the welcome prompt's
        self.missed = 0  # audible packets of the welcome before the first one received
        self.peer: tuple[str, int] | None = None  # Asterisk's RTP address (SDP answer)
        self.sender: asyncio.TimerHandle | None = None

    def expect_from(self, peer: tuple[str, int]) -> None:
        """Read from now on (what came since the INVITE first), taking only the packets
        from ``peer``, the address of Asterisk's SDP answer."""
        self.peer = peer
        self.uac.loop.add_reader(self.sock.fileno(), self._readable)
        self.reading = True
        self._readable()

    def start_sending(self, to: tuple[str, int]) -> None:
        """Silence every 20 ms, as a phone sends from the 200 OK, until the first prompt
        audio: Asterisk's answer waits up to 500 ms for the caller's first voice frame."""
        self.to = to
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.stamp = random.getrandbits(32)
        self._send_silence()

    def _send_silence(self) -> None:
        self.sender = None
        if self.heard.done() or not self.reading:
            return
        header = bytes([0x80, 0x00]) + self.seq.to_bytes(2, "big") + \
            self.stamp.to_bytes(4, "big") + self.ssrc.to_bytes(4, "big")
        try:
            self.sock.sendto(header + SILENCE, self.to)
        except OSError:
            return
        self.uac.rtp_sent += 1
        self.seq = (self.seq + 1) & 0xFFFF
        self.stamp = (self.stamp + 160) & 0xFFFFFFFF
        self.sender = self.uac.loop.call_later(0.02, self._send_silence)

    def _readable(self) -> None:
        while True:
            try:
                packet, stamp, source = recv_stamped(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._stop_reading()
                return
            if source != self.peer:  # not this call's stream (a late packet of the last one)
                self.uac.stray_rtp += 1
                continue
            parsed = rtp_payload(packet)
            if parsed is None:
                continue
            pt, payload = parsed
            self.uac.rtp_packets += 1
            if pt == 0 and is_prompt_audio(payload):
                if not self.heard.done():
                    expected = self.uac.first_audio
                    if expected:
                        rank = expected.get(payload)
                        self.wrong = rank is None
                        self.missed = rank or 0
                    self.heard.set_result(stamp)
                    self.uac.read_delays.append(time.time() - stamp)
                self._stop_reading()
                return

    def _stop_reading(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
            self.sender = None
        if self.reading:
            self.uac.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def release(self) -> None:
        self._stop_reading()
        self.uac.rtp_pool.give_back(self.sock, self.port)


class RtpPool:
    """Even UDP ports of our own range, each bound once and reused, oldest first and
    after a rest (Asterisk sends a finished call's stream for a moment after the BYE)."""

    REST = 2.0  # seconds a port rests before its next call, while new ports are left

    def __init__(self, host: str, first: int, count: int) -> None:
        self.host = host
        self.ports = collections.deque(range(first + first % 2, first + count, 2))
        self.idle: collections.deque[tuple[socket.socket, int, float]] = collections.deque()

    def take(self) -> tuple[socket.socket, int]:
        while self.idle and (not self.ports
                             or time.monotonic() - self.idle[0][2] >= self.REST):
            sock, port, _ = self.idle.popleft()
            try:
                while True:  # drop what arrived since the last call
                    sock.recv(2048)
            except BlockingIOError:
                return sock, port
            except OSError:
                sock.close()
        while self.ports:
            port = self.ports.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                sock.bind((self.host, port))
            except OSError:  # taken by something else on the machine
                sock.close()
                continue
            return stamped(sock), port
        raise RuntimeError("out of RTP ports for the load generator")

    def give_back(self, sock: socket.socket, port: int) -> None:
        self.idle.append((sock, port, time.monotonic()))

    def close(self) -> None:
        for sock, _, _ in self.idle:
            sock.close()
        self.idle.clear()


class Uac:
    """One UDP socket for the SIP of every call; dispatch by Call-ID."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: tuple[str, int],
                 rtp_pool: RtpPool) -> None:
        self.loop, self.target, self.rtp_pool = loop, target, rtp_pool
        self.sock: socket.socket | None = None
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.calls: dict[str, Call] = {}
        self.calls_up = 0
        self.peak_up = 0
        self.rtp_packets = 0
        self.rtp_sent = 0
        self.silent = False  # send no RTP at all (--silent-caller)
        self.placed = 0
        self.stray = 0
        self.stray_rtp = 0  # RTP packets from another address than the call's
        self.bad = 0
        self.read_delays: list[float] = []  # s from a timed packet's arrival to its reading
        # the welcome prompt's first audible 20 ms frames, as Asterisk sends them (the
        # store's u-law file, unchanged), by rank; None: any audible packet counts
        self.first_audio: dict[bytes, int] | None = None

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((self.target[0], 0))
        self.sock = stamped(sock)
        self.local = sock.getsockname()[:2]
        self.loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self.rtp_pool.close()

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(data, self.target)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer loses a datagram; retransmission covers it

    def _readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data, stamp, _source = recv_stamped(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            self.datagram_received(data, stamp)

    def datagram_received(self, data: bytes, stamp: float) -> None:
        if data in (b"\r\n\r\n", b"\r\n"):  # keep-alive
            return
        try:
            msg = parse_message(data)
        except ValueError:
            self.bad += 1
            return
        call = self.calls.get(msg.call_id)
        if call is None:
            self.stray += 1
            if msg.is_request and msg.method not in ("ACK",):
                status = (200, "OK") if msg.method == "OPTIONS" else (
                    481, "Call/Transaction Does Not Exist")
                self.send(build_response(msg, *status, to_tag=secrets.token_hex(4)))
            return
        if msg.is_request:
            call.on_request(msg)
        else:
            call.on_response(msg, stamp)

    def new_call(self) -> Call:
        sock, port = self.rtp_pool.take()
        self.placed += 1
        call = Call(self, self.placed, RtpSocket(self, sock, port))
        self.calls[call.call_id] = call
        return call


# --------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float:
    return stat_cpu_s(f"/proc/{pid}/stat")


def stat_cpu_s(path: str) -> float:
    """utime + stime of a /proc stat file (a process's or one thread's), in seconds."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


# --------------------------------------------------------------------------- steps


@dataclass
class Step:
    rate: float
    results: list[CallResult]
    peak_up: int
    wall_s: float
    cpu_s: dict[str, float]
    lag_ms: float
    launch_late_ms: float
    read_ms: float  # p99 of how late the generator read the timed packets
    server_log: list[str] = field(default_factory=list)
    load: str = ""
    steady: dict[str, float] = field(default_factory=dict)  # CPU s over a mid-step window

    @property
    def attempted(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> list[CallResult]:
        return [r for r in self.results if not r.ok]

    def times(self, what: str) -> list[float]:
        return [v for r in self.results if (v := getattr(r, what)) is not None]

    def p(self, what: str, q: float) -> float:
        return nearest_rank(self.times(what), q)

    @property
    def within(self) -> bool:
        return (not self.failed and self.p("answer_ms", 0.99) <= TARGET_P99_MS
                and self.p("audio_ms", 0.99) <= TARGET_P99_MS)


class LagProbe:
    """Worst lateness of a 10 ms ticker on this event loop (the load generator's own
    delay in reading what arrives)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, (time.perf_counter() - start - 0.01) * 1000)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._tick())

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def place_calls(uac: Uac, rate: float, count: int, hold: float) -> tuple[list[CallResult],
                                                                              float]:
    """``count`` calls, one every 1/rate s; returns their results and the latest start."""
    loop = uac.loop
    start = loop.time() + 0.05
    tasks = []
    late = 0.0
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        late = max(late, loop.time() - due)
        call = uac.new_call()
        tasks.append(loop.create_task(call.run(hold)))
    return list(await asyncio.gather(*tasks)), late * 1000


# --------------------------------------------------------------------------- the run


class Bench:
    """Asterisk, `ivr serve`, and the load generator, for one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ivr-sipcalls-"))
        self.instance: AsteriskInstance | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = self.tmp / "server.log"
        self.welcome: dict[bytes, int] | None = None
        self.log_offset = 0

    def settings(self) -> Settings:
        from ivr.config import load_settings
        from ivr.testing import free_port

        start = random.randrange(20000, 60000 - ASTERISK_RTP_PORTS - UAC_RTP_PORTS, 2)
        return load_settings(environ={}).replace(
            data_dir=self.tmp / "data",
            database_url=f"sqlite:///{self.tmp / 'ivr.sqlite3'}",
            asterisk_instance=f"bench-{os.getpid()}-sip",
            ami_port=free_port(),
            agi_port=free_port(),
            ami_secret=secrets.token_hex(12),
            sip_bind=f"127.0.0.1:{free_port()}",
            rtp_start=start,
            rtp_end=start + ASTERISK_RTP_PORTS - 1,
            access_languages="en",
            **({"agi_max_connections": self.args.agi_max_connections}
               if self.args.agi_max_connections else {}),
        )

    def start_asterisk(self, settings: Settings) -> None:
        from ivr.asterisk import AsteriskInstance, instance_for
        from ivr.prompts import PromptStore, load_catalogue
        from ivr.prompts.build import build

        instance = instance_for(settings)
        instance.test_trunk = True
        self.instance = instance
        instance.start(timeout=90)
        # The prompts: the operator's store copied when set-up made one, then completed
        # offline (as the tests' instances do).
        store = PromptStore.for_instance(instance)
        main = PromptStore.for_instance(AsteriskInstance(
            settings.replace(asterisk_instance="main"), instance.install))
        if main.host_dir.is_dir() and not store.host_dir.exists():
            shutil.copytree(main.host_dir, store.host_dir, symlinks=True)
        build(load_catalogue(), store, progress=False)
        version = store.current("welcome", "en")
        assert version is not None
        base = store.version_base("welcome", "en", version.version)
        self.welcome = audible_frames(base.with_name(base.name + ".ulaw").read_bytes())

    def start_server(self, settings: Settings) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
        for name in ("data_dir", "database_url", "asterisk_instance", "ami_port", "agi_port",
                     "ami_secret", "sip_bind", "rtp_start", "rtp_end", "access_languages",
                     "agi_max_connections"):
            env[f"IVR_{name.upper()}"] = str(getattr(settings, name))
        env["IVR_WEB_BIND"] = ""  # no web console in the bench's server
        log = self.server_log.open("ab")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "ivr.cli", "serve"], cwd=self.tmp, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.server_log.read_text(errors="replace")
            if "FastAGI listening" in text:
                self.log_offset = len(text)
                return
            if self.server.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"`ivr serve` did not start: {self.server_log.read_text()[-2000:]}")

    def new_log_lines(self) -> list[str]:
        """Warnings and errors the server logged since the last call."""
        text = self.server_log.read_text(errors="replace")
        new, self.log_offset = text[self.log_offset:], len(text)
        return [line for line in new.splitlines() if " WARNING " in line or " ERROR " in line]

    def asterisk_channels(self) -> int:
        assert self.instance is not None
        out = self.instance.cli("core show channels count")
        for line in out.splitlines():
            if "active channel" in line:
                return int(line.split()[0])
        return -1

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(40)
            except subprocess.TimeoutExpired:
                self.server.kill()
        if self.instance is not None:
            self.instance.stop()
            if self.args.keep:  # Asterisk's log (timestamps in ms) beside the server's
                with contextlib.suppress(OSError):
                    shutil.copy(self.instance.log_file, self.tmp / "asterisk-messages.log")
            shutil.rmtree(self.instance.host(self.instance.base), ignore_errors=True)
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def run_steps(bench: Bench, target: tuple[str, int], rates: Iterable[float],
                    args: argparse.Namespace, report: Callable[[Step], None]) -> list[Step]:
    assert bench.instance is not None and bench.server is not None
    loop = asyncio.get_running_loop()
    first = bench.instance.settings.rtp_end + 1
    uac = Uac(loop, target, RtpPool(target[0], first, UAC_RTP_PORTS))
    uac.silent = args.silent_caller
    uac.first_audio = bench.welcome
    await uac.open()
    probe = LagProbe()
    probe.start()
    steps: list[Step] = []
    asterisk_pid = bench.instance.pid() or 0
    server_pid = bench.server.pid
    try:
        if args.warmup:
            warm, _ = await place_calls(uac, 2.0, args.warmup, 1.0)
            bad = [r.reason for r in warm if not r.ok]
            if bad:
                raise RuntimeError(f"warm-up calls failed: {bad[:3]}; server log: "
                                   f"{bench.new_log_lines()[-5:]}")
            await settle(bench)
            bench.new_log_lines()
        for rate in rates:
            count = max(1, round(rate * args.duration))
            uac.peak_up = 0
            uac.read_delays = []
            probe.take()
            pids = (asterisk_pid, server_pid)
            cpu0 = cpu_sample(*pids)
            # the steady state: from when the first calls end (the number of calls up
            # stops growing) to the last call placed
            window = (args.hold + 2.0, args.duration)
            sampler = (asyncio.ensure_future(cpu_window(pids, *window))
                       if window[1] - window[0] >= 4 else None)
            results, late = await place_calls(uac, rate, count, args.hold)
            cpu = cpu_since(cpu0, *pids)
            step = Step(rate, results, uac.peak_up, cpu.pop("wall"), cpu, probe.take(), late,
                        nearest_rank(uac.read_delays, 0.99) * 1000, load=loadavg(),
                        steady=await sampler if sampler else {})
            left = await settle(bench)
            step.server_log = bench.new_log_lines()
            if left:
                step.server_log.append(f"(Asterisk still had {left} channel(s) 15 s after)")
            steps.append(step)
            report(step)
            if not step.within:
                break
            await asyncio.sleep(2)
    finally:
        probe.stop()
        uac.close()
    return steps


def cpu_sample(asterisk_pid: int, server_pid: int) -> dict[str, float]:
    return {"asterisk": proc_cpu_s(asterisk_pid), "server": proc_cpu_s(server_pid),
            "uac": self_cpu_s(), "machine": machine_busy_s(), "wall": time.perf_counter()}


def cpu_since(before: dict[str, float], asterisk_pid: int, server_pid: int) -> dict[str, float]:
    now = cpu_sample(asterisk_pid, server_pid)
    return {k: now[k] - before[k] for k in now}


async def cpu_window(pids: tuple[int, int], start: float, end: float) -> dict[str, float]:
    """CPU seconds spent from ``start`` to ``end`` seconds from now."""
    await asyncio.sleep(start)
    before = cpu_sample(*pids)
    await asyncio.sleep(end - start)
    return cpu_since(before, *pids)


async def settle(bench: Bench, timeout: float = 15) -> int:
    """Wait until Asterisk has no channel left; the number left at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = await asyncio.to_thread(bench.asterisk_channels)
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- report


def header_lines(args: argparse.Namespace, bench: Bench) -> list[str]:
    assert bench.instance is not None
    version = bench.instance.install.version()
    return [
        f"sipcalls: {os.cpu_count()} CPUs shared by Asterisk, `ivr serve` and this load "
        f"generator; Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}; {version}",
        f"each call: INVITE sip:100@ (the access line) over UDP on loopback, PCMU; first "
        f"prompt audio (the welcome), then {args.hold:g} s held, then BYE; {args.duration:g} "
        f"s per step at a steady rate; {args.warmup} warm-up calls first; the caller "
        + ("sends no RTP (--silent-caller)" if args.silent_caller else
           "sends PCMU silence every 20 ms from the 200 OK until the first audio"),
        f"`ivr serve`: SQLite in {bench.tmp}, AMI connected, agi_max_connections "
        f"{bench.instance.settings.agi_max_connections}; load average at start: {loadavg()}",
        "ms: p50/p99 by nearest rank from the first INVITE sent; up: peak of calls answered "
        "and not yet hung up; CPU ms per call (placed in the step) of Asterisk (ast), the "
        "server (srv), this generator (uac); mach: the machine's busy CPU over the step, % of "
        "one CPU (others' work included); rd99: p99 of how late the generator read the "
        "timed packets (the times are the kernel's receive times, so this is not in them); "
        "lag: the generator's worst event-loop delay",
        "",
        f"{'rate/s':>7}{'calls':>6}{'ok':>6}{'fail':>5}{'200 p50':>9}{'p99':>7}"
        f"{'audio p50':>10}{'p99':>7}{'up':>5}{'ast':>6}{'srv':>6}{'uac':>6}{'mach%':>7}"
        f"{'rd99':>6}{'lag':>6}  load",
    ]


def step_line(step: Step) -> str:
    n = max(1, step.attempted)
    cpu = {k: v * 1000 / n for k, v in step.cpu_s.items()}
    return (f"{step.rate:>7g}{step.attempted:>6}{step.attempted - len(step.failed):>6}"
            f"{len(step.failed):>5}{step.p('answer_ms', 0.5):>9.1f}"
            f"{step.p('answer_ms', 0.99):>7.1f}{step.p('audio_ms', 0.5):>10.1f}"
            f"{step.p('audio_ms', 0.99):>7.1f}{step.peak_up:>5}{cpu['asterisk']:>6.1f}"
            f"{cpu['server']:>6.1f}{cpu['uac']:>6.1f}"
            f"{step.cpu_s['machine'] / step.wall_s * 100:>7.0f}{step.read_ms:>6.1f}"
            f"{step.lag_ms:>6.0f}  "
            f"{step.load}")


def step_notes(step: Step) -> list[str]:
    notes = []
    if step.failed:
        reasons = collections.Counter(r.reason for r in step.failed)
        notes.append("    failed: " + "; ".join(f"{n} x {why}" for why, n in
                                                 reasons.most_common()))
    missed = [r.missed for r in step.results if r.missed]
    if missed:
        notes.append(f"    {len(missed)} call(s) did not receive the welcome's first packet(s) "
                     f"(first received: its audible packet {min(missed) + 1}-{max(missed) + 1})")
    retried = sum(1 for r in step.results if r.invite_sends > 1)
    if retried:
        notes.append(f"    {retried} INVITE(s) retransmitted (no 100 Trying within 500 ms)")
    if step.launch_late_ms > 50:
        notes.append(f"    the generator started a call up to {step.launch_late_ms:.0f} ms late")
    if step.steady:
        wall = step.steady["wall"]
        share = {k: v / wall * 100 for k, v in step.steady.items() if k != "wall"}
        others = max(0.0, share["machine"] - share["asterisk"] - share["server"] - share["uac"])
        notes.append(f"    steady state ({wall:.0f} s): Asterisk {share['asterisk']:.0f}%, "
                     f"server {share['server']:.0f}%, generator {share['uac']:.0f}%, "
                     f"machine {share['machine']:.0f}% of one CPU (both: 200%; other work "
                     f"{others:.0f}%)")
    if step.server_log:
        notes.append(f"    server warnings/errors: {len(step.server_log)}, e.g. "
                     f"{step.server_log[0][:160]}")
    return notes


def summary(steps: list[Step]) -> list[str]:
    passed = [s for s in steps if s.within]
    if not passed:
        return ["no step was within the target (zero failed calls, p99 <= 200 ms)"]
    best = max(passed, key=lambda s: s.rate)
    stop = next((s for s in steps if not s.within), None)
    lines = [f"highest sustained rate: {best.rate:g} calls/s with zero failed calls, "
             f"p99 INVITE->200 {best.p('answer_ms', 0.99):.1f} ms, INVITE->audio "
             f"{best.p('audio_ms', 0.99):.1f} ms; {best.peak_up} concurrent calls held"]
    if stop is None:
        lines.append("(every rate asked for was within the target: add higher --rates)")
    else:
        why = []
        if stop.failed:
            why.append(f"{len(stop.failed)} failed call(s)")
        for what, name in (("answer_ms", "INVITE->200"), ("audio_ms", "INVITE->audio")):
            if stop.p(what, 0.99) > TARGET_P99_MS:
                why.append(f"p99 {name} {stop.p(what, 0.99):.1f} ms")
        lines.append(f"stopped at {stop.rate:g} calls/s: {', '.join(why)}")
    return lines


def write_calls(path: Path, steps: list[Step]) -> None:
    import csv

    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["rate", "caller", "invite_sent", "answer_ms", "audio_ms", "ok", "reason"])
        for step in steps:
            for r in step.results:
                out.writerow([f"{step.rate:g}", r.caller, f"{r.sent:.6f}",
                              "" if r.answer_ms is None else f"{r.answer_ms:.3f}",
                              "" if r.audio_ms is None else f"{r.audio_ms:.3f}",
                              int(r.ok), r.reason])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2,5,10,20,30,40,50,60,80,100",
                        help="new calls per second of each step, in order (comma-separated)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    parser.add_argument("--hold", type=float, default=4.0,
                        help="seconds each call stays up after its first prompt audio")
    parser.add_argument("--warmup", type=int, default=10, help="calls before the first step")
    parser.add_argument("--agi-max-connections", type=int, default=0,
                        help="the server's agi_max_connections (default: the setting's)")
    parser.add_argument("--silent-caller", action="store_true",
                        help="send no RTP (Asterisk's answer then waits 500 ms for media)")
    parser.add_argument("--calls-csv", metavar="PATH",
                        help="write every call (step, caller, INVITE sent, ms, reason) to PATH")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (server log, Asterisk's log, "
                        "database)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    bench = Bench(args)
    try:
        settings = bench.settings()
        bench.start_asterisk(settings)
        bench.start_server(settings)
        for line in header_lines(args, bench):
            print(line, flush=True)
        host, _, port = settings.sip_bind.rpartition(":")

        def report(step: Step) -> None:
            print(step_line(step), flush=True)
            for note in step_notes(step):
                print(note, flush=True)

        steps = asyncio.run(run_steps(bench, (host, int(port)), rates, args, report))
        if args.calls_csv:
            write_calls(Path(args.calls_csv), steps)
        print()
        for line in summary(steps):
            print(line)
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
