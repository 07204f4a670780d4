"""The proof route: answer, read digits, say them back, hang up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..agi import AgiSession

if TYPE_CHECKING:
    from ..app import App

GREETING = "hello-world"
ASK_DIGITS = "vm-enter-num-to-call"
YOU_ENTERED = "you-entered"
GOODBYE = "goodbye"


async def hello(call: AgiSession, app: App | None = None) -> None:
    """Core sounds only: nothing of ``app`` is needed (so the AGI server's own tests
    serve it bare)."""
    await call.answer()
    await call.stream_file(GREETING)
    typed = await call.get_data(ASK_DIGITS, timeout_ms=5000, max_digits=16)
    digits = "".join(ch for ch in typed or "" if ch.isdigit())  # '*' is not said back
    if digits:
        await call.stream_file(YOU_ENTERED)
        await call.say_digits(digits)
    await call.stream_file(GOODBYE)
    await call.hangup()
