"""The mid-call warning (route ``whisper``), heard by the caller alone.

The call controller (ivr.live.calls) originates ``Local/s@ivr-whisper/n`` into ChanSpy on the
caller's channel in whisper mode; the other half of that Local channel runs this route,
and what it plays is mixed into what the caller hears. The called party hears nothing.

Channel variables: ``IVR_WHISPER`` (``warning`` or ``final``), ``IVR_SECONDS_LEFT``,
``IVR_LANGUAGE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..agi import AgiSession

if TYPE_CHECKING:
    from ..app import App


async def whisper(call: AgiSession, app: App) -> None:
    voice = app.voice
    kind = await call.get_variable("IVR_WHISPER") or "warning"
    left = await call.get_variable("IVR_SECONDS_LEFT") or "0"
    language = await call.get_variable("IVR_LANGUAGE")
    if language in voice.catalogue.languages:
        voice.set_language(call, language)
    seconds = int(left) if left.isdigit() else 0
    await voice.play(call, "you-have")
    await voice.say_duration(call, seconds, whole_minutes=seconds >= 120)
    await voice.play(call, "left-on-call")
    if kind == "warning":
        await voice.play(call, "low-balance-warning")
    await call.hangup()
