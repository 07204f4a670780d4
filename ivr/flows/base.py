"""What every line's per-call state starts with: the caller's AGI session and the
application, and the services flows reach through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..agi import AgiSession
from ..config import Settings
from ..db import Database
from ..prompts import Voice

if TYPE_CHECKING:
    from ..app import App


@dataclass
class LineCall:
    call: AgiSession
    app: App

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def db(self) -> Database:
        return self.app.db

    @property
    def voice(self) -> Voice:
        return self.app.voice

    @property
    def tag(self) -> str:
        """How the logs name the call: its caller channel's uniqueid."""
        return f"[{self.call.env.uniqueid}]"
