"""`ivr prompts ...` and `ivr operators ...` as an operator types them (in process)."""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from ivr.db.models import Operator
from ivr.secrets import verify_pin

CATALOGUE = """
[catalogue]
languages = ["en", "es"]

[prompts.welcome]
number = 101
text.en = "Welcome."
text.es = "Bienvenido."

[prompts.goodbye]
number = 604
text.en = "Goodbye."
text.es = "Adiós."
"""


@pytest.fixture
def ivr(tmp_path, monkeypatch, ivr_cli):
    monkeypatch.setenv("IVR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    # No Asterisk here: the store is the directory given with --store.
    monkeypatch.setenv("IVR_ASTERISK_MODE", "sandbox")
    monkeypatch.setenv("IVR_ASTERISK_SANDBOX_DIR", str(tmp_path / "no-sandbox"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("IVR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "catalogue.toml").write_text(CATALOGUE)
    return ivr_cli


STORE = ("--store", "store", "--catalogue", "catalogue.toml")


def test_build_status_import_history_restore(ivr, tmp_path):
    assert "2 made, 0 up to date" in ivr("prompts", "build", "--lang", "en", "-q", *STORE)
    assert "0 made, 2 up to date" in ivr("prompts", "build", "--lang", "en", "-q", *STORE)

    status = json.loads(ivr("prompts", "status", "--json", *STORE))
    assert status["counts"] == {"tts": 2, "recorded": 0, "missing": 2}
    rows = {(r["id"], r["language"]): r for r in status["prompts"]}
    assert rows["welcome", "en"]["source"] == "tts" and rows["welcome", "en"]["duration"] > 0
    assert rows["welcome", "es"]["source"] == "missing"
    table = ivr("prompts", "status", *STORE)
    assert table.splitlines()[0].split() == ["id", "no.", "lang", "source", "ver", "duration",
                                             "note"]
    assert "2 speech, 0 recorded, 2 missing" in table

    studio = tmp_path / "studio"
    (studio / "es").mkdir(parents=True)
    subprocess.run(["sox", "-n", "-r", "16000", str(studio / "es" / "goodbye.wav"), "synth",
                    "0.8", "sine", "300", "pad", "0.3", "0.3"], check=True)
    out = ivr("prompts", "import", str(studio), "-q", *STORE)
    assert "goodbye (es) <- goodbye.wav" in out and "1 recordings imported" in out

    ivr("prompts", "build", "-q", *STORE)  # makes welcome (es), keeps the recording
    status = json.loads(ivr("prompts", "status", "--json", *STORE))
    assert status["counts"] == {"tts": 3, "recorded": 1, "missing": 0}

    ivr("prompts", "import", str(studio), "-q", *STORE)  # a second take: version 2
    history = json.loads(ivr("prompts", "history", "goodbye", "--lang", "es", "--json", *STORE))
    assert [(v["version"], v["current"]) for v in history["languages"]["es"]] == [
        (1, False), (2, True)]
    out = ivr("prompts", "restore", "goodbye", "1", "--lang", "es", *STORE)
    assert "goodbye (es): version 1 (recorded) is current" in out
    assert "* v1" in ivr("prompts", "history", "goodbye", "--lang", "es", *STORE)

    err = ivr("prompts", "restore", "goodbye", "9", "--lang", "es", *STORE, expect=1)
    assert "has no version 9; it has 1, 2" in err
    err = ivr("prompts", "restore", "nope", "1", *STORE, expect=1)
    assert "no prompt 'nope' in the catalogue" in err


def test_refusals_are_one_clear_line(ivr, tmp_path, monkeypatch):
    from gtts import gTTS, gTTSError

    def unreachable(self, savefile):
        raise gTTSError("Failed to connect")

    monkeypatch.setattr(gTTS, "save", unreachable)
    err = ivr("prompts", "build", "--engine", "gtts", "-q", *STORE, expect=1)
    assert err.startswith("ivr: gTTS cannot make speech here") and "--engine espeak" in err
    err = ivr("prompts", "status", "--catalogue", "catalogue.toml", expect=1)
    assert "run `ivr asterisk up` (or give --store DIR)" in err
    (tmp_path / "bad.toml").write_text("[catalogue]\nlanguages = []\n")
    err = ivr("prompts", "status", "--store", "store", "--catalogue", "bad.toml", expect=1)
    assert "languages must be a non-empty list" in err
    err = ivr("prompts", "import", str(tmp_path / "nowhere"), *STORE, expect=1)
    assert "is not a directory" in err


def test_operators_add_list_disable(ivr, tmp_path):
    added = json.loads(ivr("operators", "add", "alice", "--json"))
    assert added["name"] == "alice" and len(added["pin"]) == 8 and added["pin"].isdigit()
    text = ivr("operators", "add", "bob")
    assert "operator bob added; PIN " in text and "shown once" in text
    err = ivr("operators", "add", "alice", expect=1)
    assert "operator 'alice' already exists" in err

    engine = create_engine(f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    with Session(engine) as s:
        alice = s.scalar(select(Operator).where(Operator.name == "alice"))
        assert added["pin"] not in alice.pin_hash  # stored hashed only
        assert verify_pin(added["pin"], alice.pin_hash)
    engine.dispose()

    assert "operator alice disabled" in ivr("operators", "disable", "alice")
    listed = json.loads(ivr("operators", "list", "--json"))["operators"]
    assert [(o["name"], o["active"]) for o in listed] == [("alice", False), ("bob", True)]
    assert "no operator 'carol'" in ivr("operators", "disable", "carol", expect=1)


def test_json_refusals_are_one_object_on_stdout(ivr, tmp_path, capsys):
    from ivr.cli import main

    def refused(*args: str, code: str) -> None:
        err = ivr(*args, expect=1)  # one line on stderr without --json
        assert err.count("\n") == 1 and err.startswith("ivr: "), err
        assert main([*args, "--json"]) == 1
        out, err_json = capsys.readouterr()
        assert json.loads(out) == {"error": {"code": code,
                                             "message": err[len("ivr: "):].rstrip("\n")}}
        assert err_json == ""

    ivr("prompts", "build", "--lang", "en", "-q", *STORE)
    refused("prompts", "history", "nosuch", *STORE, code="not_found")
    refused("prompts", "restore", "welcome", "9", "--lang", "en", *STORE, code="manifest")
    refused("prompts", "status", "--catalogue", "catalogue.toml", code="asterisk")
    (tmp_path / "bad.toml").write_text("[catalogue]\nlanguages = []\n")
    refused("prompts", "status", "--store", "store", "--catalogue", "bad.toml",
            code="catalogue")
    refused("operators", "disable", "carol", code="not_found")
