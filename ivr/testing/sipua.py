"""A real SIP user agent for tests: one baresip process, driven over its ctrl_tcp socket.

The UA calls the IVR the way a phone or a carrier does (SIP over UDP, G.711 RTP, RFC 4733
DTMF), plays a known WAV as its microphone and writes what it hears to a WAV file, so a
test can check the audio a caller really got, not only which AGI commands ran.

Each :class:`SipUA` is its own baresip with its own config directory (nothing is read from
``~/.baresip``), listening for SIP and for control on loopback ports of its own.
ctrl_tcp speaks netstrings (``<length>:<payload>,``) of JSON: commands carry a token and
are answered with ``{"response": true, "token": ...}``; call progress arrives as
``{"event": true, "type": "CALL_ESTABLISHED", ...}``.

Recording what was heard: Debian 12's baresip 1.0 has no aufile *player* (its aufile
module is a source only; writing the heard audio to a WAV came with a later version). Its
``sndfile`` audio filter does the job: it dumps each call's decoded (heard) and encoded
(sent) audio to ``dump-<time>-dec.wav`` / ``-enc.wav`` in ``snd_path``. Filters need a
player at the end of the chain, so the player is an ``aubridge`` device nobody reads.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import time
import uuid
import warnings
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import free_port

BARESIP_MODULES = "/usr/lib/baresip/modules"
# Audio: G.711, a WAV file as microphone (aufile), a player that goes nowhere (aubridge)
# and the filter that writes what was heard and sent to WAV files (sndfile). Control:
# accounts, the command set (dial, sndcode, hangup) and the TCP socket the test talks to.
AUDIO_MODULES = ("g711.so", "aufile.so", "aubridge.so", "sndfile.so")
APP_MODULES = ("account.so", "menu.so", "ctrl_tcp.so")


class SipUAError(RuntimeError):
    """baresip could not be started or did not answer."""


def make_tone_wav(path: Path, seconds: float = 120, freq: int = 440,
                  volume: float = 0.2) -> Path:
    """An 8 kHz mono 16-bit WAV of a soft tone (a microphone with known audio). baresip
    1.0's aufile source plays 8 kHz files only at 8 kHz, the rate of G.711."""
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(path),
         "synth", str(seconds), "sine", str(freq), "vol", str(volume)],
        check=True, capture_output=True, timeout=60,
    )
    return path


def netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


async def read_netstring(reader: asyncio.StreamReader) -> bytes:
    """One netstring's payload; IncompleteReadError at end of stream."""
    head = await reader.readuntil(b":")
    length = int(head[:-1])
    body = await reader.readexactly(length + 1)
    if body[-1:] != b",":
        raise SipUAError(f"ctrl_tcp: bad netstring end {body[-1:]!r}")
    return body[:-1]


class SipUA:
    """One baresip user agent. Use ``async with SipUA(dir) as ua:`` (or start/stop)."""

    def __init__(
        self,
        workdir: Path,
        *,
        source_wav: Path | None = None,
        user: str = "tester",
        codecs: str = "PCMU",
        rtp_ports: tuple[int, int] | None = None,
        baresip: str = "baresip",
        listen_host: str = "127.0.0.1",
        domain: str | None = None,
        password: str | None = None,
        auto_answer: bool = False,
        register: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.source_wav = source_wav
        self.user = user
        self.codecs = codecs
        self.rtp_ports = rtp_ports
        self.baresip = baresip
        # A phone account: its address (another loopback address than the test trunk's
        # 127.0.0.1), the domain of its address of record, and its digest password.
        self.listen_host = listen_host
        self.domain = domain
        self.password = password
        # A carrier's side: answer every incoming call at once (baresip's answermode).
        self.auto_answer = auto_answer
        # A phone that registers to its domain (the registrar) on start, as a softphone
        # does (before the control socket is open: check the registrar's side).
        self.register = register
        self.sip_port = 0
        self.ctrl_port = 0
        self.aor = ""
        self.dump_dir = self.workdir / "dump"
        self.events: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ set-up

    def write_config(self) -> None:
        """The config directory baresip is started with (-f): config and accounts."""
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        if self.source_wav is None:
            self.source_wav = make_tone_wav(self.workdir / "mic.wav")
        self.sip_port = self.sip_port or free_port()
        self.ctrl_port = self.ctrl_port or free_port()
        lines = [
            "poll_method epoll",
            f"sip_listen {self.listen_host}:{self.sip_port}",
            f"audio_source aufile,{self.source_wav}",
            "audio_player aubridge,speaker",
            f"snd_path {self.dump_dir}",
            "audio_alert aubridge,alert",  # no ring tones to a sound card (there is none)
            "ausrc_srate 8000",
            "auplay_srate 8000",
            "ausrc_channels 1",
            "auplay_channels 1",
            "audio_buffer 20-160",
            f"module_path {BARESIP_MODULES}",
            *(f"module {m}" for m in AUDIO_MODULES),
            *(f"module_app {m}" for m in APP_MODULES),
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "sip_trans_def udp",
        ]
        if self.rtp_ports:
            lines.append(f"rtp_ports {self.rtp_ports[0]}-{self.rtp_ports[1]}")
        (self.workdir / "config").write_text("\n".join(lines) + "\n")
        domain = self.domain or f"{self.listen_host}:{self.sip_port}"
        self.aor = f"sip:{self.user}@{domain}"
        auth = f";auth_pass={self.password}" if self.password else ""
        answer = ";answermode=auto" if self.auto_answer else ""
        regint = 600 if self.register else 0
        (self.workdir / "accounts").write_text(
            f"<{self.aor}>{auth};regint={regint};audio_codecs={self.codecs}"
            f"{answer}\n"
        )
        (self.workdir / "contacts").write_text("")

    async def start(self, timeout: float = 15, attempts: int = 3) -> None:
        """Start baresip and connect to its control socket. A port found free can be
        taken by another process before baresip binds it: baresip then exits, or runs
        with its control socket refused while the test's connection reaches whatever
        else listens there (another UA: driving it would steal that UA's control).
        So the connection is checked to be this UA's (its account answers ``reginfo``)
        and, if not, baresip is started again on other ports."""
        if shutil.which(self.baresip) is None:
            raise SipUAError(f"{self.baresip} not found (scripts/setup installs baresip)")
        for attempt in range(attempts):
            if attempt:
                self.sip_port = self.ctrl_port = 0  # write_config picks new ones
                self.events.clear()
            self.write_config()
            if await self._start_once(timeout):
                return
        raise SipUAError(f"baresip did not start on ports of its own: {self.log_tail()}")

    async def _start_once(self, timeout: float) -> bool:
        # baresip writes its log (and a status line per call) to stdout: into a file
        log = (self.workdir / "baresip.log").open("wb")
        process = self._process = await asyncio.create_subprocess_exec(
            self.baresip, "-f", str(self.workdir),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
                break
            except OSError:
                if process.returncode is not None or loop.time() > deadline:
                    await self._kill()
                    return False
                await asyncio.sleep(0.1)
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader))
        try:
            reply = await self._send("reginfo")
            if self.aor in str(reply.get("data", "")) and process.returncode is None:
                return True
        except (SipUAError, TimeoutError, ConnectionError):
            pass
        await self._kill()  # not ours: no "quit" down that socket
        return False

    async def _kill(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
            self._reader_task = None

    async def stop(self) -> None:
        """Quit baresip (it finishes the recording's WAV header), killing it if it hangs."""
        process, self._process = self._process, None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send("quit"), 2)
            self._writer.close()
            self._writer = None
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task

    async def __aenter__(self) -> SipUA:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / "baresip.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def recording(self) -> Path:
        """The WAV of what the UA heard in its last call (8 kHz mono for G.711)."""
        return self._dump("dec")

    @property
    def sent_recording(self) -> Path:
        """The WAV of what the UA sent in its last call (its microphone)."""
        return self._dump("enc")

    def _dump(self, kind: str) -> Path:
        found = sorted(self.dump_dir.glob(f"dump-*-{kind}.wav"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SipUAError(f"no {kind} recording in {self.dump_dir}: {self.log_tail(10)}")
        return found[-1]

    # ------------------------------------------------------------------ control

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                payload = await read_netstring(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            if message.get("response"):
                future = self._replies.pop(str(message.get("token", "")), None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("event"):
                message["at"] = time.monotonic()  # when it arrived (time.monotonic)
                self.events.append(message)
                async with self._changed:
                    self._changed.notify_all()

    async def _send(self, command: str, params: str = "", timeout: float = 5) -> dict[str, Any]:
        if self._writer is None:
            raise SipUAError("baresip is not running")
        token = uuid.uuid4().hex[:12]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[token] = future
        body = {"command": command, "params": params, "token": token}
        self._writer.write(netstring(json.dumps(body).encode()))
        await self._writer.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(token, None)

    async def dial(self, uri: str) -> None:
        """Place a call (one at a time per UA)."""
        await self._send("dial", uri)

    async def send_dtmf(self, digits: str, gap: float = 0.25) -> None:
        """Type keys: one sndcode per key, sent as RFC 4733 telephone-events."""
        for digit in digits:
            await self._send("sndcode", digit)
            await asyncio.sleep(gap)

    async def hangup(self) -> None:
        await self._send("hangup")

    async def wait_event(
        self, kinds: str | tuple[str, ...], timeout: float = 15,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The first event (seen so far or to come) of one of these types."""
        wanted = (kinds,) if isinstance(kinds, str) else kinds

        def find() -> dict[str, Any] | None:
            for event in self.events:
                if event.get("type") in wanted and (where is None or where(event)):
                    return event
            return None

        async def wait() -> dict[str, Any]:
            async with self._changed:
                while (event := find()) is None:
                    await self._changed.wait()
                return event

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            seen = [e.get("type") for e in self.events]
            raise SipUAError(f"no {wanted} event in {timeout}s; seen {seen}") from None

    async def wait_established(self, timeout: float = 15) -> dict[str, Any]:
        return await self.wait_event("CALL_ESTABLISHED", timeout)

    async def wait_closed(self, timeout: float = 30) -> str:
        """Wait for the call to end; returns baresip's reason (e.g. ``404 Not Found``)."""
        event = await self.wait_event("CALL_CLOSED", timeout)
        return str(event.get("param", ""))


# ---------------------------------------------------------------------- audio checks


def read_pcm16(path: Path) -> bytes:
    """Samples of a 16-bit mono 8 kHz WAV, or of a raw G.711 u-law file (``.ulaw``, as
    Asterisk stores prompts), as 16-bit linear bytes."""
    path = Path(path)
    if path.suffix in (".ulaw", ".pcm", ".mu"):
        return bytes(_audioop().ulaw2lin(path.read_bytes(), 2))
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != 8000:
            raise ValueError(f"{path}: not 16-bit mono 8 kHz "
                             f"({w.getsampwidth()}, {w.getnchannels()}, {w.getframerate()})")
        return w.readframes(w.getnframes())


def rms(pcm: bytes) -> float:
    """Root mean square of 16-bit samples (0 for silence, 32767 at full scale)."""
    samples = array.array("h", pcm)
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def _audioop() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return audioop


def _correlation(window: bytes, reference: bytes) -> float:
    a = array.array("h", window)
    b = array.array("h", reference)
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norm if norm else 0.0


def match_score(heard: bytes, reference: bytes, *, piece: float = 0.25,
                slack: float = 0.15) -> tuple[float, float]:
    """How well ``reference`` is found in ``heard`` (both 16-bit 8 kHz linear), from -1
    to 1, and where it starts (seconds into ``heard``).

    1.0 is the very same samples; what a caller hears of a prompt played over G.711
    scores close to 1, unrelated audio near 0. audioop.findfit (C, standard library in
    Python 3.11) finds the offset that minimises the squared error after the best
    scaling, which is the offset of the largest |correlation|; the whole prompt's
    normalised correlation is computed there, signed.

    A prompt heard whole but with a frame dropped or doubled on the way (a busy
    Asterisk mixing a whisper, a recorder starved of CPU) is out of step after the gap,
    and the whole-prompt figure falls to about the share before it. So the prompt is
    also matched ``piece`` seconds at a time, each piece found again within ``slack``
    seconds of where the whole put it, and the pieces' scores averaged by their energy
    (silent pieces count for nothing); the score is the better of the two figures. A
    prompt that is not there scores low either way: each piece may only move a little."""
    audioop = _audioop()
    if len(reference) < 2 or len(heard) < len(reference):
        return 0.0, 0.0
    offset, _factor = audioop.findfit(heard, reference)
    whole = _correlation(heard[offset * 2: offset * 2 + len(reference)], reference)
    step, room = int(piece * 8000), int(slack * 8000)
    total = weighted = 0.0
    for start in range(0, len(reference) // 2, step):
        part = reference[start * 2: (start + step) * 2]
        energy = float(sum(x * x for x in array.array("h", part)))
        if len(part) < step // 2 or not energy:
            continue
        lo = max(0, offset + start - room)
        region = heard[lo * 2: (offset + start + room) * 2 + len(part)]
        if len(region) < len(part):
            continue
        at, _ = audioop.findfit(region, part)
        weighted += energy * max(0.0, _correlation(region[at * 2: at * 2 + len(part)], part))
        total += energy
    pieces = weighted / total if total else 0.0
    return max(whole, pieces), offset / 8000


def tone_level(pcm: bytes, freq: float, rate: int = 8000) -> float:
    """How much of ``pcm``'s energy is a tone at ``freq`` Hz, from 0 to 1 (Goertzel):
    about 1 for that tone alone, near 0 for silence, speech or other tones. Talk-path
    checks use it: each side plays its own tone and the other side must hear it."""
    samples = array.array("h", pcm)
    n = len(samples)
    energy = sum(s * s for s in samples)
    if n == 0 or energy == 0:
        return 0.0
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2  # |X(f)|^2
    return min(1.0, 2 * power / n / energy)
