"""The operator recording line (context ``ivr-operator``, route ``operator``).

An operator logs in with the PIN ``ivr operators add NAME`` printed, types a prompt's
catalogue number, picks the language, hears the current version, records a new one after
the beep (``#`` stops), hears it back, then keeps it (1), records again (2) or cancels (3).
A kept recording becomes the prompt's current version (source ``recorded``), so builds no
longer replace it; the versions before it stay in the store's history
(``ivr prompts restore``).

PIN digits are never logged. The PIN check (ivr.operators.log_in) runs in a worker
thread, scrypt outside any transaction. A
hang-up at any point ends the call (AgiHangup propagates): the manifest only changes
in one atomic step once a recording is kept, and work files are removed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .. import operators
from ..agi import AgiCommandFailed, AgiHangup, AgiSession
from ..prompts.audio import AudioError, to_asterisk, wav_duration
from ..prompts.catalogue import Prompt, text_hash
from ..prompts.store import PromptStore, Version

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("ivr.flows.operator")

MAX_PIN_TRIES = 3
MAX_TRIES = 3  # unanswered or wrong entries in a row before goodbye
PIN_MAX_DIGITS = 12
MAX_RECORD_MS = 120_000
MIN_RECORDING_SECONDS = 0.3
MAX_TAKES = 10  # then the attempt is cancelled


async def operator(call: AgiSession, app: App) -> None:
    await call.answer()
    await app.voice.play(call, "op-welcome")
    name = await _log_in(call, app)
    if name is None:
        await app.voice.play(call, "too-many-attempts")
    else:
        while True:
            prompt = await _choose_prompt(call, app)
            if prompt is None:
                break
            lang = await _choose_language(call, app)
            if lang is not None:
                await _record(call, app, name, prompt, lang)
    await app.voice.play(call, "goodbye")
    await call.hangup()


# --------------------------------------------------------------------------- steps


async def _log_in(call: AgiSession, app: App) -> str | None:
    for _ in range(MAX_PIN_TRIES):
        pin = await app.voice.ask(call, "op-enter-pin", 10_000, PIN_MAX_DIGITS, secret=True)
        if pin and pin.isdigit():
            name = await app.db.run(operators.log_in, app.db, pin)
            if name is not None:
                log.info("[%s] operator %s logged in", call.env.uniqueid, name)
                return name
        log.warning("[%s] operator log-in refused", call.env.uniqueid)
        await app.voice.play(call, "op-wrong-pin")
    return None


async def _choose_prompt(call: AgiSession, app: App) -> Prompt | None:
    catalogue = app.voice.catalogue
    for _ in range(MAX_TRIES):
        typed = await app.voice.ask(call, "op-enter-prompt-number", 8_000, 4)
        if not typed:
            await app.voice.play(call, "no-input")
            continue
        prompt = catalogue.by_number(int(typed)) if typed.isdigit() else None
        if prompt is not None:
            return prompt
        await app.voice.play(call, "op-unknown-prompt")
    return None


async def _choose_language(call: AgiSession, app: App) -> str | None:
    languages = app.voice.catalogue.languages
    if len(languages) == 1:
        return languages[0]
    for _ in range(MAX_TRIES):
        typed = await app.voice.ask(call, "op-choose-language", 6_000, 1)
        if typed and typed.isdigit() and 1 <= int(typed) <= len(languages):
            return languages[int(typed) - 1]
        await app.voice.play(call, "invalid-option")
    return None


async def _record(call: AgiSession, app: App, operator_name: str, prompt: Prompt,
                  lang: str) -> None:
    store = app.voice.store
    current = store.play_path(prompt.id, lang)
    if current is not None:
        await app.voice.play(call, "op-current-version")
        await call.stream_file(current)
    else:
        await app.voice.play(call, "op-no-audio-yet")
    tag = re.sub(r"[^0-9A-Za-z.-]", "_", call.env.uniqueid or "call")
    work = store.tmp_dir
    takes: list[Path] = []
    try:
        while len(takes) < MAX_TAKES:
            await app.voice.play(call, "op-record-after-beep")
            take = work / f"rec-{tag}-{len(takes) + 1}"
            takes.append(take)
            await record_file(call, store.inner(take))
            wav = take.with_name(take.name + ".wav")
            if _seconds(wav) < MIN_RECORDING_SECONDS:
                await app.voice.play(call, "op-too-short")
                continue
            await app.voice.play(call, "op-your-recording")
            await call.stream_file(store.inner(take))
            choice = await _review(call, app)
            if choice == "1":
                version = await asyncio.to_thread(
                    keep_recording, store, prompt, lang, wav, operator_name)
                log.info("[%s] operator %s recorded %s (%s) version %d", call.env.uniqueid,
                         operator_name, prompt.id, lang, version.version)
                await app.voice.play(call, "op-saved")
                return
            if choice != "2":
                break
        await app.voice.play(call, "op-cancelled")
    finally:
        for take in takes:
            for leftover in take.parent.glob(take.name + "*"):
                leftover.unlink(missing_ok=True)


def _seconds(wav: Path) -> float:
    try:
        return wav_duration(wav)
    except AudioError:  # missing or unreadable: as good as empty
        return 0.0


async def _review(call: AgiSession, app: App) -> str | None:
    for _ in range(MAX_TRIES):
        typed = await app.voice.ask(call, "op-review-menu", 6_000, 1)
        if typed in ("1", "2", "3"):
            return typed
        await app.voice.play(call, "invalid-option")
    return None


async def record_file(call: AgiSession, inner_path: str) -> int:
    """RECORD FILE as 8 kHz WAV with a beep, until ``#`` or MAX_RECORD_MS; no silence
    detection (a pause must not end a studio-style read). Returns the end position in
    samples; raises AgiHangup when the caller hung up."""
    reply = await call.command("RECORD FILE", inner_path, "wav", "#", MAX_RECORD_MS, "BEEP")
    if reply.result == "-1":
        if not call.hung_up:
            await call.command("CHANNEL STATUS")  # 511 (AgiHangup) on a dead channel
        if call.hung_up:
            raise AgiHangup("RECORD FILE: caller hung up")
        raise AgiCommandFailed("RECORD FILE", reply)
    return int(reply.extras.get("endpos", "0") or 0)


# --------------------------------------------------------------------------- worker thread


def keep_recording(store: PromptStore, prompt: Prompt, lang: str, wav: Path,
                   operator_name: str) -> Version:
    """Make a phone recording the prompt's current version (kept as recorded: no trim)."""
    stem = wav.with_name(wav.stem + "-keep")
    duration = to_asterisk(wav, stem, require_sound=False)  # the operator heard it and kept it
    return store.add_version(
        prompt.id, lang, stem, source="recorded", duration=duration,
        text_hash=text_hash(prompt.text[lang]), by=operator_name, origin="phone",
    )
