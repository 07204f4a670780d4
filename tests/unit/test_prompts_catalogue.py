"""The prompt catalogue: parsing, clear refusals, and coverage of the ids the code uses."""

from __future__ import annotations

import pytest

from ivr.prompts import CatalogueError, UnknownPrompt, load_catalogue
from ivr.prompts.catalogue import parse_catalogue, text_hash
from ivr.prompts.coverage import flow_files, scan_files, scan_source
from ivr.prompts.say import CORE_SOUNDS, word_ids

GOOD = """
[catalogue]
languages = ["en", "es"]
voices = { es = "es" }

[prompts.welcome]
number = 101
used_in = ["access"]
text.en = "Welcome.  "
text.es = "Bienvenido."

[prompts.goodbye]
number = 604
text.en = "Goodbye."
text.es = "Adiós."
"""


def test_a_good_catalogue():
    cat = parse_catalogue(GOOD)
    assert cat.languages == ("en", "es") and cat.default_language == "en"
    assert [p.id for p in cat] == ["welcome", "goodbye"]  # by number
    assert cat.get("welcome").text == {"en": "Welcome.", "es": "Bienvenido."}
    assert cat.get("welcome").used_in == ("access",)
    assert cat.by_number(604).id == "goodbye" and cat.by_number(5) is None
    assert cat.voice("es") == "es" and cat.voice("en") == "en-us"
    with pytest.raises(UnknownPrompt, match="no prompt 'nope'"):
        cat.get("nope")


def _bad(snippet: str, head: str = 'languages = ["en", "es"]') -> str:
    return f"[catalogue]\n{head}\n\n{snippet}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = not toml [", "not valid TOML"),
        ("[prompts.a]\nnumber = 1\ntext.en = 'x'\n", "missing \\[catalogue\\]"),
        (_bad("", head="languages = []"), "languages must be a non-empty list"),
        (_bad("", head='languages = ["english"]'), "languages must be"),
        (_bad("", head='languages = ["en", "en"]'), "repeats a language"),
        (_bad("", head='languages = ["en"]\ncolour = "red"'), "unknown key\\(s\\) colour"),
        (_bad(""), "no \\[prompts.<id>\\] entries"),
        (_bad("[prompts.Welcome]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'"),
         "prompt 'Welcome': an id is lower-case"),
        (_bad("[prompts.a]\ntext.en = 'a'\ntext.es = 'b'"), "prompt 'a': number must be"),
        (_bad("[prompts.a]\nnumber = '7'\ntext.en = 'a'\ntext.es = 'b'"), "number must be"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'\n"
              "[prompts.b]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'"),
         "prompt 'b': number 1 is already prompt 'a'"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'"), "prompt 'a': no text for language 'es'"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'\ntext.es = '  '"),
         "no text for language 'es'"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'\ntext.fr = 'c'"),
         "language\\(s\\) fr not in"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'\nwhere = 'x'"),
         "prompt 'a': unknown key\\(s\\) where"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'\nused_in = 'access'"),
         "used_in must be a list"),
        (_bad("[prompts.a]\nnumber = 1\ntext.en = 'a'\ntext.es = 'b'\n"
              "[prompts.a]\nnumber = 2"), "not valid TOML"),  # duplicate id
    ],
)
def test_bad_catalogues_are_refused_with_the_reason(text, message):
    with pytest.raises(CatalogueError, match=message):
        parse_catalogue(text, "cat.toml")


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read the prompt catalogue"):
        load_catalogue(tmp_path / "nope.toml")


def test_text_hash_ignores_spacing_only():
    assert text_hash("Hello  world.\n") == text_hash("Hello world.")
    assert text_hash("Hello world.") != text_hash("Hello world!")


def test_the_project_catalogue_is_complete():
    cat = load_catalogue()
    assert cat.languages == ("en", "es")
    needed = {
        "welcome", "enter-card-number", "enter-pin", "wrong-pin", "card-locked",
        "card-expired", "card-empty", "your-balance-is", "enter-destination",
        "unknown-destination", "you-have", "busy", "no-answer", "congestion",
        "low-balance-warning", "topup-menu", "goodbye", "op-enter-pin",
        "op-enter-prompt-number", "op-record-after-beep", "op-review-menu",
    }
    assert needed <= set(cat.prompts)
    numbers = [p.number for p in cat]
    assert len(numbers) == len(set(numbers))


# ------------------------------------------------------------------ coverage of the code


def test_every_prompt_id_the_flows_use_is_in_the_catalogue():
    cat = load_catalogue()
    uses = scan_files(flow_files())
    assert any(u.prompt_id == "op-enter-pin" for u in uses)  # the scan does see the flows
    dynamic = [f"{u.file}:{u.line}" for u in uses if u.prompt_id is None]
    assert not dynamic, f"prompt ids must be literals so they can be checked: {dynamic}"
    missing = [f"{u.file}:{u.line} {u.prompt_id}" for u in uses if u.prompt_id not in cat]
    assert not missing, f"prompt ids not in prompts/catalogue.toml: {missing}"


def test_every_word_the_say_helpers_use_is_in_the_catalogue():
    cat = load_catalogue()
    assert word_ids() - set(cat.prompts) == set()
    for lang, sounds in CORE_SOUNDS.items():
        assert lang in cat.languages
        assert set(sounds) <= set(cat.prompts)  # a core sound stands in for a catalogue word


def test_the_scan_finds_unknown_and_unchecked_ids():
    source = '''
from ivr import prompts
from ivr.prompts import ask as ask_for

async def flow(call, which):
    await prompts.play(call, "welcome")
    await prompts.play(call, "no-such-prompt")
    await ask_for(call, "enter-pin", 5000, secret=True)
    await prompts.path(call, prompt_id="goodbye")
    await prompts.play(call, which)
    await call.stream_file("hello-world")
'''
    uses = scan_source(source)
    assert [u.prompt_id for u in uses] == [
        "welcome", "no-such-prompt", "enter-pin", "goodbye", None]
    assert [u.prompt_id for u in uses if u.prompt_id not in load_catalogue()] == [
        "no-such-prompt", None]


def test_after_a_build_every_entry_has_audio_in_every_language(tmp_path):
    """Offline, from an empty store: espeak-ng speech for the whole catalogue."""
    from ivr.prompts import PromptStore
    from ivr.prompts.build import build

    cat = load_catalogue()
    store = PromptStore(tmp_path, str(tmp_path))
    assert len(store.missing(cat)) == 2 * len(cat)
    report = build(cat, store, progress=False)
    assert len(report.made) == 2 * len(cat)
    assert store.missing(cat) == []
    # and the check does notice a hole
    version = store.current("goodbye", "es")
    store.version_base("goodbye", "es", version.version).with_suffix(".ulaw").unlink()
    assert store.missing(cat) == [("goodbye", "es")]
