"""Call flows, one FastAGI route each: ``AGI(agi://host:4573/<route>)``. A route is
``async def route(call, app)``; ``App.routes()`` binds them to one application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .access import access
from .hello import hello
from .operator import operator
from .revalue import revalue
from .revalue_ivr import revalue_ivr
from .topup import topup
from .whisper import whisper

if TYPE_CHECKING:
    from ..app import Route

ROUTES: dict[str, Route] = {
    "access": access,
    "hello": hello,
    "operator": operator,
    "revalue": revalue,
    "revalue-ivr": revalue_ivr,
    "topup": topup,
    "whisper": whisper,
}
