"""Voice prompts in a real Asterisk: every built prompt plays, money and durations are
spoken with core sounds, and an operator records a prompt by phone.

The prompts are built here, offline (espeak-ng), from an empty store inside the test
instance's directory (``<instance base>/tmp/prompts-*``), so an operator's store is never
touched. The test AGI server is our own: ``ivr-hello`` (route ``hello``) is used as a
player, or as a handset that keeps talking (so RECORD FILE hears something).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import wave
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.agi import AgiHangup, AgiServer, AgiSession
from ivr.ami import AmiClient
from ivr.app import App
from ivr.asterisk import AsteriskInstance
from ivr.cli import main
from ivr.config import Settings
from ivr.flows.operator import operator
from ivr.prompts import PromptStore, Voice, load_catalogue
from ivr.prompts.build import build
from ivr.testing.phone import INPUT_COMMANDS, Call, Phone

pytestmark = pytest.mark.asterisk

PLAYERS = 4  # calls playing the catalogue side by side


def frames(store: PromptStore, prompt_id: str, lang: str, version: int) -> int:
    base = store.version_base(prompt_id, lang, version)
    with wave.open(str(base.with_name(base.name + ".wav"))) as w:
        return w.getnframes()


def temp_store(asterisk: AsteriskInstance, name: str) -> PromptStore:
    inner = f"{asterisk.base}/tmp/{name}-{secrets.token_hex(4)}"
    return PromptStore(asterisk.host(inner), inner)


@pytest.fixture(scope="module")
def built_store(asterisk: AsteriskInstance) -> Iterator[PromptStore]:
    """The whole catalogue, both languages, built from nothing."""
    store = temp_store(asterisk, "prompts")
    assert not store.host_dir.exists()
    catalogue = load_catalogue()
    report = build(catalogue, store, progress=False)
    assert len(report.made) == len(catalogue) * len(catalogue.languages)
    yield store
    shutil.rmtree(store.host_dir, ignore_errors=True)


async def run_server(routes: dict, settings: Settings) -> AgiServer:
    server = AgiServer(routes, "127.0.0.1", settings.agi_port, header_timeout=2)
    await server.start()
    return server


@pytest.fixture
async def quiet_phone(ami: AmiClient) -> AsyncIterator[Phone]:
    phone = Phone(ami)
    yield phone
    phone.close()


# ------------------------------------------------------------------ every prompt plays


async def test_every_prompt_plays_in_asterisk(
    built_store: PromptStore, test_settings: Settings, quiet_phone: Phone
):
    catalogue = load_catalogue()
    assert built_store.missing(catalogue) == []  # coverage: audio for every entry and language
    items = [(p.id, lang) for p in catalogue for lang in catalogue.languages]
    chunks = [items[k::PLAYERS] for k in range(PLAYERS)]
    endpos: dict[tuple[str, str], tuple[int, int]] = {}
    full: dict[tuple[str, str], int] = {}

    async def player(call: AgiSession) -> None:
        chunk = chunks[int(call.env.get("callerid", "0")[-1])]
        await call.answer()
        for prompt_id, lang in chunk:
            version = built_store.current(prompt_id, lang)
            n = frames(built_store, prompt_id, lang, version.version)
            path = built_store.play_path(prompt_id, lang)
            # The last 0.2 s only (a sample offset), so 196 prompts take seconds: Asterisk
            # opens the file, seeks and plays to its end, and reports where that was.
            reply = await call.command("STREAM FILE", path, "", max(0, n - 1600))
            assert reply.result == "0", (prompt_id, lang, reply.raw)
            endpos[prompt_id, lang] = (int(reply.extras["endpos"]), n)
        for prompt_id, lang in chunk[:2]:  # and a couple from the very start
            _, full[prompt_id, lang] = await call.stream_file(
                built_store.play_path(prompt_id, lang))
        await call.hangup()

    server = await run_server({"hello": player}, test_settings)
    try:
        calls = [await quiet_phone.call("ivr-hello", callerid=f"1555000000{k}")
                 for k in range(PLAYERS)]
        await asyncio.gather(*(c.wait_ended(timeout=180) for c in calls))
        await server.wait_idle()
    finally:
        await server.shutdown(grace=5)
    assert server.stats.completed == PLAYERS and server.stats.failed == 0
    assert sorted(endpos) == sorted(items)
    wrong = {k: v for k, v in endpos.items() if not 0 < v[0] == v[1]}
    assert not wrong, f"end position is not the file's length: {wrong}"
    assert len(full) == 2 * PLAYERS
    assert all(pos == endpos[key][1] for key, pos in full.items())


SPOKEN = {
    "en": (["number:5", "digits/dollars", "vm-and", "number:20", "en/unit-cents"],
           ["number:23", "minutes"]),
    # The caller chose Spanish in an English channel: the numbers follow (the route sets
    # the channel's language), and the words come from the Spanish core sounds.
    "es": (["number:5", "digits/dollars", "vm-and", "number:20", "es/unit-cents"],
           ["number:23", "minutes"]),
}


@pytest.mark.parametrize("lang", ["en", "es"])
async def test_money_and_minutes_are_spoken_with_core_sounds(
    built_store: PromptStore, test_settings: Settings, quiet_phone: Phone,
    asterisk: AsteriskInstance, lang: str,
):
    voice = Voice(load_catalogue(), built_store)
    heard: list[tuple[str, int]] = []
    languages: list[str] = []

    async def speaker(call: AgiSession) -> None:
        original = call.stream_file

        async def stream_file(filename: str, escape_digits: str = "") -> tuple[str, int]:
            digit, pos = await original(filename, escape_digits)
            heard.append((filename, pos))
            return digit, pos

        call.stream_file = stream_file  # type: ignore[method-assign]
        await call.answer()
        voice.set_language(call, lang)
        await voice.play(call, "your-balance-is")
        await voice.say_money(call, Decimal("5.20"), "USD")
        await voice.play(call, "you-have")
        await voice.say_duration(call, 23 * 60 + 40, whole_minutes=True)
        await voice.play(call, "for-this-call")
        languages.append(await call.get_variable("CHANNEL(language)") or "")
        await call.hangup()

    server = await run_server({"hello": speaker}, test_settings)
    try:
        call = await quiet_phone.call("ivr-hello")
        await call.wait_ended(timeout=60)
        await server.wait_idle()
    finally:
        await server.shutdown(grace=5)
    assert server.stats.completed == 1 and server.stats.failed == 0
    said = [c.prompt for c in call.commands if c.prompt]
    money, duration = SPOKEN[lang]
    store = f"{built_store.inner_dir}/"
    assert [p.removeprefix(store).removesuffix("/v1") for p in said[1:6]] == money
    assert said[7:9] == duration
    assert all(pos > 0 for _, pos in heard), heard  # the core sounds exist and play
    assert languages == [lang]
    # Asterisk has the digits in that language (else it would fall back to English).
    index = asterisk.cli("core show sound digits/5")
    assert f"Language {lang}:" in index, index


# ------------------------------------------------------------------ the operator line


async def next_input(call: Call, after: int, timeout: float = 40) -> tuple[int, str]:
    """Index and first argument of the next command at or after ``after`` that waits for
    keys (GET DATA's first argument is the prompt path)."""
    await call.wait_for_input(after, timeout)
    for i in range(after, len(call.commands)):
        cmd = call.commands[i]
        if cmd.verb in INPUT_COMMANDS:
            return i, cmd.args[0] if cmd.verb != "RECORD FILE" else "RECORD FILE"
    raise AssertionError("unreachable")


async def test_operator_records_a_prompt_by_phone_and_it_plays_next(
    asterisk: AsteriskInstance,
    built_store: PromptStore,
    test_settings: Settings,
    ami: AmiClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
):
    # Our own copy of the built store: this test changes it.
    store = temp_store(asterisk, "prompts-operator")
    shutil.copytree(built_store.host_dir, store.host_dir)
    v1_path = store.play_path("welcome", "en")
    assert v1_path.endswith("/en/welcome/v1")

    # The operator, added with the command an administrator types.
    for name, value in (("IVR_DATABASE_URL", test_settings.effective_database_url),
                        ("IVR_ASTERISK_MODE", test_settings.asterisk_mode),
                        ("IVR_ASTERISK_SANDBOX_DIR", str(test_settings.asterisk_sandbox_dir)),
                        ("XDG_CONFIG_HOME", str(tmp_path))):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IVR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["operators", "add", "alice", "--json"]) == 0
    pin = json.loads(capsys.readouterr().out)["pin"]

    app = await asyncio.to_thread(App.build, test_settings,
                                  voice=Voice(load_catalogue(), store))
    played: list[tuple[str, int]] = []

    async def traced_operator(call: AgiSession) -> None:
        original = call.stream_file

        async def stream_file(filename: str, escape_digits: str = "") -> tuple[str, int]:
            digit, pos = await original(filename, escape_digits)
            played.append((filename, pos))
            return digit, pos

        call.stream_file = stream_file  # type: ignore[method-assign]
        await operator(call, app)

    async def talking_handset(call: AgiSession) -> None:
        """The handset's side: keeps saying "hello world" until the call ends."""
        await call.answer()
        try:
            while True:
                await call.stream_file("hello-world")
        except AgiHangup:
            pass

    caplog.set_level("DEBUG")
    server = await run_server({"operator": traced_operator, "hello": talking_handset},
                              test_settings)
    phone = Phone(ami, caller_context="ivr-hello")
    try:
        call = await phone.call("ivr-operator")
        i, what = await next_input(call, 0)
        assert what.endswith("/en/op-enter-pin/v1")
        await call.send_dtmf(pin + "#")
        i, what = await next_input(call, i + 1)
        assert what.endswith("/op-enter-prompt-number/v1")
        await call.send_dtmf("101#")  # welcome
        i, what = await next_input(call, i + 1)
        assert what.endswith("/op-choose-language/v1")
        await call.send_dtmf("1")
        i, what = await next_input(call, i + 1)
        assert what == "RECORD FILE"
        record = call.commands[i]
        await asyncio.sleep(1.5)  # the handset talks into the recording
        await call.send_dtmf("#")
        i, what = await next_input(call, i + 1)
        assert what.endswith("/op-review-menu/v1")
        await call.send_dtmf("1")  # keep it
        i, what = await next_input(call, i + 1)
        assert what.endswith("/op-enter-prompt-number/v1")
        await call.send_dtmf("101#")
        i, what = await next_input(call, i + 1)
        await call.send_dtmf("1")
        i, what = await next_input(call, i + 1)
        assert what == "RECORD FILE"  # the new current version was played before this
        await call.hangup()  # the operator hangs up while recording a third take
        await call.wait_ended()
        await server.wait_idle()
    finally:
        await server.shutdown(grace=5)
        phone.close()
        app.dispose()

    assert record.args[1:] == ("wav", "#", "120000", "BEEP")  # no silence detection
    assert server.stats.failed == 0
    assert server.stats.hung_up == 1  # the operator's hang-up ended the flow cleanly

    history = store.manifest().get("welcome", "en")
    assert history.current == 2
    v1, v2 = history.versions
    assert (v1.source, v2.source, v2.by, v2.origin) == ("tts", "recorded", "alice", "phone")
    assert v2.duration > 0.3
    v2_path = store.play_path("welcome", "en")
    assert v2_path.endswith("/en/welcome/v2")

    paths = [p for p, _ in played]
    take = next(p for p in paths if "/tmp/rec-" in p)
    assert dict(played)[take] > 0  # the operator heard the take back
    first, second = [k for k, p in enumerate(paths) if p in (v1_path, v2_path)]
    assert paths[first] == v1_path and played[first][1] == frames(store, "welcome", "en", 1)
    # After keeping it, the recording is what Asterisk plays: whole, to its last sample.
    assert paths[second] == v2_path and played[second][1] == frames(store, "welcome", "en", 2)
    assert not list(store.tmp_dir.glob("rec-*"))  # takes, also the interrupted one, removed

    assert pin not in caplog.text
    assert pin not in asterisk.log_file.read_text(errors="replace")

    # A build keeps the recording; restore brings the speech back and keeps the recording.
    report = build(load_catalogue(), store, langs=("en",), progress=False)
    assert ("welcome", "en") in report.recorded and report.made == []
    assert main(["prompts", "restore", "welcome", "1", "--lang", "en",
                 "--store", str(store.host_dir)]) == 0
    assert "version 1 (tts) is current" in capsys.readouterr().out
    assert store.play_path("welcome", "en") == v1_path
    assert [v.version for v in store.manifest().get("welcome", "en").versions] == [1, 2]
    assert store.has_audio("welcome", "en", 2)
    shutil.rmtree(store.host_dir, ignore_errors=True)
