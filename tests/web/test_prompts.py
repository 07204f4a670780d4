"""Prompts in a real Chromium, on a prompt store of the test's own (speech made by
espeak-ng, recordings converted by sox, as ``ivr prompts`` does; no Asterisk): the list
shows each prompt's source and version, its audio plays in the browser, an uploaded
recording becomes the next version, and restoring goes back; both audited."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from ivr.db.models import AuditEntry
from ivr.prompts import PromptStore, Voice
from ivr.prompts.build import build
from ivr.prompts.catalogue import parse_catalogue
from ivr.testing.browser import ConsoleSite

# One browser and one event loop for the session (tests/web/conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

CATALOGUE = """
[catalogue]
languages = ["en", "es"]

[prompts.welcome]
number = 101
used_in = ["access: first thing a caller hears"]
text.en = "Welcome."
text.es = "Bienvenido."
"""


@pytest.fixture
async def store(site: ConsoleSite, tmp_path: Path) -> PromptStore:
    """The console's prompts: a catalogue of one prompt, its English made by espeak-ng."""
    catalogue = parse_catalogue(CATALOGUE)
    store = PromptStore(tmp_path / "prompts", str(tmp_path / "prompts"))
    await asyncio.to_thread(build, catalogue, store, langs=("en",), progress=False)
    site.app.voice = Voice(catalogue, store)
    return store


def tone(path: Path) -> bytes:
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(path), "synth", "1", "sine",
                    "440", "vol", "0.3"], check=True, capture_output=True)
    return path.read_bytes()


async def upload(page, name: str, content: bytes, reason: str) -> None:
    await page.select_option("form#upload select[name=lang]", "en")
    await page.set_input_files("form#upload input[name=recording]", files=[
        {"name": name, "mimeType": "application/octet-stream", "buffer": content}])
    await page.fill("form#upload input[name=reason]", reason)
    async with page.expect_navigation():
        await page.click("form#upload button[type=submit]")


async def test_list_listen_upload_and_restore(site: ConsoleSite, store: PromptStore, page,
                                              tmp_path: Path):
    await site.log_in(page, "admin", then="/prompts")
    en = page.locator("#prompts tr[data-prompt=welcome][data-lang=en]")
    assert await en.get_attribute("data-source") == "tts"
    assert await en.locator("[data-source-name]").inner_text() == "generated (espeak)"
    assert await en.locator("[data-version]").inner_text() == "1"
    es = page.locator("#prompts tr[data-prompt=welcome][data-lang=es]")
    assert await es.get_attribute("data-source") == "missing"

    # Its audio: a WAV file the browser plays.
    src = await en.locator("audio").get_attribute("src")
    response = await page.request.get(f"{site.url}{src}")
    body = await response.body()
    assert response.status == 200 and response.headers["content-type"] == "audio/wav"
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    duration = await en.locator("audio").evaluate(
        """audio => new Promise((ok, bad) => {
             audio.onloadedmetadata = () => ok(audio.duration);
             audio.onerror = () => bad(new Error("cannot play: " + audio.error.code));
             audio.preload = "auto"; audio.load(); })""")
    assert duration > 0.2

    # A file that is not audio: the message next to the field; nothing changes.
    await page.goto(f"{site.url}/prompts/welcome")
    await upload(page, "welcome.wav", b"this is not a recording", "studio take")
    assert await page.locator("em.error[data-field=recording]").count() == 1
    assert "cannot be used" in await page.inner_text("em.error[data-field=recording]")
    await upload(page, "welcome.txt", b"hello", "studio take")
    assert "not an audio file" in await page.inner_text("em.error[data-field=recording]")
    assert store.current("welcome", "en").version == 1

    # A studio recording: version 2, recorded, current.
    await upload(page, "welcome-take2.wav", tone(tmp_path / "take.wav"), "studio take")
    assert "Version 2 (en) is current" in await page.inner_text("#notice")
    current = store.current("welcome", "en")
    assert (current.version, current.source, current.by) == (2, "recorded", "admin")
    assert current.origin == "import:welcome-take2.wav"
    assert await page.get_attribute("#lang-en", "data-current") == "2"
    await page.goto(f"{site.url}/prompts")
    assert await en.get_attribute("data-source") == "recorded"
    assert await en.locator("[data-version]").inner_text() == "2"
    response = await page.request.get(f"{site.url}/prompts/audio/en/welcome/v2.wav")
    assert response.status == 200 and (await response.body())[:4] == b"RIFF"

    # A viewer cannot restore, even by posting directly.
    await site.log_in(page, "viewer", then="/prompts/welcome")
    assert await page.locator("form.restore").count() == 0
    csrf = await page.get_attribute("header input[name=csrf]", "value")
    response = await page.request.post(f"{site.url}/prompts/welcome/restore", max_redirects=0,
                                       form={"csrf": csrf, "lang": "en", "version": "1",
                                             "reason": "x"})
    assert response.status == 403 and store.current("welcome", "en").version == 2

    # Restore version 1: the speech is current again.
    await site.log_in(page, "admin", then="/prompts/welcome")
    restore = page.locator("#lang-en tr[data-version='1'] form.restore")
    await restore.locator("input[name=reason]").fill("the take was too quiet")
    async with page.expect_navigation():
        await restore.locator("button").click()
    assert "Version 1 (en) is current again" in await page.inner_text("#notice")
    assert store.current("welcome", "en").version == 1
    assert await page.get_attribute("#lang-en", "data-current") == "1"

    with site.app.db.reading() as s:
        rows = s.execute(select(AuditEntry.action, AuditEntry.target, AuditEntry.reason)
                         .order_by(AuditEntry.id)).all()
    assert [tuple(r) for r in rows] == [
        ("prompts.upload", "prompt:welcome/en", "studio take"),
        ("prompts.restore", "prompt:welcome/en", "the take was too quiet")]
