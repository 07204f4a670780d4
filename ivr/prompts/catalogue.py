"""The prompt catalogue: ``prompts/catalogue.toml``.

Each prompt has a stable id (what the code uses), a stable number (what an operator types
on the recording line), its text in every configured language, and free-text notes on
where it is used::

    [catalogue]
    languages = ["en", "es"]        # the first one is the fallback
    voices = { en = "en-us", es = "es-419" }   # espeak-ng voices

    [prompts.welcome]
    number = 101
    used_in = ["access: first thing a caller hears"]
    text.en = "Welcome to your prepaid calling service."
    text.es = "Bienvenido a su servicio de llamadas prepago."

Anything malformed is refused with a :class:`CatalogueError` naming the file, the prompt
and the problem.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ID_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
LANG_RE = re.compile(r"^[a-z]{2,3}$")
DEFAULT_VOICES = {"en": "en-us", "es": "es-419"}
PROMPT_KEYS = {"number", "text", "used_in"}
CATALOGUE_KEYS = {"languages", "voices"}


class CatalogueError(ValueError):
    """The catalogue file is malformed; the message says where and why."""


def default_catalogue_path() -> Path:
    """``prompts/catalogue.toml`` of the checkout the package runs from."""
    return Path(__file__).resolve().parents[2] / "prompts" / "catalogue.toml"


def text_hash(text: str) -> str:
    """What "the text changed" means for a build: a hash of the whitespace-normalised text."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    id: str
    number: int
    text: dict[str, str]
    used_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalogue:
    languages: tuple[str, ...]
    prompts: dict[str, Prompt]
    voices: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def default_language(self) -> str:
        return self.languages[0]

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.prompts

    def __iter__(self) -> Iterator[Prompt]:
        return iter(sorted(self.prompts.values(), key=lambda p: p.number))

    def __len__(self) -> int:
        return len(self.prompts)

    def get(self, prompt_id: str) -> Prompt:
        try:
            return self.prompts[prompt_id]
        except KeyError:
            raise UnknownPrompt(prompt_id) from None

    def by_number(self, number: int) -> Prompt | None:
        for prompt in self.prompts.values():
            if prompt.number == number:
                return prompt
        return None

    def voice(self, lang: str) -> str:
        return self.voices.get(lang) or DEFAULT_VOICES.get(lang) or lang

    def check_languages(self, langs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        unknown = [lang for lang in langs if lang not in self.languages]
        if unknown:
            raise CatalogueError(
                f"language(s) {', '.join(unknown)} not in the catalogue "
                f"(it has {', '.join(self.languages)})"
            )
        return tuple(langs)


class UnknownPrompt(KeyError):
    """A prompt id that is not in the catalogue."""

    def __str__(self) -> str:
        return f"no prompt {self.args[0]!r} in the catalogue"


def parse_catalogue(text: str, source: str = "catalogue.toml") -> Catalogue:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: not valid TOML: {exc}") from None

    unknown_top = set(data) - {"catalogue", "prompts"}
    if unknown_top:
        raise CatalogueError(f"{source}: unknown table(s) {', '.join(sorted(unknown_top))}")
    head = data.get("catalogue")
    if not isinstance(head, dict):
        raise CatalogueError(f"{source}: missing [catalogue] table with languages = [...]")
    extra = set(head) - CATALOGUE_KEYS
    if extra:
        raise CatalogueError(f"{source}: [catalogue]: unknown key(s) {', '.join(sorted(extra))}")
    languages = head.get("languages")
    if (
        not isinstance(languages, list)
        or not languages
        or not all(isinstance(lang, str) and LANG_RE.match(lang) for lang in languages)
    ):
        raise CatalogueError(
            f"{source}: [catalogue] languages must be a non-empty list of language codes "
            f"like [\"en\", \"es\"], not {languages!r}"
        )
    if len(set(languages)) != len(languages):
        raise CatalogueError(f"{source}: [catalogue] languages repeats a language")
    voices = head.get("voices", {})
    if not isinstance(voices, dict) or not all(isinstance(v, str) for v in voices.values()):
        raise CatalogueError(f"{source}: [catalogue] voices must map a language to a voice name")

    table = data.get("prompts")
    if not isinstance(table, dict) or not table:
        raise CatalogueError(f"{source}: no [prompts.<id>] entries")
    prompts: dict[str, Prompt] = {}
    numbers: dict[int, str] = {}
    for prompt_id, entry in table.items():
        where = f"{source}: prompt {prompt_id!r}"
        if not ID_RE.match(prompt_id):
            raise CatalogueError(
                f"{where}: an id is lower-case letters, digits and single dashes, "
                "starting with a letter"
            )
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: must be a table")
        extra = set(entry) - PROMPT_KEYS
        if extra:
            raise CatalogueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        number = entry.get("number")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 9999:
            raise CatalogueError(f"{where}: number must be an integer 1-9999, not {number!r}")
        if number in numbers:
            raise CatalogueError(
                f"{where}: number {number} is already prompt {numbers[number]!r}"
            )
        numbers[number] = prompt_id
        texts = entry.get("text")
        if not isinstance(texts, dict):
            raise CatalogueError(f"{where}: missing text.<lang> = \"...\"")
        for lang in languages:
            value = texts.get(lang)
            if not isinstance(value, str) or not value.strip():
                raise CatalogueError(f"{where}: no text for language {lang!r}")
        stray = set(texts) - set(languages)
        if stray:
            raise CatalogueError(
                f"{where}: text for language(s) {', '.join(sorted(stray))} not in "
                "[catalogue] languages"
            )
        used_in = entry.get("used_in", [])
        if not isinstance(used_in, list) or not all(isinstance(u, str) for u in used_in):
            raise CatalogueError(f"{where}: used_in must be a list of strings")
        prompts[prompt_id] = Prompt(
            prompt_id, number, {lang: " ".join(texts[lang].split()) for lang in languages},
            tuple(used_in),
        )
    return Catalogue(tuple(languages), prompts, dict(voices))


def load_catalogue(path: Path | None = None) -> Catalogue:
    path = path or default_catalogue_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"cannot read the prompt catalogue {path}: {exc}") from None
    catalogue = parse_catalogue(text, str(path))
    return Catalogue(catalogue.languages, catalogue.prompts, catalogue.voices, path)
