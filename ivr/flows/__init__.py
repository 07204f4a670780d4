"""Call flows, one FastAGI route each: ``AGI(agi://host:4573/<route>)``."""

from ..agi import Handler
from .access import access
from .hello import hello
from .operator import operator
from .topup import topup
from .whisper import whisper

ROUTES: dict[str, Handler] = {
    "access": access,
    "hello": hello,
    "operator": operator,
    "topup": topup,
    "whisper": whisper,
}
