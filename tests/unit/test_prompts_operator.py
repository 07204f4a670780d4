"""The operator recording flow against the scripted fake Asterisk: log-in, record, review,
keep; wrong PINs; and a hang-up after every single command leaves a consistent store."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ivr.agi import AgiServer
from ivr.app import App
from ivr.config import load_settings
from ivr.db.models import Operator
from ivr.flows.operator import operator
from ivr.prompts import PromptStore, Voice, load_catalogue
from ivr.prompts.build import build
from ivr.secrets import hash_pin
from ivr.testing.fake_asterisk import FakeAsterisk, default_rule

PIN = "24681357"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> PromptStore:
    path = tmp_path_factory.mktemp("built")
    store = PromptStore(path, str(path))
    build(load_catalogue(), store, langs=("en",), progress=False)
    return store


@pytest.fixture
def store(built, tmp_path) -> PromptStore:
    path = tmp_path / "store"
    shutil.copytree(built.host_dir, path)
    return PromptStore(path, str(path))


@pytest.fixture
async def line(store, tmp_path):
    """Runs one operator call against the fake Asterisk with a scripted caller."""
    settings = load_settings(environ={}).replace(data_dir=tmp_path / "data")
    app = App.build(settings, voice=Voice(load_catalogue(), store))
    with app.db.transaction() as s:
        s.add(Operator(name="alice", pin_hash=hash_pin(PIN), active=True,
                       created_at=datetime.now(UTC)))
    server = AgiServer(app.routes({"operator": operator}), "127.0.0.1", 0)
    await server.start()

    async def call(answers: dict[str, list[str]], hangup_after: int | None = None) -> list[str]:
        queues = {k: list(v) for k, v in answers.items()}
        rule = caller(queues)
        commands = await FakeAsterisk("127.0.0.1", server.port, rule).run_call(
            "operator", hangup_after=hangup_after)
        await server.wait_idle()
        return commands

    call.server = server  # type: ignore[attr-defined]
    yield call
    await server.shutdown(grace=1)
    app.dispose()


def caller(queues: dict[str, list[str]]) -> Callable[[str], str]:
    """GET DATA answers by prompt id; RECORD FILE writes a second of tone where asked."""

    def rule(command: str) -> str:
        if command.startswith("GET DATA"):
            for prompt_id, answers in queues.items():
                if f"/{prompt_id}/" in command and answers:
                    return f"200 result={answers.pop(0)}"
            return "200 result= (timeout)"
        if command.startswith("RECORD FILE"):
            target = command.split('"')[1] + ".wav"
            subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", target, "synth",
                            "1", "sine", "500"], check=True)
            return "200 result=35 (dtmf) endpos=8000"
        return default_rule(command)

    return rule


HAPPY = {
    "op-enter-pin": ["90909", PIN],
    "op-enter-prompt-number": ["777", "101"],
    "op-choose-language": ["1"],
    "op-review-menu": ["2", "1"],  # record again, then keep the second take
}


def played(commands: list[str]) -> list[str]:
    """The prompt ids and recordings the flow played, in order."""
    out = []
    for c in commands:
        if c.startswith(("STREAM FILE", "GET DATA")):
            path = c.split('"')[1]
            parts = path.split("/")
            out.append(parts[-1].rsplit("-", 1)[0] if parts[-1].startswith("rec-")
                       else f"{parts[-2]}/{parts[-1]}")
        elif c.startswith("RECORD FILE"):
            out.append("RECORD")
    return out


async def test_log_in_record_review_and_keep(line, store, caplog):
    caplog.set_level(logging.DEBUG)
    commands = await line(HAPPY)
    assert played(commands) == [
        "op-welcome/v1",
        "op-enter-pin/v1", "op-wrong-pin/v1", "op-enter-pin/v1",
        "op-enter-prompt-number/v1", "op-unknown-prompt/v1", "op-enter-prompt-number/v1",
        "op-choose-language/v1",
        "op-current-version/v1", "welcome/v1",
        "op-record-after-beep/v1", "RECORD", "op-your-recording/v1", "rec-1700000000.1",
        "op-review-menu/v1",
        "op-record-after-beep/v1", "RECORD", "op-your-recording/v1", "rec-1700000000.1",
        "op-review-menu/v1",
        "op-saved/v1",
        "op-enter-prompt-number/v1", "no-input/v1", "op-enter-prompt-number/v1",
        "no-input/v1", "op-enter-prompt-number/v1", "no-input/v1",
        "goodbye/v1",
    ]
    record = next(c for c in commands if c.startswith("RECORD FILE"))
    assert record == (f'RECORD FILE "{store.host_dir}/tmp/rec-1700000000.1-1" "wav" "#" '
                      '"120000" "BEEP"')  # no s=: a pause does not end the recording
    assert commands[-1] == "HANGUP"
    history = store.manifest().get("welcome", "en")
    assert history.current == 2
    v1, v2 = history.versions
    assert (v1.source, v2.source, v2.by, v2.origin) == ("tts", "recorded", "alice", "phone")
    assert abs(v2.duration - 1.0) < 0.01
    assert store.has_audio("welcome", "en", 1) and store.has_audio("welcome", "en", 2)
    assert not list(store.tmp_dir.glob("rec-*"))  # both takes cleaned up
    assert PIN not in caplog.text and "90909" not in caplog.text
    assert "operator alice logged in" in caplog.text
    assert line.server.stats.completed == 1


async def test_three_wrong_pins_and_goodbye(line, store):
    before = store.manifest_path.read_bytes()
    commands = await line({"op-enter-pin": ["1", "22", "333"]})
    assert played(commands) == [
        "op-welcome/v1",
        "op-enter-pin/v1", "op-wrong-pin/v1", "op-enter-pin/v1", "op-wrong-pin/v1",
        "op-enter-pin/v1", "op-wrong-pin/v1", "too-many-attempts/v1", "goodbye/v1",
    ]
    assert store.manifest_path.read_bytes() == before


async def test_cancel_and_a_language_without_audio(line, store):
    before = store.manifest_path.read_bytes()
    commands = await line({"op-enter-pin": [PIN], "op-enter-prompt-number": ["604"],
                           "op-choose-language": ["2"], "op-review-menu": ["3"]})
    assert played(commands)[3:8] == [
        "op-choose-language/v1", "op-no-audio-yet/v1", "op-record-after-beep/v1", "RECORD",
        "op-your-recording/v1"]
    assert "op-cancelled/v1" in played(commands)
    assert store.manifest_path.read_bytes() == before
    assert not list(store.tmp_dir.glob("rec-*"))


async def test_a_hang_up_after_any_command_leaves_the_store_consistent(line, store):
    full = await line(HAPPY)
    assert store.manifest().get("welcome", "en").current == 2
    # The second take is kept once the reply to the second review menu has arrived.
    reviews = [i for i, c in enumerate(full, 1) if "/op-review-menu/" in c]
    kept_from = reviews[1]
    for n in range(1, len(full)):
        store.restore("welcome", "en", 1)
        commands = await line(HAPPY, hangup_after=n)
        assert len(commands) <= n + 1, n  # nothing runs after the hang-up is noticed
        manifest = json.loads(store.manifest_path.read_text())  # always whole JSON
        current = manifest["prompts"]["welcome"]["en"]["current"]
        assert (current != 1) == (n >= kept_from), n
        assert store.has_audio("welcome", "en", current)
        assert not list(store.tmp_dir.glob("rec-*")), n
    stats = line.server.stats
    assert stats.failed == 0
    assert stats.completed + stats.hung_up == len(full)
    assert stats.hung_up >= len(full) - 2
