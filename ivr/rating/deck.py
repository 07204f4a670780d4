"""Rate deck parsing and validation (CSV in, frozen RateRow out; no database).

Two formats: the project's own (``ivr``) and ASTPP's outbound routes export (``astpp``).
Every problem of a deck is collected and raised together as one DeckError.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from functools import lru_cache
from typing import Literal, overload

from ivr.rating.model import (
    ALL_DAYS,
    DAY_NAMES,
    DEFAULT_INCREMENT,
    DEFAULT_RATE_UNIT,
    DEFAULT_SERVICE,
    FALLBACK_PREFIX,
    MINUTES_PER_DAY,
    DeckError,
    RateRow,
    Window,
    window_mask,
)
from ivr.rating.money import parse_money

IVR_COLUMNS = (
    "plan",
    "prefix",
    "destination",
    "connect_fee",
    "rate",
    "rate_unit",
    "increment",
    "from_second",
    "days",
    "start",
    "end",
    "service",
)
IVR_REQUIRED = ("plan", "prefix", "rate")
ASTPP_COLUMNS = (
    "prefix",
    "destination",
    "connect_cost",
    "included_seconds",
    "rate_per_min",
    "increment_s",
    "astpp_id",
    "astpp_pattern",
)
ASTPP_REQUIRED = ("prefix", "rate_per_min")

DeckFormat = Literal["ivr", "astpp"]
Problems = list[tuple[int, str]]

# ASCII digits only: \d would take any script's digits (Python's int() and Decimal()
# read "５" as 5), and a prefix of them would never match a dialled number.
_PREFIX = re.compile(r"[0-9]+")
_SERVICE = re.compile(r"[a-z][a-z0-9_-]*")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_INT = re.compile(r"[0-9]+")


def load_deck(
    path: str | os.PathLike[str],
    format: DeckFormat = "ivr",
    plan: str | None = None,
    service: str = DEFAULT_SERVICE,
) -> tuple[RateRow, ...]:
    """Read and parse a deck file (UTF-8, an optional BOM is ignored)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return parse_deck(f, format=format, plan=plan, service=service)


def parse_deck(
    source: str | Iterable[str],
    format: DeckFormat = "ivr",
    plan: str | None = None,
    service: str = DEFAULT_SERVICE,
) -> tuple[RateRow, ...]:
    """Parse deck CSV text (a string or an iterable of lines) into frozen rows.

    ``plan`` and ``service`` are only used by the ``astpp`` format, whose rows name
    neither. Raises DeckError with every bad line.
    """
    problems: Problems = []
    rows = list(iter_deck(source, problems, format, plan, service))
    problems += check_rows(rows)
    if problems:
        raise DeckError(problems)
    return tuple(rows)


def iter_deck(
    source: str | Iterable[str],
    problems: Problems,
    format: DeckFormat = "ivr",
    plan: str | None = None,
    service: str = DEFAULT_SERVICE,
) -> Iterator[RateRow]:
    """Parse deck CSV one line at a time (bounded memory), yielding the good rows.

    The problems of bad lines are appended to ``problems`` as (line, reason); checks
    across rows (:func:`check_rows`) are the caller's.
    """
    lines = io.StringIO(source) if isinstance(source, str) else source
    columns: Sequence[str]
    required: Sequence[str]
    convert: Converter
    if format == "ivr":
        columns, required, convert = IVR_COLUMNS, IVR_REQUIRED, _ivr_row
    elif format == "astpp":
        if not plan:
            raise ValueError("the astpp format needs a plan name")
        columns, required = ASTPP_COLUMNS, ASTPP_REQUIRED
        convert = _astpp_converter(plan, service)
    else:
        raise ValueError(f"unknown deck format: {format!r}")
    return _read(lines, columns, required, convert, problems)


def parse_astpp(
    source: str | Iterable[str], plan: str, service: str = DEFAULT_SERVICE
) -> tuple[RateRow, ...]:
    """Parse an ASTPP outbound routes export into the rows of ``plan``."""
    return parse_deck(source, format="astpp", plan=plan, service=service)


# --- reading ----------------------------------------------------------------------------

Converter = Callable[[dict[str, str], int, list[str]], list[RateRow]]


def _read(
    lines: Iterable[str],
    columns: Sequence[str],
    required: Sequence[str],
    convert: Converter,
    problems: Problems,
) -> Iterator[RateRow]:
    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        problems.append((1, "empty deck: no header line"))
        return
    for name in header:
        if name not in columns:
            problems.append((1, f"unknown column {name!r} (known: {', '.join(columns)})"))
    for name in required:
        if name not in header:
            problems.append((1, f"missing required column {name!r}"))
    if len(set(header)) != len(header):
        problems.append((1, "a column appears twice in the header"))
    if problems:
        return
    line = reader.line_num + 1
    for fields in reader:
        start_line, line = line, reader.line_num + 1
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if len(fields) != len(header):
            problems.append((start_line, f"expected {len(header)} fields, got {len(fields)}"))
            continue
        record = {name: value.strip() for name, value in zip(header, fields, strict=True)}
        errors: list[str] = []
        converted = convert(record, start_line, errors)
        if errors:
            problems.append((start_line, "; ".join(errors)))
        else:
            yield from converted


def _ivr_row(rec: dict[str, str], line: int, errors: list[str]) -> list[RateRow]:
    plan = rec["plan"]
    if not plan:
        errors.append("plan is empty")
    prefix = _prefix(rec["prefix"], errors)
    rate = _money(rec, "rate", None, errors)
    connect = _money(rec, "connect_fee", Decimal(0), errors)
    rate_unit = _integer(rec, "rate_unit", DEFAULT_RATE_UNIT, errors)
    increment = _integer(rec, "increment", DEFAULT_INCREMENT, errors)
    from_second = _integer(rec, "from_second", 0, errors)
    window = _window(rec.get("days", ""), rec.get("start", ""), rec.get("end", ""), errors)
    service = rec.get("service", "") or DEFAULT_SERVICE
    if not _SERVICE.fullmatch(service):
        errors.append(f"bad service {service!r} (lower-case letters, digits, - and _)")
    if errors:
        return []
    assert rate is not None and window is not None
    return [
        RateRow(
            plan=plan,
            prefix=prefix,
            rate=rate,
            destination=rec.get("destination", ""),
            connect_fee=connect,
            rate_unit=rate_unit,
            increment=increment,
            from_second=from_second,
            window=window,
            service=service,
            line=line,
        )
    ]


def _astpp_converter(plan: str, service: str) -> Converter:
    def convert(rec: dict[str, str], line: int, errors: list[str]) -> list[RateRow]:
        prefix = _prefix(rec["prefix"], errors)
        if prefix == FALLBACK_PREFIX:
            errors.append("prefix must be digits")
        pattern = rec.get("astpp_pattern", "")
        if pattern and pattern != f"^{prefix}.*":
            errors.append(f"unsupported astpp_pattern {pattern!r} (only ^<prefix>.*)")
        connect = _money(rec, "connect_cost", Decimal(0), errors)
        included = _integer(rec, "included_seconds", 0, errors)
        rate = _money(rec, "rate_per_min", None, errors)
        increment = _integer(rec, "increment_s", DEFAULT_INCREMENT, errors)
        if errors:
            return []
        assert rate is not None
        row = RateRow(
            plan=plan,
            prefix=prefix,
            rate=rate,
            destination=rec.get("destination", ""),
            rate_unit=60,
            service=service,
            line=line,
        )
        if included <= 0:
            return [replace(row, connect_fee=connect, increment=increment)]
        return [
            replace(row, rate=Decimal(0), connect_fee=connect, increment=1),
            replace(row, increment=increment, from_second=included),
        ]

    return convert


def _prefix(text: str, errors: list[str]) -> str:
    if text != FALLBACK_PREFIX and not _PREFIX.fullmatch(text):
        errors.append(f"bad prefix {text!r} (digits, or * for any number)")
    return text


@overload
def _money(rec: dict[str, str], name: str, default: Decimal, errors: list[str]) -> Decimal: ...


@overload
def _money(
    rec: dict[str, str], name: str, default: None, errors: list[str]
) -> Decimal | None: ...


def _money(
    rec: dict[str, str], name: str, default: Decimal | None, errors: list[str]
) -> Decimal | None:
    """The amount in column ``name``; ``default`` (None: required) if it is empty or bad,
    with the problem added to ``errors``."""
    text = rec.get(name, "")
    if not text:
        if default is None:
            errors.append(f"{name} is empty")
        return default
    try:
        return parse_money(text)
    except ValueError:
        errors.append(f"bad {name} {text!r} (a decimal amount like 0.0125)")
        return default


def _integer(rec: dict[str, str], name: str, default: int, errors: list[str]) -> int:
    text = rec.get(name, "")
    if not text:
        return default
    if text.startswith("-") and _INT.fullmatch(text[1:]):
        errors.append(f"{name} must not be negative: {text}")
        return default
    if not _INT.fullmatch(text):
        errors.append(f"bad {name} {text!r} (a whole number)")
        return default
    return int(text)


def parse_days(text: str) -> tuple[int, ...]:
    """``*``/empty (every day), ``mon-fri``, ``sat,sun``, ``fri-mon`` (wraps), mixed lists."""
    text = text.strip().lower()
    days: set[int] = set()
    for token in text.split(",") if text else ["*"]:
        token = token.strip()
        if token == "*":
            days.update(ALL_DAYS)
            continue
        first, dash, last = token.partition("-")
        a = _day(first)
        b = _day(last) if dash else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return tuple(sorted(days))


def _day(name: str) -> int:
    name = name.strip()
    if name not in DAY_NAMES:
        raise ValueError(f"unknown day {name!r} (use {', '.join(DAY_NAMES)} or *)")
    return DAY_NAMES.index(name)


def parse_time(text: str, *, end: bool) -> int:
    """``HH:MM`` to minutes of the day; empty is 00:00 (start) or 24:00 (end)."""
    text = text.strip()
    if not text:
        return MINUTES_PER_DAY if end else 0
    m = _TIME.fullmatch(text)
    if m:
        hours, minutes = int(m[1]), int(m[2])
        value = hours * 60 + minutes
        if (hours < 24 and minutes < 60) or (end and value == MINUTES_PER_DAY):
            return value
    if end:
        raise ValueError(f"bad end time {text!r} (HH:MM, or 24:00)")
    raise ValueError(f"bad start time {text!r} (HH:MM)")


def _window(days: str, start: str, end: str, errors: list[str]) -> Window | None:
    window, problems = _cached_window(days, start, end)
    errors.extend(problems)
    return window


@lru_cache(maxsize=4096)
def _cached_window(days: str, start: str, end: str) -> tuple[Window | None, tuple[str, ...]]:
    """A deck's few distinct windows, parsed once each (a deck may have millions of rows)."""
    errors: list[str] = []
    return _parse_window(days, start, end, errors), tuple(errors)


def _parse_window(days: str, start: str, end: str, errors: list[str]) -> Window | None:
    try:
        day_set = parse_days(days)
    except ValueError as e:
        errors.append(str(e))
        day_set = None
    try:
        a = parse_time(start, end=False)
        b = parse_time(end, end=True)
    except ValueError as e:
        errors.append(str(e))
        return None
    if a == b:
        errors.append(f"empty time window {start or '00:00'}-{end or '24:00'} (start == end)")
        return None
    return None if day_set is None else Window(day_set, a, b)


# --- validation -------------------------------------------------------------------------


def row_problems(row: RateRow) -> list[str]:
    """What is wrong with one row on its own (types and values out of range)."""
    out = []
    if not row.plan or not isinstance(row.plan, str):
        out.append("plan is empty")
    if not isinstance(row.prefix, str) or not (
        row.prefix == FALLBACK_PREFIX or _PREFIX.fullmatch(row.prefix)
    ):
        out.append(f"bad prefix {row.prefix!r} (digits, or * for any number)")
    if not isinstance(row.service, str) or not _SERVICE.fullmatch(row.service):
        out.append(f"bad service {row.service!r}")
    for name in ("rate", "connect_fee"):
        value = getattr(row, name)
        if not isinstance(value, Decimal) or not value.is_finite():
            out.append(f"{name} must be a finite Decimal (never a float): {value!r}")
        elif value < 0:
            out.append(f"negative {name} {value}")
    bad_ints = [
        n for n in ("rate_unit", "increment", "from_second") if type(getattr(row, n)) is not int
    ]
    if bad_ints:
        return [*out, *(f"{n} must be an int: {getattr(row, n)!r}" for n in bad_ints)]
    if row.rate_unit <= 0:
        out.append("rate_unit must be > 0")
    if row.increment <= 0:
        out.append("increment must be > 0")
    if row.from_second < 0:
        out.append("from_second must be >= 0")
    if row.from_second > 0 and row.connect_fee != 0:
        out.append("connect_fee is only allowed on the from_second 0 row")
    return out


def check_rows(rows: Iterable[RateRow]) -> Problems:
    """Every problem of a set of rows, alone and together.

    Together: a (plan, service, prefix) needs a from_second 0 row in each of its windows,
    no two rows for the same step and window, no overlapping windows, one destination.
    """
    problems: Problems = []
    groups: dict[tuple[str, str, str], list[RateRow]] = defaultdict(list)
    for row in rows:
        bad = row_problems(row)
        if bad:
            problems.append((row.line, "; ".join(bad)))
        groups[row.plan, row.service, row.prefix].append(row)
    for (plan, service, prefix), group in groups.items():
        where = f"plan {plan!r} prefix {prefix!r} service {service!r}"
        if len(group) == 1:
            if group[0].from_second != 0:
                problems.append((group[0].line, f"no from_second 0 row for {where}"))
            continue
        problems += _check_group(group, where)
    return problems


def _check_group(group: list[RateRow], where: str) -> Problems:
    problems: Problems = []
    destination = next((r for r in group if r.destination), None)
    for row in group:
        if destination and row.destination and row.destination != destination.destination:
            problems.append(
                (
                    row.line,
                    f"destination {row.destination!r} differs from "
                    f"{destination.destination!r} (line {destination.line}) for {where}",
                )
            )
    by_window: dict[Window, dict[int, RateRow]] = {}
    for row in group:
        steps = by_window.setdefault(row.window, {})
        first = steps.get(row.from_second)
        if first is not None:
            problems.append(
                (
                    row.line,
                    f"duplicate of line {first.line}: same from_second "
                    f"{row.from_second} and window {row.window.label} for {where}",
                )
            )
        else:
            steps[row.from_second] = row
    windows = list(by_window.items())
    for i, (window, steps) in enumerate(windows):
        first_line = min(r.line for r in steps.values())
        if 0 not in steps:
            problems.append(
                (first_line, f"no from_second 0 row in window {window.label} for {where}")
            )
        for other, other_steps in windows[:i]:
            if window_mask(window) & window_mask(other):
                other_line = min(r.line for r in other_steps.values())
                problems.append(
                    (
                        first_line,
                        f"window {window.label} overlaps "
                        f"{other.label} (line {other_line}) for {where}",
                    )
                )
    return problems
