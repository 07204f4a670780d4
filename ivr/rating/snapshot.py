"""Rate snapshots: the few deck rows that can price one number, kept with a live call.

A call is charged by the rates in force when it was authorized, whatever deck is imported
meanwhile. :func:`snapshot_rows` takes from a compiled table the rows of every prefix
that can rate the number (the longest match, the shorter ones a time window may fall back
to, and ``*``); :func:`dump_snapshot` writes them and the plan as compact JSON, and
:func:`load_snapshot` compiles that back into a small table that quotes the number
exactly as the full table did.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache

from ivr.rating.engine import Entry, PlanRates, RateTable
from ivr.rating.model import Plan, RateRow, Window
from ivr.rating.money import Rounding

SNAPSHOT_FORMAT = 1


def snapshot_rows(table: RateTable, plan: Plan | str, number: str, service: str) -> list[RateRow]:
    """The rows of every prefix of ``plan`` (and service) that can rate ``number``."""
    pr = table.rates(plan, service)
    entries = [pr.entries.get(number[:n]) for n in range(min(len(number), pr.maxlen), 0, -1)]
    if pr.fallback is not None:
        entries.append(pr.fallback)
    return [row for e in entries if e is not None for row in _entry_rows(pr, e)]


def _entry_rows(pr: PlanRates, entry: Entry) -> list[RateRow]:
    rows: list[RateRow] = []
    seen: set[int] = set()
    for ss in entry.by_slot:
        if ss is None or id(ss) in seen:
            continue
        seen.add(id(ss))
        rows.extend(
            RateRow(pr.name, entry.prefix, step.rate, entry.destination,
                    ss.connect_fee if step.from_second == 0 else Decimal(0), step.rate_unit,
                    step.increment, step.from_second, ss.window, pr.service)
            for step in ss.steps
        )
    return rows


def dump_snapshot(plan: Plan, rows: list[RateRow]) -> str:
    """``plan`` and ``rows`` (of one service) as compact JSON text."""
    services = {r.service for r in rows}
    if len(services) > 1:
        raise ValueError(f"a snapshot holds one service, not {sorted(services)}")
    data = {
        "v": SNAPSHOT_FORMAT,
        "plan": [plan.name, plan.currency, plan.tz, plan.decimals, plan.rounding.value,
                 None if plan.max_cost is None else str(plan.max_cost)],
        "service": next(iter(services), ""),
        "rows": [[r.prefix, r.destination, str(r.connect_fee), str(r.rate), r.rate_unit,
                  r.increment, r.from_second, list(r.window.days), r.window.start,
                  r.window.end] for r in rows],
    }
    return json.dumps(data, separators=(",", ":"))


@lru_cache(maxsize=4096)
def load_snapshot(text: str) -> tuple[Plan, RateTable]:
    """The plan and the small compiled table of a snapshot (cached: calls to one
    destination share their snapshot text)."""
    data = json.loads(text)
    if data.get("v") != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown rate snapshot format {data.get('v')!r}")
    name, currency, tz, decimals, rounding, max_cost = data["plan"]
    plan = Plan(name, currency, tz, decimals, Rounding(rounding),
                None if max_cost is None else Decimal(max_cost))
    service = data["service"]
    rows = [
        RateRow(name, prefix, Decimal(rate), destination, Decimal(fee), unit, inc, frm,
                Window(tuple(days), start, end), service)
        for prefix, destination, fee, rate, unit, inc, frm, days, start, end in data["rows"]
    ]
    return plan, RateTable.build([plan], rows)
