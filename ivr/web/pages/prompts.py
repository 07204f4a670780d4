"""Prompts: every prompt and language with its source and version, listened to in the
browser (the store keeps each version as an 8 kHz WAV, served as is), a recording
uploaded to replace one (admin; converted as ``ivr prompts import`` does) and an earlier
version made current again (admin). Both changes are audited.

The prompts are the application's (``app.voice``: its catalogue and prompt store).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from ...prompts import CatalogueError, ManifestError, PromptStore, UnknownPrompt
from ...prompts.audio import AudioError
from ...prompts.build import Recording, commit_recording, discard_recording, prepare_recording
from ...prompts.catalogue import Catalogue, Prompt
from ...prompts.status import SOURCE_NAMES, prompt_status
from .. import audit
from ..http import actor, console, form, page, render
from ..users import Role, Who

MAX_RECORDING_BYTES = 20 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def _voice(request: Request) -> tuple[Catalogue, PromptStore]:
    voice = console(request).app.voice
    return voice.catalogue, voice.store


def _prompt(catalogue: Catalogue, prompt_id: str) -> Prompt:
    try:
        return catalogue.get(prompt_id)
    except UnknownPrompt:
        raise HTTPException(404, f"no prompt {prompt_id!r} in the catalogue") from None


@page()
async def index(request: Request, who: Who) -> Response:
    catalogue, store = _voice(request)
    try:
        rows = await asyncio.to_thread(prompt_status, catalogue, store)
    except ManifestError as exc:
        return render(request, "prompts/index.html", who, status=500, rows=[], failure=str(exc),
                      store=store, sources=SOURCE_NAMES)
    return render(request, "prompts/index.html", who, rows=rows, store=store,
                  sources=SOURCE_NAMES)


async def _detail(request: Request, who: Who, prompt: Prompt, *, status: int = 200,
                  **context: Any) -> Response:
    catalogue, store = _voice(request)
    rows = await asyncio.to_thread(prompt_status, catalogue, store)
    context.setdefault("errors", {})
    context.setdefault("form", {})
    return render(request, "prompts/detail.html", who, status=status, prompt=prompt,
                  rows=[r for r in rows if r.prompt.id == prompt.id],
                  languages=catalogue.languages, sources=SOURCE_NAMES, **context)


@page()
async def detail(request: Request, who: Who) -> Response:
    catalogue, _ = _voice(request)
    prompt = _prompt(catalogue, request.path_params["prompt_id"])
    query = request.query_params
    notice = None
    if query.get("current", "").isdigit() and query.get("lang") in catalogue.languages:
        notice = (f"Version {query['current']} ({query['lang']}) is current"
                  + (" again." if query.get("restored") else "."))
    return await _detail(request, who, prompt, notice=notice)


@page()
async def audio(request: Request, who: Who) -> Response:
    """A version's audio as the WAV file the store keeps (8 kHz mono 16-bit)."""
    catalogue, store = _voice(request)
    prompt = _prompt(catalogue, request.path_params["prompt_id"])
    lang = request.path_params["lang"]
    number = request.path_params["version"]
    history = store.manifest().get(prompt.id, lang) if lang in catalogue.languages else None
    if history is None or history.find(number) is None:
        raise HTTPException(404, f"prompt {prompt.id} ({lang}) has no version {number}")
    base = store.version_base(prompt.id, lang, number)
    path = base.with_name(f"{base.name}.wav")
    if not path.is_file():
        raise HTTPException(404, f"the audio of {prompt.id} ({lang}) version {number} is "
                                 "missing from the store")
    return FileResponse(path, media_type="audio/wav",
                        filename=f"{prompt.id}-{lang}-v{number}.wav",
                        content_disposition_type="inline")


@page(Role.ADMIN)
async def upload(request: Request, who: Who) -> Response:
    """A studio recording (WAV, MP3, FLAC, Ogg) made the prompt's new current version."""
    c = console(request)
    catalogue, store = _voice(request)
    prompt = _prompt(catalogue, request.path_params["prompt_id"])
    data = await form(request)
    lang = str(data.get("lang") or "")
    reason = str(data.get("reason") or "").strip()
    file = data.get("recording")
    errors: dict[str, str] = {}
    if lang not in catalogue.languages:
        errors["lang"] = f"choose one of {', '.join(catalogue.languages)}"
    if not reason:
        errors["reason"] = "say why (kept in the audit log)"
    if not isinstance(file, UploadFile) or not file.filename:
        errors["recording"] = "choose an audio file"
    given = {"lang": lang, "reason": reason}
    if errors or not isinstance(file, UploadFile):
        return await _detail(request, who, prompt, status=400, errors=errors, form=given)
    name = _SAFE_NAME.sub("_", Path(file.filename or "").name)[:100] or "recording"
    content = await file.read()
    if len(content) > MAX_RECORDING_BYTES:
        errors["recording"] = f"{name} is larger than {MAX_RECORDING_BYTES // 2**20} MB"
    elif not content:
        errors["recording"] = f"{name} is empty"
    if errors:
        return await _detail(request, who, prompt, status=400, errors=errors, form=given)
    try:
        recording = await asyncio.to_thread(_prepare, catalogue, store, prompt.id, lang,
                                            name, content)
    except (CatalogueError, AudioError) as exc:
        return await _detail(request, who, prompt, status=400, form=given,
                             errors={"recording": str(exc)})
    who_did = actor(request, who)

    def commit() -> int:
        try:
            with c.db.transaction() as s:
                version = commit_recording(store, recording, by=who.name)
                audit.record(s, who_did, "prompts.upload", f"prompt:{prompt.id}/{lang}",
                             reason=reason, detail={"version": version.version, "file": name,
                                                    "duration": version.duration})
                return version.version
        finally:
            discard_recording(recording)

    number = await c.run(commit)
    return RedirectResponse(
        f"/prompts/{prompt.id}?current={number}&lang={lang}", 303)


def _prepare(catalogue: Catalogue, store: PromptStore, prompt_id: str, lang: str,
             name: str, content: bytes) -> Recording:
    work = Path(tempfile.mkdtemp(prefix="upload-", dir=store.tmp_dir))
    try:
        source = work / f"upload{Path(name).suffix.lower()}"
        source.write_bytes(content)
        return prepare_recording(catalogue, store, prompt_id, lang, source, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@page(Role.ADMIN)
async def restore(request: Request, who: Who) -> Response:
    """Make an earlier version current again."""
    c = console(request)
    catalogue, store = _voice(request)
    prompt = _prompt(catalogue, request.path_params["prompt_id"])
    data = await form(request)
    lang = str(data.get("lang") or "")
    reason = str(data.get("reason") or "").strip()
    version_text = str(data.get("version") or "")
    if lang not in catalogue.languages or not version_text.isdigit():
        return await _detail(request, who, prompt, status=400,
                             failure="choose a version of a language to restore")
    if not reason:
        return await _detail(request, who, prompt, status=400, restore_lang=lang,
                             restore_version=int(version_text),
                             failure="say why you restore it (kept in the audit log)")
    number = int(version_text)
    who_did = actor(request, who)

    def change() -> None:
        with c.db.transaction() as s:
            before = store.current(prompt.id, lang)
            version = store.restore(prompt.id, lang, number)
            audit.record(s, who_did, "prompts.restore", f"prompt:{prompt.id}/{lang}",
                         reason=reason, detail={"version": version.version,
                                                "from": before.version if before else None})

    try:
        await c.run(change)
    except ManifestError as exc:
        return await _detail(request, who, prompt, status=400, failure=str(exc))
    return RedirectResponse(
        f"/prompts/{prompt.id}?current={number}&lang={lang}&restored=1", 303)


routes = [
    Route("/prompts", index, methods=["GET"]),
    Route("/prompts/audio/{lang:str}/{prompt_id:str}/v{version:int}.wav", audio,
          methods=["GET"]),
    Route("/prompts/{prompt_id:str}", detail, methods=["GET"]),
    Route("/prompts/{prompt_id:str}/upload", upload, methods=["POST"]),
    Route("/prompts/{prompt_id:str}/restore", restore, methods=["POST"]),
]
