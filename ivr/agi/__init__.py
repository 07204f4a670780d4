"""FastAGI: the wire protocol (no I/O), a call session, and the server."""

from .protocol import (
    AgiCommandFailed,
    AgiEnvironment,
    AgiError,
    AgiHangup,
    AgiInvalidCommand,
    AgiProtocolError,
    AgiTimeout,
    AgiUsageError,
    Reply,
)
from .server import AgiServer, Handler
from .session import AgiSession

__all__ = [
    "AgiCommandFailed",
    "AgiEnvironment",
    "AgiError",
    "AgiHangup",
    "AgiInvalidCommand",
    "AgiProtocolError",
    "AgiServer",
    "AgiSession",
    "AgiTimeout",
    "AgiUsageError",
    "Handler",
    "Reply",
]
