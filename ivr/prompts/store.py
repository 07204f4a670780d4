"""The prompt store: versioned audio files and a JSON manifest, in a directory Asterisk reads.

Layout (``<store>`` is ``AsteriskInstance.prompts_dir``: ``/ivr/<instance>/prompts`` inside
the sandbox root, ``<data_dir>/prompts`` for a system Asterisk)::

    <store>/manifest.json                 which version of each prompt/language is current
    <store>/<lang>/<id>/v<N>.wav          8 kHz mono 16-bit, one pair per version
    <store>/<lang>/<id>/v<N>.ulaw
    <store>/tmp/                          work files (conversions, phone recordings)

Asterisk plays ``<store>/<lang>/<id>/v<N>`` (an absolute path without extension, so it
picks the format). Version files are written first under a new name; the manifest is the
commit point, replaced atomically (temporary file, fsync, rename) under a file lock, so a
crash or a hang-up never leaves a half-written manifest or a current version without its
audio. Old versions are never deleted: any of them can be made current again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio import FORMATS
from .catalogue import ID_RE, LANG_RE, Catalogue

if TYPE_CHECKING:
    from ..asterisk import AsteriskInstall, AsteriskInstance

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
SOURCES = ("tts", "recorded")
RECHECK = 1.0  # seconds a play path may trust the manifest without looking at the file
MAX_PATHS = 10_000  # play paths kept per manifest read (prompt ids x languages)


class ManifestError(RuntimeError):
    """The manifest cannot be read, or a change to it is refused."""


@dataclass(frozen=True)
class Version:
    version: int
    source: str  # "tts" or "recorded" (by a person: imported or by phone)
    created_at: str
    duration: float  # seconds
    text_hash: str | None = None  # of the text it was made from (tts) or recorded for
    engine: str | None = None  # tts: espeak, gtts
    voice: str | None = None
    by: str | None = None  # recorded: the operator
    origin: str | None = None  # recorded: "phone", "import:<file name>"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        version = cls(**known)
        if not isinstance(version.version, int) or version.source not in SOURCES:
            raise ValueError(f"bad version entry {data!r}")
        return version


@dataclass
class History:
    """One prompt in one language: its versions and which one is current."""

    current: int
    versions: list[Version] = field(default_factory=list)

    @property
    def current_version(self) -> Version:
        for v in self.versions:
            if v.version == self.current:
                return v
        raise ManifestError(f"current version {self.current} is not in the history")

    def find(self, number: int) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def next_number(self) -> int:
        return max((v.version for v in self.versions), default=0) + 1

    def to_json(self) -> dict[str, Any]:
        cur = self.current_version
        return {
            "current": self.current,
            "source": cur.source,
            "text_hash": cur.text_hash,
            "versions": [v.to_json() for v in self.versions],
        }


class Manifest:
    def __init__(self, prompts: dict[str, dict[str, History]] | None = None) -> None:
        self.prompts: dict[str, dict[str, History]] = prompts or {}

    def get(self, prompt_id: str, lang: str) -> History | None:
        return self.prompts.get(prompt_id, {}).get(lang)

    def current(self, prompt_id: str, lang: str) -> Version | None:
        history = self.get(prompt_id, lang)
        return history.current_version if history else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "updated_at": _now(),
            "prompts": {
                pid: {lang: h.to_json() for lang, h in sorted(langs.items())}
                for pid, langs in sorted(self.prompts.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a format {MANIFEST_FORMAT} prompt manifest")
        prompts: dict[str, dict[str, History]] = {}
        for pid, langs in data.get("prompts", {}).items():
            for lang, entry in langs.items():
                versions = [Version.from_json(v) for v in entry["versions"]]
                history = History(int(entry["current"]), versions)
                history.current_version  # noqa: B018 - raises when inconsistent
                prompts.setdefault(pid, {})[lang] = history
        return cls(prompts)


class PromptStore:
    """A prompt store: ``host_dir`` is where this process finds it, ``inner_dir`` where
    Asterisk does (the same path for a system Asterisk)."""

    def __init__(self, host_dir: Path, inner_dir: str) -> None:
        self.host_dir = Path(host_dir)
        self.inner_dir = inner_dir.rstrip("/") or "/"
        self._manifest_file = str(self.host_dir / MANIFEST)
        self._cache: _Loaded | None = None

    def __repr__(self) -> str:
        return f"PromptStore({str(self.host_dir)!r}, {self.inner_dir!r})"

    # ------------------------------------------------------------------ where

    @classmethod
    def for_instance(cls, instance: AsteriskInstance) -> PromptStore:
        """The store of an Asterisk instance (the one place that decides where it is)."""
        inner = instance.prompts_dir
        return cls(instance.host(inner), inner)

    @classmethod
    def at(cls, host_dir: Path, install: AsteriskInstall) -> PromptStore:
        """A store in a directory given on the host; for a sandbox it must be inside the
        root, since Asterisk sees nothing else."""
        host_dir = Path(host_dir).resolve()
        if install.root is None:
            return cls(host_dir, str(host_dir))
        root = install.root.resolve()
        if not host_dir.is_relative_to(root):
            raise ManifestError(
                f"{host_dir} is outside the Asterisk sandbox root {root}: Asterisk could not "
                "play prompts from there"
            )
        return cls(host_dir, "/" + str(host_dir.relative_to(root)))

    @property
    def manifest_path(self) -> Path:
        return self.host_dir / MANIFEST

    @property
    def tmp_dir(self) -> Path:
        path = self.host_dir / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def inner(self, host_path: Path) -> str:
        """Where Asterisk sees a path of this store."""
        rel = Path(host_path).relative_to(self.host_dir)
        return f"{self.inner_dir}/{rel}"

    def version_base(self, prompt_id: str, lang: str, version: int) -> Path:
        """Host path of a version's files, without extension."""
        if not ID_RE.match(prompt_id) or not LANG_RE.match(lang):
            raise ManifestError(f"bad prompt id or language: {prompt_id!r} {lang!r}")
        return self.host_dir / lang / prompt_id / f"v{version}"

    def version_files(self, prompt_id: str, lang: str, version: int) -> list[Path]:
        base = self.version_base(prompt_id, lang, version)
        return [base.with_name(f"{base.name}.{ext}") for ext in FORMATS]

    def has_audio(self, prompt_id: str, lang: str, version: int) -> bool:
        return all(p.is_file() and p.stat().st_size > 0
                   for p in self.version_files(prompt_id, lang, version))

    # ------------------------------------------------------------------ reading

    def manifest(self) -> Manifest:
        """The manifest as it is on disk (re-read only when the file changed)."""
        loaded = self._load()
        return loaded.manifest if loaded.stamp is not None else Manifest()

    def _load(self) -> _Loaded:
        """The manifest file's stamp and contents, read again only when the stamp moved
        (a write replaces the file: a new inode)."""
        writes, now = _writes, time.monotonic()
        try:
            st = os.stat(self._manifest_file)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        cached = self._cache
        if cached is not None and cached.stamp == stamp:
            cached.checked_at, cached.writes = now, writes
            return cached
        manifest = self._read() if stamp is not None else Manifest()
        loaded = self._cache = _Loaded(stamp, manifest, now, writes)
        return loaded

    def _read(self) -> Manifest:
        try:
            return Manifest.from_json(json.loads(self.manifest_path.read_text()))
        except FileNotFoundError:
            return Manifest()
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(
                f"{self.manifest_path} is damaged ({exc}); the audio files are untouched"
            ) from None

    def current(self, prompt_id: str, lang: str) -> Version | None:
        return self.manifest().current(prompt_id, lang)

    def play_path(self, prompt_id: str, lang: str) -> str | None:
        """What to give STREAM FILE for the current version (None when there is none).

        Every prompt a call plays asks this, so the answer is kept with the manifest it
        came from, and the manifest file is looked at again at most every RECHECK
        seconds: a change made from another process (``ivr prompts``, a console of
        its own) is played from then on; one made in this process (a recording by
        phone, the web console, ``ivr prompts`` in-process) at once."""
        loaded = self._cache
        if (loaded is None or loaded.writes != _writes
                or time.monotonic() - loaded.checked_at >= RECHECK):
            loaded = self._load()
        key = (prompt_id, lang)
        paths = loaded.paths
        try:
            return paths[key]
        except KeyError:
            pass
        version = loaded.manifest.current(prompt_id, lang)
        found = (None if version is None
                 else self.inner(self.version_base(prompt_id, lang, version.version)))
        if len(paths) < MAX_PATHS:
            paths[key] = found
        return found

    def missing(self, catalogue: Catalogue, langs: tuple[str, ...] | None = None
                ) -> list[tuple[str, str]]:
        """(id, language) pairs of the catalogue with no playable current version."""
        manifest = self.manifest()
        out = []
        for prompt in catalogue:
            for lang in langs or catalogue.languages:
                version = manifest.current(prompt.id, lang)
                if version is None or not self.has_audio(prompt.id, lang, version.version):
                    out.append((prompt.id, lang))
        return out

    # ------------------------------------------------------------------ changing

    @contextlib.contextmanager
    def update(self) -> Iterator[Manifest]:
        """Read-modify-write the manifest under the store's lock; written atomically when
        the block ends without an exception (nothing is written otherwise)."""
        self.host_dir.mkdir(parents=True, exist_ok=True)
        with open(self.host_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = self._read()
            yield manifest
            self._write(manifest)

    def _write(self, manifest: Manifest) -> None:
        data = json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=self.host_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.manifest_path)
            _wrote()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.host_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def add_version(
        self,
        prompt_id: str,
        lang: str,
        files_base: Path,
        *,
        source: str,
        duration: float,
        text_hash: str | None = None,
        engine: str | None = None,
        voice: str | None = None,
        by: str | None = None,
        origin: str | None = None,
    ) -> Version:
        """Make ``files_base.wav``/``.ulaw`` (already in Asterisk's formats, see
        audio.to_asterisk) the new current version; returns it."""
        if source not in SOURCES:
            raise ManifestError(f"source must be one of {SOURCES}, not {source!r}")
        with self.update() as manifest:
            history = manifest.get(prompt_id, lang)
            number = history.next_number if history else 1
            targets = self.version_files(prompt_id, lang, number)
            targets[0].parent.mkdir(parents=True, exist_ok=True)
            for ext, target in zip(FORMATS, targets, strict=True):
                src = files_base.with_name(f"{files_base.name}.{ext}")
                if not src.is_file():
                    raise ManifestError(f"{src} is missing")
                shutil.move(str(src), target)
                target.chmod(0o644)
            version = Version(number, source, _now(), round(duration, 3), text_hash, engine,
                              voice, by, origin)
            if history is None:
                manifest.prompts.setdefault(prompt_id, {})[lang] = History(number, [version])
            else:
                history.versions.append(version)
                history.current = number
        return version

    def restore(self, prompt_id: str, lang: str, number: int) -> Version:
        """Make an earlier (or later) version current again."""
        with self.update() as manifest:
            history = manifest.get(prompt_id, lang)
            if history is None:
                raise ManifestError(f"prompt {prompt_id!r} has no versions in {lang!r}")
            version = history.find(number)
            if version is None:
                have = ", ".join(str(v.version) for v in history.versions)
                raise ManifestError(
                    f"prompt {prompt_id!r} ({lang}) has no version {number}; it has {have}"
                )
            if not self.has_audio(prompt_id, lang, number):
                raise ManifestError(f"the audio of {prompt_id!r} ({lang}) version {number} "
                                    "is missing from the store")
            history.current = number
        return version


@dataclass(eq=False)
class _Loaded:
    """A manifest as read, the stamp of the file it was read from (None: no file), when
    that stamp was last seen on disk, and the play paths worked out from it."""

    stamp: tuple[int, int, int] | None
    manifest: Manifest
    checked_at: float  # time.monotonic()
    writes: int  # _writes then
    paths: dict[tuple[str, str], str | None] = field(default_factory=dict)


# Manifests this process has written (any store): a store that sees the count move
# looks at its file again before the next play, whatever RECHECK says.
_writes = 0


def _wrote() -> None:
    global _writes
    _writes += 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
