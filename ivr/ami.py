"""AMI client: panoramisk's Manager with clear errors, bounded waits and safe reconnects.

What we add to panoramisk 1.4 and why:
- A reply it cannot classify (``PlayDTMF``'s "DTMF successfully queued" without an
  ``Async`` header raises ``KeyError: 'async'``) used to drop the whole connection. The
  protocol below contains such errors to the one message, and :meth:`AmiClient.action`
  sends ``Async: false`` on actions that are not asynchronous.
- Its ``connect()`` reports nothing about a refused connection or a wrong secret and retries
  forever. :meth:`AmiClient.connect` waits for the login with a deadline and raises
  :class:`AmiConnectionError`; after :meth:`close`, no reconnect is scheduled.
- Every action has a timeout; an action sent while disconnected fails at once with
  :class:`AmiNotConnected` instead of waiting for a reconnect that may never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from panoramisk import Manager
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("ivr.ami")

EventCallback = Callable[[Message], Any]


class AmiError(Exception):
    """Base of AMI failures."""

    # What Asterisk's error reply said, for the two refusals callers act on. AMI's
    # error replies carry no code, only Asterisk's message text: it is read here, once.
    not_found = False  # DBGet of a missing key
    no_such_channel = False  # Getvar/Setvar on a channel that is gone


class AmiConnectionError(AmiError):
    """Could not connect or log in."""


class AmiNotConnected(AmiError):
    """An action was sent while the connection is down."""


class AmiActionError(AmiError):
    """Asterisk answered an action with Response: Error."""

    def __init__(self, action: str, message: Message) -> None:
        super().__init__(f"{action}: {message.get('Message', message)}")
        self.response = message
        text = str(message.get("Message", "")).lower()
        self.not_found = "not found" in text
        self.no_such_channel = "no such channel" in text


class _ContainedProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """One unparseable message is logged and skipped instead of killing the connection."""

    def handle_message(self, message: Message) -> None:
        try:
            super().handle_message(message)
        except Exception:
            log.exception("AMI message ignored: %r", message)


class _Manager(Manager):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's Manager that stops reconnecting once closed."""

    closing = False
    last_login_reply: Message | None = None

    def login(self, future: Any) -> bool:
        self.last_login_reply = future.result()
        return bool(super().login(future))

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self.closing:
            return None
        return super().connect(*args, **kwargs)

    def connection_made(self, f: Any) -> None:
        if self.closing:
            with contextlib.suppress(Exception):
                f.result()[0].close()
            return
        super().connection_made(f)


# Actions whose "successfully queued" reply must not make panoramisk wait for more events.
_SYNC_QUEUED = {"playdtmf", "queueadd", "queueremove", "queuepause"}


class AmiClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5038,
        username: str = "ivr",
        secret: str = "",
        *,
        reconnect_delay: float = 1.0,
        action_timeout: float = 10.0,
        events: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._username, self._secret = username, secret
        self._reconnect_delay = reconnect_delay
        self.action_timeout = action_timeout
        self._manager: _Manager | None = None
        self._subscribers: list[tuple[str, EventCallback]] = []
        self._logged_in = asyncio.Event()
        self.logins = 0  # how many times we (re)logged in; a reconnect raises it
        # Event classes to receive (AMI "Events" action after each login); None: all the
        # user may read. The server asks for call events only, so keys typed by callers
        # (DTMF and AGI result events) never reach it, even in debug logs.
        self.events = events

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AmiClient:
        """The server's AMI user (its secret: ivr.secrets.ami_secret)."""
        from .secrets import ami_secret

        return cls(
            settings.ami_host, settings.ami_port, settings.ami_user, ami_secret(settings), **kwargs
        )

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        m = self._manager
        return bool(m and m._connected and m.authenticated and not m.closing)

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect and log in, or raise AmiConnectionError within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        self._logged_in.clear()
        self._manager = _Manager(
            host=self.host,
            port=self.port,
            username=self._username,
            secret=self._secret,
            loop=loop,
            protocol_factory=_ContainedProtocol,
            reconnect_timeout=max(1, round(self._reconnect_delay)),
            ping_delay=10,
            on_login=self._on_login,
            on_disconnect=self._on_disconnect,
        )
        self._manager.register_event("*", self._dispatch)
        # panoramisk retries a refused connection by itself every reconnect_timeout.
        self._manager.connect()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.connected:
                return
            refused = self._manager.last_login_reply
            if refused is not None and not refused.success:
                await self.close()
                raise AmiConnectionError(
                    f"AMI login to {self.host}:{self.port} as {self._username!r} refused: "
                    f"{refused.get('Message', refused)}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._logged_in.wait(), 0.05)
        await self.close()
        raise AmiConnectionError(f"cannot reach AMI at {self.host}:{self.port} within {timeout}s")

    def _on_login(self, manager: Manager) -> None:
        self.logins += 1
        if self.events is not None:
            manager.send_action({"Action": "Events", "EventMask": self.events})
        self._logged_in.set()
        log.info("AMI logged in to %s:%s", self.host, self.port)

    def _on_disconnect(self, manager: Manager, exc: Exception | None) -> None:
        self._logged_in.clear()
        if not (self._manager and self._manager.closing):
            log.warning("AMI connection lost (%s); reconnecting", exc)

    async def wait_connected(self, timeout: float) -> None:
        """Wait for a reconnect to finish."""
        try:
            await asyncio.wait_for(self._logged_in.wait(), timeout)
        except TimeoutError:
            raise AmiNotConnected(f"AMI not reconnected within {timeout}s") from None

    async def close(self) -> None:
        if self._manager is not None:
            self._manager.closing = True
            self._manager.close()
        self._logged_in.clear()

    # ------------------------------------------------------------------ actions

    async def action(
        self,
        name: str,
        *,
        timeout: float | None = None,
        as_list: bool | None = None,
        **headers: Any,
    ) -> Any:
        """Send an action; return its response (or list of messages for list actions)."""
        if not self.connected or self._manager is None:
            raise AmiNotConnected(f"{name}: AMI is not connected to {self.host}:{self.port}")
        action: dict[str, Any] = {"Action": name}
        action.update({k.replace("_", ""): v for k, v in headers.items()})
        if name.lower() in _SYNC_QUEUED and not any(k.lower() == "async" for k in action):
            action["Async"] = "false"
        future = self._manager.send_action(action, as_list=as_list)
        try:
            reply = await asyncio.wait_for(future, timeout or self.action_timeout)
        except TimeoutError:
            raise AmiError(f"{name}: no reply within {timeout or self.action_timeout}s") from None
        first = reply[0] if isinstance(reply, list) else reply
        if first.get("Response") == "Error":
            raise AmiActionError(name, first)
        return reply

    async def command(self, cli: str) -> str:
        """Run a CLI command through AMI and return its output."""
        reply = await self.action("Command", Command=cli)
        output = reply.get("Output", reply.content)
        if isinstance(output, list):
            return "\n".join(output)
        return str(output)

    # ------------------------------------------------------------------ events

    def on_event(self, pattern: str, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for events whose name matches ``pattern`` (fnmatch).

        Returns a function that removes the subscription.
        """
        entry = (pattern.lower(), callback)
        self._subscribers.append(entry)
        return lambda: self._subscribers.remove(entry) if entry in self._subscribers else None

    def _dispatch(self, manager: Manager, event: Message) -> None:
        name = str(event.get("Event", "")).lower()
        for pattern, callback in list(self._subscribers):
            if fnmatch.fnmatchcase(name, pattern):
                try:
                    result = callback(event)
                    if asyncio.iscoroutine(result):
                        asyncio.ensure_future(result)
                except Exception:
                    log.exception("AMI event callback failed for %s", name)
