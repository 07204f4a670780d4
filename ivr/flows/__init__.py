"""Call flows, one FastAGI route each: ``AGI(agi://host:4573/<route>)``."""

from ..agi import Handler
from .hello import hello
from .operator import operator

ROUTES: dict[str, Handler] = {
    "hello": hello,
    "operator": operator,
}
