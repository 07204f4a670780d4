"""Frozen value types of the rating engine: plans, deck rows, windows, quotes, errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from zoneinfo import ZoneInfo

from ivr.rating.money import Rounding, decimals_of

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 1440
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
ALL_DAYS = tuple(range(7))

DEFAULT_SERVICE = "voice"
DEFAULT_RATE_UNIT = 60
DEFAULT_INCREMENT = 1
FALLBACK_PREFIX = "*"

_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly time window in the plan's local time.

    ``days`` are weekday numbers (0 = Monday). ``start``/``end`` are minutes of the day,
    ``end`` may be 1440 (24:00). The window holds at a local instant when its weekday is
    in ``days`` and its time of day is in ``[start, end)``; when ``start > end`` the time
    of day wraps: ``[start, 24:00) or [00:00, end)`` on each listed day.
    """

    days: tuple[int, ...] = ALL_DAYS
    start: int = 0
    end: int = MINUTES_PER_DAY

    def __post_init__(self) -> None:
        if not self.days or tuple(sorted(set(self.days))) != self.days:
            raise ValueError(f"days must be sorted, unique and non-empty: {self.days}")
        if any(not 0 <= d <= 6 for d in self.days):
            raise ValueError(f"days must be 0..6: {self.days}")
        if not 0 <= self.start < MINUTES_PER_DAY or not 0 <= self.end <= MINUTES_PER_DAY:
            raise ValueError(f"bad window times: {self.start}..{self.end}")
        if self.start == self.end:
            raise ValueError("empty window: start == end")

    @property
    def days_text(self) -> str:
        if self.days == ALL_DAYS:
            return "*"
        runs: list[list[int]] = []
        for d in self.days:
            if runs and runs[-1][1] == d - 1:
                runs[-1][1] = d
            else:
                runs.append([d, d])
        return ",".join(
            DAY_NAMES[a] if a == b else f"{DAY_NAMES[a]}-{DAY_NAMES[b]}" for a, b in runs
        )

    @property
    def start_text(self) -> str:
        return _hhmm(self.start)

    @property
    def end_text(self) -> str:
        return _hhmm(self.end)

    @property
    def label(self) -> str:
        return f"{self.days_text} {self.start_text}-{self.end_text}"

    def intervals(self) -> list[tuple[int, int]]:
        """Minute-of-week intervals ``[a, b)`` covered by the window."""
        out: list[tuple[int, int]] = []
        for d in self.days:
            base = d * MINUTES_PER_DAY
            if self.start < self.end:
                out.append((base + self.start, base + self.end))
            else:
                if self.end:
                    out.append((base, base + self.end))
                out.append((base + self.start, base + MINUTES_PER_DAY))
        return out


_MASKS: dict[Window, int] = {}


def window_mask(window: Window) -> int:
    """Bit m set when minute-of-week m is in the window (cached per window)."""
    bits = _MASKS.get(window)
    if bits is None:
        bits = 0
        for a, b in window.intervals():
            bits |= ((1 << (b - a)) - 1) << a
        _MASKS[window] = bits
    return bits


ANY_TIME = Window()


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class Plan:
    """A rating plan: currency, time zone and how a call's total is rounded.

    ``decimals``/``rounding`` are applied once to a call's total. ``max_cost`` caps the
    cost of one call (it may not have more decimals than the plan rounds to).
    """

    name: str
    currency: str
    tz: str = "UTC"
    decimals: int = 4
    rounding: Rounding = Rounding.UP
    max_cost: Decimal | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"bad plan name: {self.name!r}")
        if not _CURRENCY.fullmatch(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code like EUR: {self.currency!r}")
        ZoneInfo(self.tz)  # raises ZoneInfoNotFoundError (a KeyError) on unknown zones
        if isinstance(self.decimals, bool) or not 0 <= self.decimals <= 12:
            raise ValueError(f"decimals must be 0..12: {self.decimals!r}")
        object.__setattr__(self, "rounding", Rounding(self.rounding))
        if self.max_cost is not None:
            if not isinstance(self.max_cost, Decimal):
                raise TypeError("max_cost must be a Decimal (never a float)")
            if not self.max_cost.is_finite() or self.max_cost < 0:
                raise ValueError(f"max_cost must be a finite amount >= 0: {self.max_cost}")
            if decimals_of(self.max_cost) > self.decimals:
                raise ValueError(
                    f"max_cost {self.max_cost} has more decimals than the plan's {self.decimals}"
                )


@dataclass(frozen=True, slots=True)
class RateRow:
    """One parsed deck row: a step of a prefix's rate in a time window.

    From ``from_second`` on, time is charged in whole ``increment``s at ``rate`` per
    ``rate_unit`` seconds (units for non-voice services). ``line`` is the source line.
    """

    plan: str
    prefix: str
    rate: Decimal
    destination: str = ""
    connect_fee: Decimal = Decimal(0)
    rate_unit: int = DEFAULT_RATE_UNIT
    increment: int = DEFAULT_INCREMENT
    from_second: int = 0
    window: Window = ANY_TIME
    service: str = DEFAULT_SERVICE
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of consecutive increments charged at one rate (breakdown of a quote)."""

    offset: int  # seconds from the start of the call to the first increment
    seconds: int  # charged seconds (whole increments)
    prefix: str
    window: str
    rate: Decimal
    rate_unit: int
    increment: int


@dataclass(frozen=True)
class Quote:
    """The price of one call. ``cost`` is rounded per the plan and capped at max_cost.

    (No __slots__: the engine's hot path fills the instance __dict__ in one step.)
    """

    plan: str
    service: str
    number: str
    prefix: str
    destination: str
    seconds: int  # duration asked for
    charged_seconds: int  # duration paid for: the end of the last (whole) increment
    cost: Decimal
    currency: str
    connect_fee: Decimal  # included in cost; 0 for unanswered calls
    pieces: tuple[Piece, ...] = ()


class NoRate(LookupError):
    """The destination is refused: no rate for this number, service or time."""

    def __init__(self, plan: str, service: str, number: str, reason: str) -> None:
        super().__init__(f"no rate for {number!r} ({service}) in plan {plan!r}: {reason}")
        self.plan = plan
        self.service = service
        self.number = number
        self.reason = reason


class DeckError(ValueError):
    """A rate deck was refused; ``problems`` lists every bad row as (line, reason)."""

    def __init__(self, problems: list[tuple[int, str]], total: int | None = None) -> None:
        """``total``: how many problems there were, when only the first ones were kept."""
        self.problems = sorted(problems)
        self.total = max(total or 0, len(self.problems))
        shown = "\n".join(f"  line {line}: {reason}" for line, reason in self.problems[:50])
        more = self.total - min(50, len(self.problems))
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"bad rate deck ({self.total} problems):\n{shown}{tail}")
