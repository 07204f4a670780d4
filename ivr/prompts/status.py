"""Where every prompt stands in a store: per prompt and language, the current version's
source (speech made by an engine, or recorded by a person), number and duration, and
what is wrong with it (audio missing, text changed since). Used by ``ivr prompts status``
and the console's prompts page."""

from __future__ import annotations

from dataclasses import dataclass

from .catalogue import Catalogue, Prompt, text_hash
from .store import History, PromptStore, Version

SOURCE_NAMES = {"tts": "generated", "recorded": "recorded", "missing": "missing"}


@dataclass(frozen=True)
class PromptStatus:
    prompt: Prompt
    lang: str
    source: str  # "tts", "recorded" or "missing"
    current: Version | None  # None: no version at all
    history: History | None
    note: str = ""

    @property
    def version(self) -> int | None:
        return self.current.version if self.current else None

    @property
    def duration(self) -> float | None:
        return self.current.duration if self.current else None

    @property
    def source_name(self) -> str:
        """For people: generated (speech engine), recorded or missing."""
        return SOURCE_NAMES[self.source]


def prompt_status(catalogue: Catalogue, store: PromptStore,
                  langs: tuple[str, ...] | None = None) -> list[PromptStatus]:
    """Every prompt of the catalogue (by number) in every language of ``langs`` (default:
    the catalogue's)."""
    langs = catalogue.check_languages(langs or catalogue.languages)
    manifest = store.manifest()
    rows = []
    for prompt in catalogue:
        for lang in langs:
            history = manifest.get(prompt.id, lang)
            version = history.current_version if history else None
            source, note = "missing", ""
            if version is not None:
                source = version.source
                if not store.has_audio(prompt.id, lang, version.version):
                    source, note = "missing", "audio files missing"
                elif version.text_hash != text_hash(prompt.text[lang]):
                    note = ("text changed since recorded" if version.source == "recorded"
                            else "out of date: run ivr prompts build")
            rows.append(PromptStatus(prompt, lang, source, version, history, note))
    return rows
