"""Voice prompts: the catalogue (prompts/catalogue.toml), the versioned audio store Asterisk
plays from, speech builds (espeak-ng offline, gTTS on request), studio imports, and the
helpers flows use. See docs/prompts.md.

Flows::

    from ivr import prompts

    await prompts.play(call, "welcome")
    pin = await prompts.ask(call, "enter-pin", 8000, 8, secret=True)
    await prompts.say_money(call, balance, "USD")
"""

from .api import (
    PromptMissing,
    ask,
    get_catalogue,
    get_store,
    language,
    path,
    play,
    set_language,
    set_store,
)
from .catalogue import Catalogue, CatalogueError, Prompt, UnknownPrompt, load_catalogue
from .say import say_duration, say_money
from .store import ManifestError, PromptStore, Version

# The functions of this package that take a prompt id as their second argument: the
# coverage test checks every literal id passed to them in ivr/flows against the catalogue.
PROMPT_ID_FUNCTIONS = ("play", "ask", "path")

__all__ = [
    "PROMPT_ID_FUNCTIONS",
    "Catalogue",
    "CatalogueError",
    "ManifestError",
    "Prompt",
    "PromptMissing",
    "PromptStore",
    "UnknownPrompt",
    "Version",
    "ask",
    "get_catalogue",
    "get_store",
    "language",
    "load_catalogue",
    "path",
    "play",
    "say_duration",
    "say_money",
    "set_language",
    "set_store",
]
