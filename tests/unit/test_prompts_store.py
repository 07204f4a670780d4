"""The prompt store (manifest, versions, restore), speech builds and studio imports.

These run espeak-ng and sox for real (scripts/setup installs them); no Asterisk."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
from pathlib import Path
from types import SimpleNamespace

import pytest

from ivr.asterisk import AsteriskInstall, AsteriskInstance
from ivr.config import load_settings
from ivr.prompts import CatalogueError, ManifestError, PromptStore, Voice
from ivr.prompts.audio import AudioError, EngineUnavailable, sox_formats, wav_duration
from ivr.prompts.build import build, import_recordings, plan_build
from ivr.prompts.catalogue import parse_catalogue, text_hash

CATALOGUE = """
[catalogue]
languages = ["en", "es"]

[prompts.welcome]
number = 101
text.en = "Welcome."
text.es = "Bienvenido."

[prompts.enter-pin]
number = 105
text.en = "Please enter your PIN."
text.es = "Marque su clave."

[prompts.goodbye]
number = 604
text.en = "Goodbye."
text.es = "Adiós."
"""


@pytest.fixture
def catalogue():
    return parse_catalogue(CATALOGUE)


@pytest.fixture
def store(tmp_path) -> PromptStore:
    return PromptStore(tmp_path / "store", str(tmp_path / "store"))


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True, capture_output=True)


def tone(path: Path, *, rate: int = 44100, channels: int = 2, seconds: float = 1.0,
         silence: float = 0.5, volume: float = 0.2) -> Path:
    """A sine tone with silence before and after, at the given rate and channels."""
    sox("-n", "-r", str(rate), "-c", str(channels), str(path), "synth", str(seconds), "sine",
        "440", "vol", str(volume), "pad", str(silence), str(silence))
    return path


def peak(path: Path) -> float:
    out = subprocess.run(["sox", str(path), "-n", "stat"], capture_output=True, text=True).stderr
    line = next(x for x in out.splitlines() if x.startswith("Maximum amplitude"))
    return float(line.split(":")[1])


def assert_asterisk_files(base: Path) -> int:
    """base.wav is 8 kHz mono 16-bit, base.ulaw the same samples in mu-law."""
    with wave.open(str(base.with_name(base.name + ".wav"))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        frames = w.getnframes()
    assert frames > 0
    assert base.with_name(base.name + ".ulaw").stat().st_size == frames  # 1 byte a sample
    return frames


# ------------------------------------------------------------------ manifest and versions


def _add(store: PromptStore, tmp_path: Path, prompt_id: str, lang: str = "en", **meta):
    src = tone(tmp_path / f"src-{prompt_id}.wav", rate=8000, channels=1, silence=0)
    stem = store.tmp_dir / f"work-{prompt_id}"
    from ivr.prompts.audio import to_asterisk

    duration = to_asterisk(src, stem)
    meta.setdefault("source", "tts")
    return store.add_version(prompt_id, lang, stem, duration=duration, **meta)


def test_versions_history_and_restore(store, tmp_path):
    assert store.current("welcome", "en") is None and store.play_path("welcome", "en") is None
    v1 = _add(store, tmp_path, "welcome", text_hash="h1", engine="espeak")
    v2 = _add(store, tmp_path, "welcome", source="recorded", by="alice", origin="phone")
    assert (v1.version, v2.version) == (1, 2)
    assert store.play_path("welcome", "en") == f"{store.inner_dir}/en/welcome/v2"
    assert_asterisk_files(store.version_base("welcome", "en", 1))
    assert_asterisk_files(store.version_base("welcome", "en", 2))

    data = json.loads(store.manifest_path.read_text())
    entry = data["prompts"]["welcome"]["en"]
    assert entry["current"] == 2 and entry["source"] == "recorded"
    assert [v["version"] for v in entry["versions"]] == [1, 2]
    assert entry["versions"][0] | {"created_at": "-", "duration": 0} == {
        "version": 1, "source": "tts", "text_hash": "h1", "engine": "espeak",
        "created_at": "-", "duration": 0}
    assert entry["versions"][1]["by"] == "alice"

    assert store.restore("welcome", "en", 1).source == "tts"
    assert store.play_path("welcome", "en").endswith("/en/welcome/v1")
    assert len(store.manifest().get("welcome", "en").versions) == 2  # nothing lost
    with pytest.raises(ManifestError, match="has no version 7; it has 1, 2"):
        store.restore("welcome", "en", 7)
    with pytest.raises(ManifestError, match="no versions in 'es'"):
        store.restore("welcome", "es", 1)


def test_play_paths_are_kept_yet_follow_changes_from_this_and_other_processes(
        store, tmp_path, monkeypatch):
    """Every prompt a call plays asks play_path: it keeps its answers and looks at the
    manifest file at most every RECHECK seconds, which is how a change made by another
    process reaches it; a change written by this process (another store object on the
    same directory, as the web console's) is seen at once."""
    import ivr.prompts.store as store_module

    _add(store, tmp_path, "welcome")
    _add(store, tmp_path, "welcome")
    player = PromptStore(store.host_dir, store.inner_dir)  # the call server's
    v1, v2 = (f"{store.inner_dir}/en/welcome/v{n}" for n in (1, 2))
    assert player.play_path("welcome", "en") == v2

    manifest_file = str(store.manifest_path)
    stats: list[str] = []
    real_stat = store_module.os.stat

    def counting_stat(path, *args, **kwargs):
        if str(path) == manifest_file:
            stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "stat", counting_stat)
    monkeypatch.setattr(store_module, "RECHECK", 3600.0)
    assert {player.play_path("welcome", "en") for _ in range(100)} == {v2}
    assert player.play_path("goodbye", "en") is None
    assert stats == []  # the file was not looked at: all from what was read

    # `ivr prompts restore` in another process: seen once RECHECK has passed.
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from ivr.prompts import PromptStore; "
                    "PromptStore(Path(sys.argv[1]), sys.argv[1]).restore('welcome', 'en', 1)",
                    str(store.host_dir)], check=True)
    assert player.play_path("welcome", "en") == v2
    monkeypatch.setattr(store_module, "RECHECK", 0.0)
    assert player.play_path("welcome", "en") == v1
    assert len(stats) == 1

    # A write from this process: seen at the next play, whatever RECHECK says.
    monkeypatch.setattr(store_module, "RECHECK", 3600.0)
    PromptStore(store.host_dir, store.inner_dir).restore("welcome", "en", 2)
    assert player.play_path("welcome", "en") == v2
    assert player.current("welcome", "en").version == 2


def test_manifest_writes_are_atomic_and_all_or_nothing(store, tmp_path):
    _add(store, tmp_path, "welcome")
    before = store.manifest_path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), store.update() as manifest:
        manifest.get("welcome", "en").current = 99
        raise RuntimeError("boom")
    assert store.manifest_path.read_bytes() == before
    assert not list(store.host_dir.glob(".manifest-*"))  # no temporary file left behind
    assert store.current("welcome", "en").version == 1


def test_a_damaged_manifest_is_a_clear_error(store, tmp_path):
    _add(store, tmp_path, "welcome")
    store.manifest_path.write_text('{"format": 1, "prompts": {"welcome": {"en": {')
    with pytest.raises(ManifestError, match="manifest.json is damaged.*audio files are untouched"):
        store.manifest()


def test_missing_lists_prompts_without_playable_audio(store, catalogue, tmp_path):
    _add(store, tmp_path, "welcome", "en")
    _add(store, tmp_path, "goodbye", "en")
    store.version_base("goodbye", "en", 1).with_suffix(".ulaw").unlink()
    assert store.missing(catalogue, ("en",)) == [("enter-pin", "en"), ("goodbye", "en")]
    assert len(store.missing(catalogue)) == 5


def test_where_the_store_lives(tmp_path):
    settings = load_settings(environ={}).replace(data_dir=tmp_path / "data",
                                                 asterisk_instance="test")
    root = tmp_path / "root"
    sandbox = AsteriskInstall("sandbox", root, "/usr/sbin/asterisk", "/mods", "/usr/share/asterisk")
    store = PromptStore.for_instance(AsteriskInstance(settings, sandbox))
    assert store.inner_dir == "/ivr/test/prompts"
    assert store.host_dir == root / "ivr/test/prompts"
    system = AsteriskInstall("system", None, "/usr/sbin/asterisk", "/mods", "/usr/share/asterisk")
    store = PromptStore.for_instance(AsteriskInstance(settings, system))
    assert store.host_dir == Path(store.inner_dir) == (tmp_path / "data/prompts").resolve()

    inside = PromptStore.at(root / "ivr/x/prompts", sandbox)
    assert inside.inner_dir == "/ivr/x/prompts"
    with pytest.raises(ManifestError, match="outside the Asterisk sandbox root"):
        PromptStore.at(tmp_path / "elsewhere", sandbox)


# ------------------------------------------------------------------ builds


def test_build_makes_every_prompt_then_skips_what_is_up_to_date(store, catalogue):
    out = io.StringIO()
    report = build(catalogue, store, stream=out)
    assert sorted(report.made) == sorted((p.id, lang) for p in catalogue for lang in ("en", "es"))
    assert "6/6" in out.getvalue()  # the progress bar
    assert store.missing(catalogue) == []
    for prompt in catalogue:
        for lang in ("en", "es"):
            version = store.current(prompt.id, lang)
            assert (version.source, version.engine) == ("tts", "espeak")
            assert version.text_hash == text_hash(prompt.text[lang])
            frames = assert_asterisk_files(store.version_base(prompt.id, lang, 1))
            assert abs(frames / 8000 - version.duration) < 0.01

    again = build(catalogue, store, stream=out)
    assert again.made == [] and len(again.up_to_date) == 6
    assert all(store.current(p.id, lang).version == 1 for p in catalogue for lang in ("en", "es"))


def test_a_changed_text_or_lost_audio_is_made_again(store, catalogue):
    build(catalogue, store, progress=False)
    changed = parse_catalogue(CATALOGUE.replace('"Goodbye."', '"Good bye, see you."'))
    store.version_base("welcome", "es", 1).with_suffix(".wav").unlink()
    report = build(changed, store, progress=False)
    assert sorted(report.made) == [("goodbye", "en"), ("welcome", "es")]
    history = store.manifest().get("goodbye", "en")
    assert history.current == 2 and [v.version for v in history.versions] == [1, 2]
    assert store.has_audio("goodbye", "en", 1)  # the old version stays


def test_recorded_prompts_are_never_replaced_by_a_build(store, catalogue, tmp_path):
    _add(store, tmp_path, "welcome", "en", source="recorded", origin="phone")
    report = build(catalogue, store, force=True, langs=("en",), progress=False)
    assert report.recorded == [("welcome", "en")]
    assert ("welcome", "en") not in report.made
    assert store.current("welcome", "en").source == "recorded"


def test_only_missing_builds_what_has_no_audio_and_keeps_the_rest(store, catalogue, caplog):
    """What an instance start runs (AsteriskInstance.build_prompts), and what `ivr serve`
    says when prompts have no audio."""
    from ivr.service import check_prompts

    app = SimpleNamespace(voice=Voice(catalogue, store))
    check_prompts(app)  # type: ignore[arg-type]
    assert "6 voice prompt(s) have no audio" in caplog.text
    assert "run `ivr prompts build`" in caplog.text
    build(catalogue, store, langs=("en",), progress=False)
    changed = parse_catalogue(CATALOGUE.replace('"Goodbye."', '"Good bye, see you."'))
    report = build(changed, store, only_missing=True, progress=False)
    # Only the missing language is made; speech from older text is kept (the full
    # build, `ivr prompts build`, remakes it).
    assert sorted(report.made) == sorted((p.id, "es") for p in catalogue)
    assert store.current("goodbye", "en").version == 1
    caplog.clear()
    check_prompts(app)  # type: ignore[arg-type]
    assert caplog.text == ""


def test_build_languages_and_engines_are_checked(store, catalogue):
    report = build(catalogue, store, langs=("es",), progress=False)
    assert {lang for _, lang in report.made} == {"es"}
    with pytest.raises(CatalogueError, match="language\\(s\\) fr not in the catalogue"):
        build(catalogue, store, langs=("fr",))
    with pytest.raises(AudioError, match="unknown speech engine 'festival'"):
        build(catalogue, store, engine="festival")


def test_gtts_unreachable_is_a_clear_error_and_changes_nothing(store, catalogue, monkeypatch):
    from gtts import gTTS, gTTSError

    def unreachable(self, savefile):
        raise gTTSError("Failed to connect. Probable cause: Unknown")

    monkeypatch.setattr(gTTS, "save", unreachable)
    build(catalogue, store, langs=("en",), progress=False)
    before = store.manifest_path.read_bytes()
    with pytest.raises(EngineUnavailable, match="not reachable.*--engine espeak"):
        build(catalogue, store, engine="gtts", progress=False)
    assert store.manifest_path.read_bytes() == before
    _, report = plan_build(catalogue, store, ("en",), "espeak")
    assert len(report.up_to_date) == 3


# ------------------------------------------------------------------ studio imports


def test_import_converts_trims_and_normalises_a_studio_wav(store, catalogue, tmp_path):
    studio = tmp_path / "studio"
    studio.mkdir()
    tone(studio / "welcome.wav", rate=44100, channels=2, seconds=1.0, silence=0.5, volume=0.2)
    done = import_recordings(catalogue, store, studio, progress=False)
    assert [(item.prompt.id, item.lang) for item, _ in done] == [("welcome", "en")]
    version = store.current("welcome", "en")
    assert (version.source, version.origin) == ("recorded", "import:welcome.wav")
    base = store.version_base("welcome", "en", 1)
    frames = assert_asterisk_files(base)
    # 2 s in, 0.5 s of silence trimmed at each end, 0.1 s + 0.2 s of air added back.
    assert 1.2 < frames / 8000 < 1.4
    assert 0.65 < peak(base.with_name("v1.wav")) < 0.75  # -3 dBFS is 0.708


@pytest.mark.skipif("mp3" not in sox_formats(), reason="sox without libsox-fmt-mp3")
def test_import_reads_mp3_by_language_folder_and_prompt_number(store, catalogue, tmp_path):
    studio = tmp_path / "studio"
    (studio / "es").mkdir(parents=True)
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(speech), "Bienvenido."], check=True)
    sox(str(speech), "-r", "22050", str(studio / "es" / "101.mp3"))
    import_recordings(catalogue, store, studio, progress=False)
    version = store.current("welcome", "es")
    assert version.origin == "import:101.mp3" and version.duration > 0.3
    assert_asterisk_files(store.version_base("welcome", "es", 1))
    assert store.current("welcome", "en") is None


def test_a_bad_import_is_refused_whole(store, catalogue, tmp_path):
    studio = tmp_path / "studio"
    studio.mkdir()
    tone(studio / "goodbye.wav")
    tone(studio / "no-such-prompt.wav")
    (studio / "notes.txt").write_text("read slowly")
    with pytest.raises(CatalogueError) as err:
        import_recordings(catalogue, store, studio, progress=False)
    assert "nothing was imported" in str(err.value)
    assert "no-such-prompt.wav: no prompt with that id or number" in str(err.value)
    assert "notes.txt: not an audio file" in str(err.value)
    assert not store.manifest_path.exists()


def test_a_silent_recording_is_refused(store, catalogue, tmp_path):
    studio = tmp_path / "studio"
    studio.mkdir()
    tone(studio / "welcome.wav")
    sox("-n", "-r", "8000", "-c", "1", str(studio / "goodbye.wav"), "trim", "0", "2")
    with pytest.raises(AudioError, match="nothing was imported.*goodbye.wav: no sound left"):
        import_recordings(catalogue, store, studio, progress=False)
    assert not store.manifest_path.exists()


def test_wav_duration_of_a_non_wav_is_an_audio_error(tmp_path):
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(AudioError, match="not a readable WAV"):
        wav_duration(tmp_path / "x.wav")
