"""Making and converting audio with external tools: espeak-ng (offline speech), gTTS
(Google's speech service, only when asked), and sox (conversion to Asterisk's formats).

Every prompt version is stored twice, 8 kHz mono: ``.wav`` (16-bit signed linear, what
Asterisk's format_wav reads) and ``.ulaw`` (raw G.711 mu-law), so Asterisk can play the
one that needs no transcoding for the channel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from array import array
from pathlib import Path

RATE = 8000
FORMATS = ("wav", "ulaw")
# Effects for speech: peak-normalise to -3 dBFS.
TTS_EFFECTS = ("gain", "-n", "-3")
# Effects for studio recordings: trim leading and trailing silence (below -45 dB), keep a
# little air around the voice, then peak-normalise to -3 dBFS.
STUDIO_EFFECTS = (
    "silence", "1", "0.02", "-45d", "reverse",
    "silence", "1", "0.02", "-45d", "reverse",
    "pad", "0.1", "0.2",
    "gain", "-n", "-3",
)
ENGINES = ("espeak", "gtts")
SILENCE_PEAK = 33  # about -60 dBFS: below this a file has no sound worth playing


class AudioError(RuntimeError):
    """A tool is missing or failed; the message says which and why."""


class EngineUnavailable(AudioError):
    """The speech engine cannot be used here (not installed, service unreachable)."""


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AudioError(f"{name} is not installed (Debian package {package}; scripts/setup "
                         "installs it when run as root)")
    return path


def _run(argv: list[str], what: str, timeout: float = 120) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{what}: {argv[0]} took longer than {timeout}s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise AudioError(f"{what}: {Path(argv[0]).name} failed ({result.returncode}): "
                         f"{detail[-1] if detail else 'no message'}")


def sox_formats() -> set[str]:
    """The file types this sox reads and writes (``mp3`` needs libsox-fmt-mp3)."""
    sox = _tool("sox", "sox")
    out = subprocess.run([sox, "-h"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        if line.startswith("AUDIO FILE FORMATS:"):
            return set(line.split(":", 1)[1].split())
    return set()


def speak_espeak(text: str, voice: str, out: Path) -> None:
    """Speech for ``text`` as a WAV file (espeak-ng's own rate, 22.05 kHz)."""
    espeak = _tool("espeak-ng", "espeak-ng")
    # -s words per minute: a little slower than the default for the telephone.
    _run([espeak, "-v", voice, "-s", "150", "-w", str(out), "--", text],
         f"espeak-ng ({voice})")


def speak_gtts(text: str, lang: str, out: Path) -> None:
    """Speech for ``text`` as an MP3 from Google's service (needs the network)."""
    try:
        from gtts import gTTS, gTTSError
    except ImportError:
        raise EngineUnavailable("gTTS is not installed (pip install gTTS)") from None
    try:
        gTTS(text, lang=lang, timeout=15).save(str(out))
    except (gTTSError, OSError, ValueError) as exc:
        raise EngineUnavailable(
            f"gTTS cannot make speech here: Google's text-to-speech service is not "
            f"reachable ({exc}); use the offline engine: --engine espeak"
        ) from None


def to_asterisk(src: Path, dst_base: Path, effects: tuple[str, ...] = (), *,
                require_sound: bool = True) -> float:
    """Convert any file sox reads into ``dst_base.wav`` and ``dst_base.ulaw`` (8 kHz
    mono), applying sox ``effects`` first; returns the duration in seconds. Refuses a
    result that is (nearly) empty, or silent unless ``require_sound`` is false."""
    sox = _tool("sox", "sox")
    wav = dst_base.with_name(dst_base.name + ".wav")
    ulaw = dst_base.with_name(dst_base.name + ".ulaw")
    _run([sox, "-V1", str(src), "-e", "signed-integer", "-b", "16", "-c", "1", str(wav),
          "remix", "-", *effects, "rate", "-h", str(RATE)],
         f"converting {src.name}")
    seconds = wav_duration(wav)
    if seconds < 0.05 or (require_sound and wav_peak(wav) < SILENCE_PEAK):
        wav.unlink(missing_ok=True)
        raise AudioError(f"{src.name}: no sound left after conversion (silent or empty?)")
    _run([sox, "-V1", str(wav), "-t", "ul", str(ulaw)], f"converting {src.name} to mu-law")
    return seconds


def wav_peak(path: Path) -> int:
    """The largest absolute sample of a 16-bit WAV file."""
    with wave.open(str(path), "rb") as w:
        samples = array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        samples.byteswap()
    return max(map(abs, samples), default=0)


def wav_duration(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / float(w.getframerate() or RATE)
    except (OSError, EOFError, wave.Error) as exc:
        raise AudioError(f"{path}: not a readable WAV file ({exc})") from None
