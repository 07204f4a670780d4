"""What flows use: play a catalogue prompt by id in the call's language.

Flows name prompts only by literal ids in these calls (``prompts.play(call, "welcome")``,
``prompts.ask(call, "enter-pin", ...)``), so a test can read the flows' source and check
every id against the catalogue. Unknown ids raise :class:`UnknownPrompt` at once.

The call's language is ``call.state["language"]`` when a flow set it (:func:`set_language`),
else the channel's language when the catalogue has it, else the catalogue's first.
A prompt without audio in that language falls back to the first language.
"""

from __future__ import annotations

import logging
import threading

from ..agi import AgiSession
from .catalogue import Catalogue, load_catalogue
from .store import PromptStore

log = logging.getLogger("ivr.prompts")

_lock = threading.Lock()
_catalogue: Catalogue | None = None
_store: PromptStore | None = None


class PromptMissing(RuntimeError):
    """The store has no audio for a prompt (run `ivr prompts build`)."""


def get_catalogue() -> Catalogue:
    global _catalogue
    with _lock:
        if _catalogue is None:
            _catalogue = load_catalogue()
        return _catalogue


def get_store() -> PromptStore:
    """The store of the Asterisk instance the process settings name (ivr.runtime)."""
    global _store
    with _lock:
        if _store is None:
            from ..asterisk import instance_for
            from ..runtime import get_settings

            _store = PromptStore.for_instance(instance_for(get_settings(), build=False))
        return _store


def set_store(store: PromptStore | None, catalogue: Catalogue | None = None) -> None:
    """Install the store (and catalogue) flows play from; None: find them again."""
    global _store, _catalogue
    with _lock:
        _store = store
        _catalogue = catalogue


def language(call: AgiSession) -> str:
    catalogue = get_catalogue()
    chosen = call.state.get("language")
    if chosen in catalogue.languages:
        return str(chosen)
    channel = (call.env.get("language") or "").split("_")[0].lower()
    return channel if channel in catalogue.languages else catalogue.default_language


def set_language(call: AgiSession, lang: str) -> None:
    get_catalogue().check_languages([lang])
    call.state["language"] = lang


def path(call: AgiSession, prompt_id: str, lang: str | None = None) -> str:
    """The STREAM FILE argument for a prompt's current version."""
    catalogue = get_catalogue()
    catalogue.get(prompt_id)  # UnknownPrompt
    lang = lang or language(call)
    store = get_store()
    found = store.play_path(prompt_id, lang)
    if found is None and lang != catalogue.default_language:
        log.warning("prompt %s has no %s audio; playing %s", prompt_id, lang,
                    catalogue.default_language)
        found = store.play_path(prompt_id, catalogue.default_language)
    if found is None:
        raise PromptMissing(f"prompt {prompt_id!r} has no audio in {store.host_dir}: "
                            "run `ivr prompts build`")
    return found


async def play(call: AgiSession, prompt_id: str, escape_digits: str = "") -> str:
    """Play a prompt; returns the key that interrupted it ("" when none)."""
    digit, _ = await call.stream_file(path(call, prompt_id), escape_digits)
    return digit


async def ask(call: AgiSession, prompt_id: str, timeout_ms: int = 5000, max_digits: int = 20,
              *, secret: bool = False) -> str | None:
    """Play a prompt and collect keys (GET DATA); see AgiSession.get_data."""
    return await call.get_data(path(call, prompt_id), timeout_ms, max_digits, secret=secret)
