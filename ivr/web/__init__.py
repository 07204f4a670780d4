"""The operator's web console: Starlette pages over the same services as the CLI
(ivr.web.http), its users and sessions (ivr.web.users), the audit log (ivr.web.audit)
and one-time downloads (ivr.web.downloads). Served inside ``ivr serve`` / ``ivr run`` on
``web_bind``, or alone by ``ivr web``."""

from __future__ import annotations

from .http import create_app

__all__ = ["create_app"]
