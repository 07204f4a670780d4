"""The mid-call warning (route ``whisper``), heard by the caller alone.

The call controller (ivr.calls) originates ``Local/s@ivr-whisper/n`` into ChanSpy on the
caller's channel in whisper mode; the other half of that Local channel runs this route,
and what it plays is mixed into what the caller hears. The called party hears nothing.

Channel variables: ``IVR_WHISPER`` (``warning`` or ``final``), ``IVR_SECONDS_LEFT``,
``IVR_LANGUAGE``.
"""

from __future__ import annotations

from .. import prompts
from ..agi import AgiSession
from ..prompts.say import say_duration


async def whisper(call: AgiSession) -> None:
    kind = await call.get_variable("IVR_WHISPER") or "warning"
    left = await call.get_variable("IVR_SECONDS_LEFT") or "0"
    language = await call.get_variable("IVR_LANGUAGE")
    if language in prompts.get_catalogue().languages:
        prompts.set_language(call, language)
    seconds = int(left) if left.isdigit() else 0
    await prompts.play(call, "you-have")
    await say_duration(call, seconds, whole_minutes=seconds >= 120)
    await prompts.play(call, "left-on-call")
    if kind == "warning":
        await prompts.play(call, "low-balance-warning")
    await call.hangup()
