"""What a new rate deck changes against the current one (pure: rows in, a diff out).

Prefixes are compared as a whole, per (service, prefix): all their rows (time windows,
steps from a later second, connect fee) together. A prefix only in the new deck is
added, one only in the current deck removed, and one whose rows differ in any way
(destination, rate, unit, increment, connect fee, window) changed. Amounts compare by
value: ``0.6`` and ``0.600000`` are the same rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from .model import ANY_TIME, DEFAULT_SERVICE, RateRow

Kind = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class PrefixChange:
    """One prefix (of one service) that the new deck adds, removes or changes."""

    kind: Kind
    service: str
    prefix: str
    old: tuple[RateRow, ...]  # empty when added
    new: tuple[RateRow, ...]  # empty when removed

    @property
    def old_destination(self) -> str:
        return destination_of(self.old)

    @property
    def new_destination(self) -> str:
        return destination_of(self.new)

    @property
    def old_rates(self) -> str:
        return rates_text(self.old)

    @property
    def new_rates(self) -> str:
        return rates_text(self.new)

    @property
    def label(self) -> str:
        return self.prefix if self.service == DEFAULT_SERVICE else f"{self.prefix} ({self.service})"


@dataclass(frozen=True)
class DeckDiff:
    """The prefixes a new deck adds, removes and changes (each sorted by prefix), and
    how many it keeps as they are."""

    added: tuple[PrefixChange, ...]
    removed: tuple[PrefixChange, ...]
    changed: tuple[PrefixChange, ...]
    unchanged: int

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_rows(old: Iterable[RateRow], new: Iterable[RateRow]) -> DeckDiff:
    """The difference between the rows of the current deck (``old``) and a new one."""
    before = _by_prefix(old)
    after = _by_prefix(new)
    added, removed, changed = [], [], []
    unchanged = 0
    for key in sorted(before.keys() | after.keys(), key=_sort_key):
        was, now = before.get(key), after.get(key)
        if was is None:
            assert now is not None
            added.append(PrefixChange("added", *key, (), _ordered(now)))
        elif now is None:
            removed.append(PrefixChange("removed", *key, _ordered(was), ()))
        elif _same(was, now):
            unchanged += 1
        else:
            changed.append(PrefixChange("changed", *key, _ordered(was), _ordered(now)))
    return DeckDiff(tuple(added), tuple(removed), tuple(changed), unchanged)


def destination_of(rows: Iterable[RateRow]) -> str:
    return next((r.destination for r in rows if r.destination), "")


def rates_text(rows: Iterable[RateRow]) -> str:
    """A prefix's rates for people: ``0.60/min``, ``0.05/min from 60 s``,
    ``0.10 connect + 1.20/min by 30 s in mon-fri 08:00-18:00``; rows joined by ``; ``."""
    return "; ".join(_row_text(r) for r in _ordered(rows))


def amount_text(amount: Decimal, min_decimals: int = 2) -> str:
    """An exact amount without trailing zeros beyond ``min_decimals`` (0.600000 -> 0.60)."""
    text = f"{amount:f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    frac += "0" * max(0, min_decimals - len(frac))
    return f"{whole}.{frac}" if frac else whole


def _row_text(r: RateRow) -> str:
    unit = "min" if r.rate_unit == 60 else f"{r.rate_unit} s"
    text = f"{amount_text(r.rate)}/{unit}"
    if r.connect_fee:
        text = f"{amount_text(r.connect_fee)} connect + {text}"
    if r.increment != 1:
        text += f" by {r.increment} s"
    if r.from_second:
        text += f" from {r.from_second} s"
    if r.window != ANY_TIME:
        text += f" in {r.window.label}"
    return text


def _by_prefix(rows: Iterable[RateRow]) -> dict[tuple[str, str], list[RateRow]]:
    out: dict[tuple[str, str], list[RateRow]] = defaultdict(list)
    for row in rows:
        out[row.service, row.prefix].append(row)
    return out


def _sort_key(key: tuple[str, str]) -> tuple[str, str]:
    service, prefix = key
    return (prefix, service)


def _ordered(rows: Iterable[RateRow]) -> tuple[RateRow, ...]:
    return tuple(sorted(rows, key=lambda r: (r.window.days, r.window.start, r.window.end,
                                             r.from_second)))


def _same(a: list[RateRow], b: list[RateRow]) -> bool:
    # Rows compare by value and without their line number (RateRow.line has compare=False);
    # the plan's name is left out, so a deck can be compared with another plan's.
    return len(a) == len(b) and {_value(r) for r in a} == {_value(r) for r in b}


def _value(r: RateRow) -> tuple[object, ...]:
    return (r.prefix, r.destination, r.rate, r.connect_fee, r.rate_unit, r.increment,
            r.from_second, r.window, r.service)
