"""The console's pages, one module per area; each has ``routes``."""

from __future__ import annotations

import importlib

from starlette.routing import BaseRoute

AREAS = ("home", "dashboard", "calls", "cards", "accounts", "rates", "cdrs", "money",
         "reports", "prompts")


def all_routes() -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for area in AREAS:
        found.extend(importlib.import_module(f"{__name__}.{area}").routes)
    return found
