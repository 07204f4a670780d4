"""Voice prompts: the catalogue (prompts/catalogue.toml), the versioned audio store Asterisk
plays from, speech builds (espeak-ng offline, gTTS on request), studio imports, and the
helpers flows use. See docs/prompts.md.

Flows get a :class:`Voice` from the application (``app.voice``)::

    await voice.play(call, "welcome")
    pin = await voice.ask(call, "enter-pin", 8000, 8, secret=True)
    await voice.say_money(call, balance, "USD")
"""

from .api import PromptMissing, Voice
from .catalogue import Catalogue, CatalogueError, Prompt, UnknownPrompt, load_catalogue
from .store import ManifestError, PromptStore, Version

# The Voice methods that take a prompt id as their second argument: the
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
    "Voice",
    "load_catalogue",
]
