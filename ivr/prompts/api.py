"""What flows use to speak: :class:`Voice`, the catalogue and the audio store of one
Asterisk instance, handed to flows by the application (``app.voice``).

Flows name prompts only by literal ids (``voice.play(call, "welcome")``,
``voice.ask(call, "enter-pin", ...)``), so a test can read the flows' source and check
every id against the catalogue (ivr.prompts.coverage). Unknown ids raise
:class:`UnknownPrompt` at once.

The call's language is ``call.state["language"]`` when a flow set it (:meth:`set_language`),
else the channel's language when the catalogue has it, else the catalogue's first.
A prompt without audio in that language falls back to the first language.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from ..agi import AgiSession
from . import say
from .catalogue import Catalogue
from .store import PromptStore

log = logging.getLogger("ivr.prompts")


class PromptMissing(RuntimeError):
    """The store has no audio for a prompt (run `ivr prompts build`)."""


class Voice:
    """Prompts of one catalogue played from one store. No state of its own beyond the
    two: a call's language lives in the call (``call.state``)."""

    def __init__(self, catalogue: Catalogue, store: PromptStore) -> None:
        self.catalogue = catalogue
        self.store = store

    def language(self, call: AgiSession) -> str:
        chosen = call.state.get("language")
        if chosen in self.catalogue.languages:
            return str(chosen)
        channel = (call.env.get("language") or "").split("_")[0].lower()
        return channel if channel in self.catalogue.languages else self.catalogue.default_language

    def set_language(self, call: AgiSession, lang: str) -> None:
        self.catalogue.check_languages([lang])
        call.state["language"] = lang

    def path(self, call: AgiSession, prompt_id: str, lang: str | None = None) -> str:
        """The STREAM FILE argument for a prompt's current version."""
        self.catalogue.get(prompt_id)  # UnknownPrompt
        lang = lang or self.language(call)
        found = self.store.play_path(prompt_id, lang)
        default = self.catalogue.default_language
        if found is None and lang != default:
            log.warning("prompt %s has no %s audio; playing %s", prompt_id, lang, default)
            found = self.store.play_path(prompt_id, default)
        if found is None:
            raise PromptMissing(f"prompt {prompt_id!r} has no audio in {self.store.host_dir}: "
                                "run `ivr prompts build`")
        return found

    async def play(self, call: AgiSession, prompt_id: str, escape_digits: str = "") -> str:
        """Play a prompt; returns the key that interrupted it ("" when none)."""
        digit, _ = await call.stream_file(self.path(call, prompt_id), escape_digits)
        return digit

    async def ask(self, call: AgiSession, prompt_id: str, timeout_ms: int = 5000,
                  max_digits: int = 20, *, secret: bool = False) -> str | None:
        """Play a prompt and collect keys (GET DATA); see AgiSession.get_data."""
        return await call.get_data(self.path(call, prompt_id), timeout_ms, max_digits,
                                   secret=secret)

    async def say_money(self, call: AgiSession, amount: Decimal, currency: str,
                        escape_digits: str = "") -> str:
        """``five dollars and twenty cents`` (ivr.prompts.say)."""
        return await self.say_steps(call, say.money_steps(amount, currency), escape_digits)

    async def say_duration(self, call: AgiSession, seconds: int, *,
                           whole_minutes: bool = False, escape_digits: str = "") -> str:
        """``twenty-three minutes`` (ivr.prompts.say)."""
        return await self.say_steps(
            call, say.duration_steps(seconds, whole_minutes=whole_minutes), escape_digits)

    async def say_steps(self, call: AgiSession, steps: list[say.Step],
                        escape_digits: str = "") -> str:
        lang = self.language(call)
        core = say.CORE_SOUNDS.get(lang, {})
        for kind, value in steps:
            if kind == "number":
                await say.channel_language(call, lang)
                digit = await call.say_number(int(value), escape_digits)
            else:
                word = str(value)
                sound = core.get(word) or self.path(call, word, lang)
                digit, _ = await call.stream_file(sound, escape_digits)
            if digit:
                return digit
        return ""
