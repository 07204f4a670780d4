"""Building speech for the catalogue, and importing studio recordings.

A build makes a new ``tts`` version for each (prompt, language) whose current version is
missing, or is speech made from other text (text hash) or by another engine. Prompts
recorded by a person (imported or by phone) are never replaced by a build. Speech is made
in parallel worker threads; each finished prompt is committed to the manifest on its own,
so an interrupted build keeps what it finished.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .audio import (
    ENGINES,
    STUDIO_EFFECTS,
    TTS_EFFECTS,
    AudioError,
    EngineUnavailable,
    sox_formats,
    speak_espeak,
    speak_gtts,
    to_asterisk,
)
from .catalogue import Catalogue, CatalogueError, Prompt, text_hash
from .store import PromptStore, Version

IMPORT_TYPES = ("wav", "mp3", "flac", "ogg")


@dataclass
class BuildReport:
    made: list[tuple[str, str]] = field(default_factory=list)
    up_to_date: list[tuple[str, str]] = field(default_factory=list)
    recorded: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{len(self.made)} made, {len(self.up_to_date)} up to date, "
                f"{len(self.recorded)} recorded by a person (kept) in {self.seconds:.1f}s")


class Progress:
    """A progress bar (tqdm) on stderr or ``stream``: redrawn in place on a terminal, else
    a line about every tenth of the way."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        from tqdm import tqdm

        self.total = total
        self.done = 0
        stream = stream or sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc=label, file=stream if tty else _Lines(stream),
                        unit="prompt",
                        disable=not (enabled and total > 0), leave=True,
                        dynamic_ncols=tty, ncols=None if tty else 100,
                        mininterval=0.1 if tty else 0, miniters=1 if tty
                        else max(1, total // 10))

    def step(self, what: str) -> None:
        self.done += 1
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(1)
        if self.done == self.total:
            self.bar.close()


class _Lines:
    """A stream that is no terminal gets tqdm's redraws as whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def plan_build(catalogue: Catalogue, store: PromptStore, langs: tuple[str, ...], engine: str,
               *, force: bool = False, only_missing: bool = False
               ) -> tuple[list[tuple[Prompt, str]], BuildReport]:
    """What a build must make; the report already lists what it skips. ``only_missing``:
    only prompts with no playable version (speech from older text or another engine is
    kept, counted up to date)."""
    report = BuildReport()
    todo: list[tuple[Prompt, str]] = []
    manifest = store.manifest()
    for prompt in catalogue:
        for lang in langs:
            current = manifest.current(prompt.id, lang)
            if current is not None and current.source == "recorded":
                report.recorded.append((prompt.id, lang))
                continue
            if (
                not force
                and current is not None
                and (only_missing or (current.text_hash == text_hash(prompt.text[lang])
                                      and current.engine == engine))
                and store.has_audio(prompt.id, lang, current.version)
            ):
                report.up_to_date.append((prompt.id, lang))
                continue
            todo.append((prompt, lang))
    return todo, report


def build(
    catalogue: Catalogue,
    store: PromptStore,
    *,
    langs: tuple[str, ...] | None = None,
    engine: str = "espeak",
    force: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
    workers: int | None = None,
    only_missing: bool = False,
) -> BuildReport:
    """Make speech for every out-of-date prompt of the catalogue in ``langs`` (with
    ``only_missing``: for every prompt without audio, see :func:`plan_build`)."""
    if engine not in ENGINES:
        raise AudioError(f"unknown speech engine {engine!r}; choose {' or '.join(ENGINES)}")
    langs = catalogue.check_languages(langs or catalogue.languages)
    started = time.monotonic()
    todo, report = plan_build(catalogue, store, langs, engine, force=force,
                              only_missing=only_missing)
    if not todo:
        report.seconds = time.monotonic() - started
        return report
    if engine == "gtts" and "mp3" not in sox_formats():
        raise EngineUnavailable("gTTS makes MP3 and this sox cannot read MP3: install "
                                "libsox-fmt-mp3")
    bar = Progress(len(todo), f"prompts ({engine})", stream, progress)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=store.tmp_dir))
    try:
        make = _speaker(catalogue, engine, work)
        if engine == "gtts":
            # Fail once, clearly, before starting many requests that would all fail.
            first_prompt, first_lang = todo[0]
            _commit(store, make, first_prompt, first_lang, engine, catalogue)
            report.made.append((first_prompt.id, first_lang))
            bar.step(f"{first_prompt.id} ({first_lang})")
            todo = todo[1:]
        with ThreadPoolExecutor(max_workers=workers or 4) as pool:
            futures = {
                pool.submit(_commit, store, make, prompt, lang, engine, catalogue): (prompt, lang)
                for prompt, lang in todo
            }
            try:
                for future in as_completed(futures):
                    prompt, lang = futures[future]
                    future.result()
                    report.made.append((prompt.id, lang))
                    bar.step(f"{prompt.id} ({lang})")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def build_missing(store: PromptStore, *, progress: bool = True,
                  stream: TextIO | None = None) -> BuildReport:
    """Offline speech (espeak-ng) for every catalogue prompt the store has no audio for:
    run when an Asterisk instance starts, so a bare start plays the prompts. Quick when
    nothing is missing; never replaces a prompt that has audio (recorded, or made by
    gTTS or from older text: `ivr prompts build` brings those up to date)."""
    from .catalogue import load_catalogue

    return build(load_catalogue(), store, progress=progress, stream=stream,
                 only_missing=True)


def missing_message(store: PromptStore, catalogue: Catalogue) -> str | None:
    """One line for an operator when prompts have no audio (None when all have)."""
    missing = store.missing(catalogue)
    if not missing:
        return None
    shown = ", ".join(f"{pid} ({lang})" for pid, lang in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (f"{len(missing)} voice prompt(s) have no audio in {store.host_dir} ({shown}{more}): "
            "calls that need them hear 'service unavailable'; run `ivr prompts build` "
            "(or `ivr asterisk up`, which builds missing ones)")


def _speaker(catalogue: Catalogue, engine: str, work: Path
             ) -> Callable[[Prompt, str], tuple[Path, float]]:
    def make(prompt: Prompt, lang: str) -> tuple[Path, float]:
        stem = work / f"{prompt.id}.{lang}"
        if engine == "espeak":
            raw = stem.with_name(stem.name + ".speech.wav")
            speak_espeak(prompt.text[lang], catalogue.voice(lang), raw)
        else:
            raw = stem.with_name(stem.name + ".speech.mp3")
            speak_gtts(prompt.text[lang], lang, raw)
        duration = to_asterisk(raw, stem, TTS_EFFECTS)
        raw.unlink(missing_ok=True)
        return stem, duration

    return make


def _commit(store: PromptStore, make: Callable[[Prompt, str], tuple[Path, float]],
            prompt: Prompt, lang: str, engine: str, catalogue: Catalogue) -> None:
    stem, duration = make(prompt, lang)
    store.add_version(
        prompt.id, lang, stem, source="tts", duration=duration,
        text_hash=text_hash(prompt.text[lang]), engine=engine,
        voice=catalogue.voice(lang) if engine == "espeak" else lang,
    )


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportItem:
    path: Path
    prompt: Prompt
    lang: str


def plan_import(catalogue: Catalogue, directory: Path, lang: str | None = None
                ) -> list[ImportItem]:
    """Match the files of ``directory`` to prompts, refusing the whole import on any
    problem (so nothing is half imported).

    A file is ``<id>.<ext>`` or ``<number>.<ext>``, either at the top (language ``lang``,
    default the catalogue's first) or in a ``<lang>/`` subdirectory.
    """
    if not directory.is_dir():
        raise CatalogueError(f"{directory} is not a directory")
    default_lang = lang or catalogue.default_language
    catalogue.check_languages([default_lang])
    readable = sox_formats()
    items: list[ImportItem] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], Path] = {}
    candidates = [(p, default_lang) for p in sorted(directory.iterdir()) if p.is_file()]
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if sub.name in catalogue.languages and (lang is None or sub.name == lang):
            candidates += [(p, sub.name) for p in sorted(sub.iterdir()) if p.is_file()]
    for path, file_lang in candidates:
        if path.name.startswith("."):
            continue
        problem = type_problem(path.name, readable)
        if problem:
            problems.append(problem)
            continue
        stem = path.stem
        prompt = (catalogue.by_number(int(stem)) if stem.isdigit()
                  else catalogue.prompts.get(stem))
        if prompt is None:
            problems.append(f"{path.name}: no prompt with that id or number in the catalogue")
            continue
        key = (prompt.id, file_lang)
        if key in seen:
            problems.append(f"{path.name}: {prompt.id} ({file_lang}) is also {seen[key].name}")
            continue
        seen[key] = path
        items.append(ImportItem(path, prompt, file_lang))
    if problems:
        raise CatalogueError("import refused, nothing was imported:\n  " + "\n  ".join(problems))
    if not items:
        raise CatalogueError(f"no recordings in {directory}")
    return items


def type_problem(name: str, readable: set[str] | None = None) -> str | None:
    """Why a file of this name cannot be imported (None: its type can)."""
    ext = Path(name).suffix.lower().lstrip(".")
    if ext not in IMPORT_TYPES:
        return f"{name}: not an audio file this import takes ({', '.join(IMPORT_TYPES)})"
    if ext not in (sox_formats() if readable is None else readable):
        hint = " (install libsox-fmt-mp3)" if ext == "mp3" else ""
        return f"{name}: this sox cannot read .{ext}{hint}"
    return None


@dataclass(frozen=True)
class Recording:
    """A studio recording converted for Asterisk (``stem.wav``/``stem.ulaw`` in a work
    directory of the store), not yet a version: see :func:`commit_recording`."""

    prompt: Prompt
    lang: str
    stem: Path
    duration: float
    origin: str


def prepare_recording(catalogue: Catalogue, store: PromptStore, prompt_id: str, lang: str,
                      source: Path, name: str | None = None) -> Recording:
    """Check and convert one recording of ``prompt_id`` in ``lang`` (trimmed and
    normalised as ``ivr prompts import`` does); CatalogueError or AudioError, with
    nothing changed, when it cannot be used. ``name``: the file's name as its owner
    knows it (default ``source``'s)."""
    prompt = catalogue.get(prompt_id)
    catalogue.check_languages([lang])
    name = name or source.name
    problem = type_problem(name)
    if problem:
        raise CatalogueError(problem)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=store.tmp_dir))
    try:
        duration = to_asterisk(source, work / "recording", STUDIO_EFFECTS)
    except AudioError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise AudioError(f"{name}: cannot be used ({exc}); nothing was imported") from None
    return Recording(prompt, lang, work / "recording", duration, f"import:{name}")


def commit_recording(store: PromptStore, recording: Recording, *, by: str | None = None
                     ) -> Version:
    """Make a prepared recording the prompt's new current version."""
    try:
        return store.add_version(
            recording.prompt.id, recording.lang, recording.stem, source="recorded",
            duration=recording.duration,
            text_hash=text_hash(recording.prompt.text[recording.lang]),
            by=by, origin=recording.origin)
    finally:
        shutil.rmtree(recording.stem.parent, ignore_errors=True)


def discard_recording(recording: Recording) -> None:
    shutil.rmtree(recording.stem.parent, ignore_errors=True)


def import_recordings(catalogue: Catalogue, store: PromptStore, directory: Path,
                      lang: str | None = None, *, progress: bool = True,
                      stream: TextIO | None = None) -> list[tuple[ImportItem, float]]:
    """Convert, trim and normalise studio recordings and make each the current version."""
    items = plan_import(catalogue, directory, lang)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=store.tmp_dir))
    bar = Progress(len(items), "import", stream, progress)
    converted: list[tuple[ImportItem, Path, float]] = []
    try:
        # Convert everything first: one unreadable file refuses the import as a whole.
        for i, item in enumerate(items):
            stem = work / f"{i}"
            try:
                duration = to_asterisk(item.path, stem, STUDIO_EFFECTS)
            except AudioError as exc:
                raise AudioError(f"import refused, nothing was imported: {exc}") from None
            converted.append((item, stem, duration))
        done = []
        for item, stem, duration in converted:
            store.add_version(
                item.prompt.id, item.lang, stem, source="recorded", duration=duration,
                text_hash=text_hash(item.prompt.text[item.lang]),
                origin=f"import:{item.path.name}",
            )
            done.append((item, duration))
            bar.step(f"{item.prompt.id} ({item.lang})")
        return done
    finally:
        shutil.rmtree(work, ignore_errors=True)
