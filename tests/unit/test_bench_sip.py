"""The SIP load generator of bench/sipcalls.py: its messages, its SDP and RTP handling,
and whole calls against a scripted peer on loopback (no Asterisk)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sipcalls.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sipcalls", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sip = _load()

OK_200 = (
    "SIP/2.0 200 OK\r\n"
    "v: SIP/2.0/UDP 127.0.0.1:5070;rport=5070;received=127.0.0.1;branch=z9hG4bKabc\r\n"
    "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKother\r\n"
    "f: <sip:15550000001@127.0.0.1>;tag=fromtag\r\n"
    "t: <sip:100@127.0.0.1:5080>;tag=totag\r\n"
    "i: abc@bench\r\n"
    "CSeq: 1 INVITE\r\n"
    "m: <sip:127.0.0.1:5080>\r\n"
    "Allow: INVITE,\r\n ACK, BYE\r\n"
    "c: application/sdp\r\n"
    "l: 5\r\n"
    "\r\n"
    "v=0\r\nextra bytes past the length"
)


def test_an_invite_is_built_with_its_transaction_and_dialog_headers():
    body = sip.sdp_offer("127.0.0.1", 40000, 7)
    data = sip.build_request(
        "INVITE", "sip:100@127.0.0.1:5080", via="127.0.0.1:5070", branch="z9hG4bK1",
        from_="<sip:1555@127.0.0.1>;tag=ft", to="<sip:100@127.0.0.1:5080>",
        call_id="c1@bench", cseq=1, contact="<sip:1555@127.0.0.1:5070>", body=body)
    msg = sip.parse_message(data)
    assert msg.is_request and msg.method == "INVITE"
    assert msg.start == "INVITE sip:100@127.0.0.1:5080 SIP/2.0"
    assert msg.get("via") == "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK1"
    assert msg.branch == "z9hG4bK1" and msg.cseq == (1, "INVITE")
    assert sip.param(msg.get("from"), "tag") == "ft"
    assert sip.param(msg.get("to"), "tag") is None
    assert msg.get("max-forwards") == "70"
    assert msg.get("content-type") == "application/sdp"
    assert int(msg.get("content-length")) == len(body) and msg.body == body
    assert data.count(b"\r\n\r\n") == 1 and data.endswith(body)


def test_an_ack_for_a_2xx_names_invite_cseq_and_has_no_body():
    data = sip.build_request(
        "ACK", "sip:127.0.0.1:5080", via="127.0.0.1:5070", branch="z9hG4bK2",
        from_="<sip:a@h>;tag=1", to="<sip:b@h>;tag=2", call_id="x", cseq=1)
    msg = sip.parse_message(data)
    assert msg.cseq == (1, "ACK") and msg.get("content-length") == "0" and msg.body == b""
    assert msg.get("contact") is None and msg.get("allow") is None


def test_a_response_with_compact_and_folded_headers_is_parsed():
    msg = sip.parse_message(OK_200.encode())
    assert not msg.is_request and msg.status == 200 and msg.reason == "OK"
    assert msg.method == "INVITE" and msg.call_id == "abc@bench"
    assert msg.branch == "z9hG4bKabc"  # the top Via's, not the second one's
    assert len(msg.get_all("via")) == 2
    assert sip.param(msg.get("to"), "tag") == "totag"
    assert sip.uri_of(msg.get("contact")) == "sip:127.0.0.1:5080"
    assert msg.get("allow") == "INVITE, ACK, BYE"
    assert msg.body == b"v=0\r\n"  # Content-Length, not the datagram's end


def test_a_tag_inside_the_uri_is_not_the_header_tag():
    header = "<sip:100@h;tag=inside>;tag=outside"
    assert sip.param(header, "tag") == "outside"
    assert sip.param("<sip:100@h;tag=inside>", "tag") is None
    assert sip.uri_of("sip:100@h;tag=x") == "sip:100@h"


@pytest.mark.parametrize("data", [b"", b"hello world\r\n\r\n", b"\x80\x00rtp"])
def test_what_is_not_sip_is_refused(data):
    with pytest.raises(ValueError):
        sip.parse_message(data)


def test_a_response_copies_the_request_and_adds_a_missing_to_tag():
    bye = sip.parse_message(
        b"BYE sip:1555@127.0.0.1:5070 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKa\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKb\r\n"
        b"From: <sip:100@127.0.0.1>;tag=ast\r\nTo: <sip:1555@127.0.0.1>;tag=ours\r\n"
        b"Call-ID: k@bench\r\nCSeq: 102 BYE\r\nContent-Length: 0\r\n\r\n")
    reply = sip.parse_message(sip.build_response(bye, 200, "OK", to_tag="new"))
    assert reply.status == 200 and reply.cseq == (102, "BYE") and reply.call_id == "k@bench"
    assert reply.get_all("via") == bye.get_all("via")
    assert reply.get("from") == bye.get("from")
    assert reply.get("to") == "<sip:1555@127.0.0.1>;tag=ours"  # kept, not doubled
    options = sip.parse_message(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKc"
                                b"\r\nTo: <sip:x@h>\r\nCSeq: 1 OPTIONS\r\n\r\n")
    tagged = sip.parse_message(sip.build_response(options, 200, "OK", to_tag="new"))
    assert sip.param(tagged.get("to"), "tag") == "new"


def test_the_sdp_offer_and_answer():
    offer = sip.sdp_offer("127.0.0.1", 40002, 99).decode()
    assert "m=audio 40002 RTP/AVP 0 101\r\n" in offer
    assert "a=rtpmap:0 PCMU/8000" in offer and "a=rtpmap:101 telephone-event/8000" in offer
    assert "c=IN IP4 127.0.0.1" in offer
    answer = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Asterisk\r\nc=IN IP4 127.0.0.9\r\n"
              b"t=0 0\r\nm=audio 31234 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n")
    assert sip.sdp_media(answer) == ("127.0.0.9", 31234, [0, 101])
    assert sip.sdp_media(b"v=0\r\n") == ("", 0, [])


def rtp(payload: bytes, *, pt: int = 0, csrc: int = 0, extension: bytes = b"",
        padding: int = 0) -> bytes:
    first = 0x80 | csrc | (0x10 if extension else 0) | (0x20 if padding else 0)
    head = bytes([first, pt]) + b"\x00\x01" + b"\x00" * 8 + b"\x00\x00\x00\x01" * csrc
    if extension:
        head += b"\xbe\xde" + (len(extension) // 4).to_bytes(2, "big") + extension
    pad = (b"\x00" * (padding - 1) + bytes([padding])) if padding else b""
    return head + payload + pad


def test_rtp_payloads_are_found_past_csrc_extension_and_padding():
    speech = bytes(range(0x20, 0x20 + 160))
    assert sip.rtp_payload(rtp(speech)) == (0, speech)
    assert sip.rtp_payload(rtp(speech, csrc=2, extension=b"\x01\x02\x03\x04",
                               padding=4)) == (0, speech)
    assert sip.rtp_payload(rtp(b"\x01", pt=101)) == (101, b"\x01")
    assert sip.rtp_payload(b"\x81\xc8" + b"\x00" * 26) is None  # RTCP sender report
    assert sip.rtp_payload(b"\x00" * 20) is None  # not version 2
    assert sip.rtp_payload(b"\x80\x00") is None


def test_prompt_audio_is_told_from_silence():
    assert not sip.is_prompt_audio(b"\xff" * 160)
    assert not sip.is_prompt_audio(b"\x7f\xff\xfe\x7e" * 40)  # zero and the lowest levels
    assert sip.is_prompt_audio(bytes(range(0x20, 0x20 + 160)))  # loud samples
    assert not sip.is_prompt_audio(b"\x20" * 40 + b"\xff" * 120)  # mostly silent
    assert not sip.is_prompt_audio(b"\x20" * 40)  # too short to be 10 ms


def test_the_expected_first_packets_are_the_audible_frames_of_the_prompt():
    quiet, loud, louder = b"\xff" * 160, bytes(range(0x20, 0x20 + 160)), b"\x01" * 160
    frames = sip.audible_frames(quiet * 3 + loud + quiet + louder + loud + quiet)
    assert frames == {loud: 0, louder: 1}
    assert sip.audible_frames(loud + louder, count=1) == {loud: 0}
    with pytest.raises(ValueError):
        sip.audible_frames(quiet * 4)


# --------------------------------------------------------------------------- whole calls


class Peer(asyncio.DatagramProtocol):
    """A scripted SIP peer on loopback: ``script`` answers each request it gets."""

    def __init__(self, script: Callable[[Peer, object, tuple[str, int]], None]) -> None:
        self.script = script
        self.got: list[object] = []
        self.changed = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        msg = sip.parse_message(data)
        self.got.append(msg)
        self.changed.set()
        self.script(self, msg, addr)

    def send(self, data: bytes, addr) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def requests(self, method: str) -> list:
        return [m for m in self.got if m.is_request and m.method == method]

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        async def wait():
            while not predicate():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


def answer(peer: Peer, invite, addr, status: int = 200, reason: str = "OK") -> None:
    """A final response from the peer with an SDP (200) and its Contact."""
    base = sip.build_response(invite, status, reason, to_tag="astag").decode()
    head = base.split("\r\n\r\n")[0].replace("\r\nContent-Length: 0", "")
    body = (b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio " + str(peer.rtp_port).encode()
            + b" RTP/AVP 0\r\n") if status == 200 else b""
    head += f"\r\nContact: <sip:127.0.0.1:{peer.port}>\r\nContent-Length: {len(body)}"
    peer.send(head.encode() + b"\r\n\r\n" + body, addr)


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable]:
    made: list[tuple[Peer, asyncio.DatagramTransport]] = []
    loop = asyncio.get_running_loop()

    async def make(script) -> tuple[Peer, object]:
        peer = Peer(script)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: peer, local_addr=("127.0.0.1", 0))
        # the peer's RTP socket: sends prompt audio once the caller's RTP arrives
        media = RtpPeer()
        rtp_transport, _ = await loop.create_datagram_endpoint(
            lambda: media, local_addr=("127.0.0.1", 0))
        peer.rtp_port = rtp_transport.get_extra_info("sockname")[1]
        peer.media = media
        uac = sip.Uac(loop, ("127.0.0.1", peer.port), sip.RtpPool("127.0.0.1", 0, 0))
        uac.rtp_pool = LoopbackPool()
        await uac.open()
        made.append((peer, transport))
        made.append((media, rtp_transport))
        made.append((uac, None))
        return peer, uac

    yield make
    for thing, transport in made:
        if transport is not None:
            transport.close()
        else:
            thing.close()


class RtpPeer(asyncio.DatagramProtocol):
    """Answers the caller's first RTP packet with one packet of loud PCMU."""

    def __init__(self) -> None:
        self.received = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.received += 1
        if self.received == 1:
            self.transport.sendto(rtp(bytes(range(0x20, 0x20 + 160))), addr)


class LoopbackPool:
    """Any free port (the bench's own range is for a real run)."""

    def __init__(self) -> None:
        import socket

        self.socket = socket
        self.open: list = []

    def take(self):
        sock = self.socket.socket(self.socket.AF_INET, self.socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sip.stamped(sock)
        self.open.append(sock)
        return sock, sock.getsockname()[1]

    def give_back(self, sock, port) -> None:
        pass

    def close(self) -> None:
        for sock in self.open:
            sock.close()


async def test_a_call_is_answered_acked_heard_and_hung_up(peer_factory):
    def script(peer, msg, addr):
        if msg.method == "INVITE":
            peer.send(sip.build_response(msg, 100, "Trying"), addr)
            answer(peer, msg, addr)
            answer(peer, msg, addr)  # a retransmitted 200: ACKed again
        elif msg.method == "BYE":
            peer.send(sip.build_response(msg, 200, "OK"), addr)

    peer, uac = await peer_factory(script)
    result = await uac.new_call().run(0.0)
    assert result.ok, result.reason
    assert 0 < result.answer_ms <= result.audio_ms < 5000  # kernel receive times
    assert result.invite_sends == 1
    (invite,) = peer.requests("INVITE")
    await peer.wait_for(lambda: len(peer.requests("ACK")) == 2)
    acks, (bye,) = peer.requests("ACK"), peer.requests("BYE")
    for ack in acks:  # a 2xx ACK: its own transaction, to the Contact, with the To tag
        assert ack.start == f"ACK sip:127.0.0.1:{peer.port} SIP/2.0"
        assert ack.cseq == (1, "ACK") and ack.branch != invite.branch
        assert sip.param(ack.get("to"), "tag") == "astag"
    assert bye.start == f"BYE sip:127.0.0.1:{peer.port} SIP/2.0"
    assert bye.cseq == (2, "BYE") and bye.branch not in {invite.branch, acks[0].branch}
    assert bye.call_id == invite.call_id and bye.get("from") == invite.get("from")
    assert sip.param(bye.get("to"), "tag") == "astag"
    assert peer.media.received >= 1  # the caller's silence reached the peer's RTP port
    assert uac.calls_up == 0 and uac.peak_up == 1


async def test_an_unanswered_invite_is_sent_again_after_t1(peer_factory):
    def script(peer, msg, addr):
        if msg.method == "INVITE" and len(peer.requests("INVITE")) == 2:
            answer(peer, msg, addr)
        elif msg.method == "BYE":
            peer.send(sip.build_response(msg, 200, "OK"), addr)

    peer, uac = await peer_factory(script)
    result = await uac.new_call().run(0.0)
    assert result.ok, result.reason
    assert result.invite_sends == 2
    first, second = peer.requests("INVITE")
    assert first.branch == second.branch and first.cseq == second.cseq == (1, "INVITE")
    assert result.answer_ms >= sip.T1 * 1000


async def test_a_refused_call_fails_and_its_final_answer_is_acked(peer_factory):
    def script(peer, msg, addr):
        if msg.method == "INVITE":
            answer(peer, msg, addr, 404, "Not Found")

    peer, uac = await peer_factory(script)
    result = await uac.new_call().run(0.0)
    assert not result.ok and result.reason == "404 Not Found"
    await peer.wait_for(lambda: peer.requests("ACK"))
    (invite,), (ack,) = peer.requests("INVITE"), peer.requests("ACK")
    # the ACK of a non-2xx belongs to the INVITE transaction: same branch and R-URI
    assert ack.branch == invite.branch and ack.start == invite.start.replace("INVITE", "ACK")
    assert sip.param(ack.get("to"), "tag") == "astag"
    assert not peer.requests("BYE")


async def test_a_bye_from_the_peer_during_the_hold_fails_the_call(peer_factory):
    def script(peer, msg, addr):
        if msg.method == "INVITE":
            answer(peer, msg, addr)
        elif msg.method == "ACK":
            bye = sip.build_request(
                "BYE", sip.uri_of(peer.requests("INVITE")[0].get("contact")),
                via=f"127.0.0.1:{peer.port}", branch=sip.new_branch(),
                from_=msg.get("to"), to=msg.get("from"), call_id=msg.call_id, cseq=5)
            peer.send(bye, addr)

    peer, uac = await peer_factory(script)
    result = await uac.new_call().run(30.0)  # ends at the peer's BYE, not after 30 s
    assert not result.ok and result.reason == "hung up by Asterisk during the hold"
    await peer.wait_for(lambda: any(not m.is_request for m in peer.got))
    (reply,) = [m for m in peer.got if not m.is_request]
    assert reply.status == 200 and reply.cseq == (5, "BYE")
    assert not peer.requests("BYE")  # nobody hangs up twice


async def test_a_call_whose_first_audio_is_another_prompt_fails(peer_factory):
    def script(peer, msg, addr):
        if msg.method == "INVITE":
            answer(peer, msg, addr)
        elif msg.method == "BYE":
            peer.send(sip.build_response(msg, 200, "OK"), addr)

    peer, uac = await peer_factory(script)
    uac.first_audio = {b"\x30" * 160: 0}  # the welcome starts otherwise than what is played
    result = await uac.new_call().run(0.0)
    assert not result.ok and result.reason == "the first audio is not the welcome prompt"
    assert result.audio_ms is None and result.answer_ms is not None
    await peer.wait_for(lambda: peer.requests("BYE"))  # hung up all the same


async def test_a_lost_first_packet_of_the_welcome_is_counted_not_failed(peer_factory):
    def script(peer, msg, addr):
        if msg.method == "INVITE":
            answer(peer, msg, addr)
        elif msg.method == "BYE":
            peer.send(sip.build_response(msg, 200, "OK"), addr)

    peer, uac = await peer_factory(script)
    uac.first_audio = {b"\x30" * 160: 0, bytes(range(0x20, 0x20 + 160)): 1}
    result = await uac.new_call().run(0.0)
    assert result.ok, result.reason
    assert result.missed == 1 and result.audio_ms is not None


async def test_rtp_from_another_address_than_the_answers_is_ignored(peer_factory):
    import socket

    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stray.bind(("127.0.0.1", 0))
    welcome = bytes(range(0x20, 0x20 + 160))

    def script(peer, msg, addr):
        if msg.method == "INVITE":
            # a late packet of an earlier call, from that call's port, before the answer
            _, rtp_port, _ = sip.sdp_media(msg.body)
            stray.sendto(rtp(b"\x30" * 160), ("127.0.0.1", rtp_port))
            answer(peer, msg, addr)
        elif msg.method == "BYE":
            peer.send(sip.build_response(msg, 200, "OK"), addr)

    peer, uac = await peer_factory(script)
    uac.first_audio = {welcome: 0}
    try:
        result = await uac.new_call().run(0.0)
    finally:
        stray.close()
    assert result.ok, result.reason
    assert result.missed == 0 and uac.stray_rtp == 1
