"""The rating engine: a compiled, immutable rate index and pure quote functions.

Amounts are integers over one table-wide denominator (``10**decimals * lcm(rate units)``),
so a quote is exact integer arithmetic; the total is rounded once, to the plan's decimals.
See docs/rating.md for the rules.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from zoneinfo import ZoneInfo

from ivr.rating.deck import check_rows
from ivr.rating.model import (
    DEFAULT_SERVICE,
    FALLBACK_PREFIX,
    MINUTES_PER_DAY,
    MINUTES_PER_WEEK,
    DeckError,
    NoRate,
    Piece,
    Plan,
    Quote,
    RateRow,
    Window,
    window_mask,
)
from ivr.rating.money import (
    EXACT,
    SCALEB_SAFE,
    Rounding,
    decimals_of,
    floor_scaled,
    from_scaled,
    max_numerator,
    round_ratio,
    to_scaled,
)

MAX_CALL_SECONDS = 86_400
"""Default upper bound of max_seconds (24 h): a call is never authorised for longer."""

_ZERO = Decimal(0)
_MODES = {Rounding.UP: 0, Rounding.DOWN: 1, Rounding.HALF_UP: 2}
_WEEK_MASK = (1 << MINUTES_PER_WEEK) - 1


@dataclass(frozen=True, slots=True)
class Step:
    """From ``from_second`` on: whole ``increment``s, each costing ``num`` table units."""

    from_second: int
    increment: int
    rate: Decimal
    rate_unit: int
    num: int


@dataclass(frozen=True, slots=True, eq=False)
class StepSet:
    """A prefix's rate in one time window: connect fee and steps.

    ``runs`` is the step schedule of a call that starts in this window, precomputed as
    ``(start, end, increment, num, cum)``: increments from ``start`` up to ``end`` (-1 for
    the open last run), ``cum`` being the units charged before ``start``.
    """

    window: Window
    connect_fee: Decimal
    connect_num: int
    steps: tuple[Step, ...]
    froms: tuple[int, ...]
    runs: tuple[tuple[int, int, int, int, int], ...]
    inc0: int  # the increment when there is a single run (the fast path), else 0
    num0: int


@dataclass(frozen=True, slots=True, eq=False)
class Entry:
    """A prefix of a plan and service: its rate in each week slot (None: no rate then)."""

    prefix: str
    destination: str
    by_slot: tuple[StepSet | None, ...]


@dataclass(frozen=True, slots=True, eq=False)
class PlanRates:
    """The compiled rates of one plan and service."""

    plan: Plan
    service: str
    tz: ZoneInfo
    bounds: tuple[int, ...]  # minute-of-week where each slot starts, sorted
    entries: dict[str, Entry] = field(repr=False)  # by prefix (digits); never mutated
    fallback: Entry | None  # the "*" prefix
    maxlen: int
    head: int  # length of the number's head looked up in heads
    heads: dict[str, int] = field(repr=False)  # head -> longest prefix length under it
    single: bool  # one time slot: the rate never depends on the time
    denominator: int  # amounts are integers over this (the table's)
    scale: int  # 10 ** plan.decimals
    exponent: int  # -plan.decimals
    mode: int  # plan.rounding: 0 up, 1 down, 2 half-up
    max_q: int | None  # plan.max_cost in units of 10 ** -decimals
    name: str  # plan.name
    currency: str  # plan.currency


@dataclass(frozen=True, slots=True, eq=False)
class RateTable:
    """Immutable index of the rates of one or more plans. Build with RateTable.build."""

    plans: Mapping[str, Plan]
    denominator: int  # amounts are integers over this
    index: dict[tuple[str, str], PlanRates] = field(repr=False)  # never mutated

    @classmethod
    def build(cls, plans: Iterable[Plan], rows: Iterable[RateRow]) -> RateTable:
        """Compile rows (all plans and services) into a table; DeckError on bad rows."""
        plan_map: dict[str, Plan] = {}
        for plan in plans:
            if plan.name in plan_map:
                raise ValueError(f"plan {plan.name!r} given twice")
            plan_map[plan.name] = plan
        rows = list(rows)
        problems = check_rows(rows)
        problems += [(r.line, f"unknown plan {r.plan!r}") for r in rows if r.plan not in plan_map]
        if problems:
            raise DeckError(problems)
        scale = max((max(decimals_of(r.rate), decimals_of(r.connect_fee)) for r in rows), default=0)
        lcm = math.lcm(*{r.rate_unit for r in rows}) if rows else 1
        builder = _Builder(scale, lcm)
        grouped: dict[tuple[str, str], list[RateRow]] = defaultdict(list)
        for r in rows:
            grouped[r.plan, r.service].append(r)
        index = {
            key: builder.plan_rates(plan_map[key[0]], key[1], group)
            for key, group in grouped.items()
        }
        return cls(MappingProxyType(plan_map), denominator=10**scale * lcm, index=index)

    def rates(self, plan: Plan | str, service: str = DEFAULT_SERVICE) -> PlanRates:
        """The compiled rates of a plan and service; NoRate if the plan has none for it."""
        name = plan if isinstance(plan, str) else plan.name
        pr = self.index.get((name, service))
        if pr is not None:
            if not isinstance(plan, str) and plan is not pr.plan and plan != pr.plan:
                raise ValueError(f"plan {name!r} differs from the one the table was built with")
            return pr
        if name not in self.plans:
            raise ValueError(f"unknown plan {name!r}")
        raise NoRate(name, service, "", f"plan has no rates for service {service!r}")

    def prefix_count(self, plan: Plan | str, service: str = DEFAULT_SERVICE) -> int:
        pr = self.rates(plan, service)
        return len(pr.entries) + (pr.fallback is not None)


# What makes two step sets the same: window, connect fee, (from, increment, rate, unit)s.
_StepKey = tuple[Window, Decimal, tuple[tuple[int, int, Decimal, int], ...]]
_Run = tuple[int, int, int, int, int]  # start, end (-1: open), increment, num, cumulative


class _Builder:
    def __init__(self, scale: int, lcm: int) -> None:
        self.scale = scale
        self.lcm = lcm
        self.interned: dict[_StepKey, StepSet] = {}

    def plan_rates(self, plan: Plan, service: str, rows: list[RateRow]) -> PlanRates:
        by_prefix: dict[str, dict[Window, list[RateRow]]] = defaultdict(lambda: defaultdict(list))
        for r in rows:
            by_prefix[r.prefix][r.window].append(r)
        windows = {w for ws in by_prefix.values() for w in ws}
        bounds = _slot_bounds(windows)
        entries: dict[str, Entry] = {}
        for prefix, ws in by_prefix.items():
            destination = next((r.destination for g in ws.values() for r in g if r.destination), "")
            sets = {w: self.step_set(w, g) for w, g in ws.items()}
            by_slot = tuple(
                next((s for w, s in sets.items() if window_mask(w) >> b & 1), None) for b in bounds
            )
            entries[prefix] = Entry(prefix, destination, by_slot)
        fallback = entries.pop(FALLBACK_PREFIX, None)
        max_q = None if plan.max_cost is None else to_scaled(plan.max_cost, plan.decimals)
        head, heads = _heads(entries)
        return PlanRates(
            plan=plan,
            service=service,
            tz=ZoneInfo(plan.tz),
            bounds=bounds,
            entries=entries,
            fallback=fallback,
            maxlen=max(map(len, entries), default=0),
            head=head,
            heads=heads,
            single=len(bounds) == 1,
            denominator=10**self.scale * self.lcm,
            scale=10**plan.decimals,
            exponent=-plan.decimals,
            mode=_MODES[plan.rounding],
            max_q=max_q,
            name=plan.name,
            currency=plan.currency,
        )

    def step_set(self, window: Window, rows: list[RateRow]) -> StepSet:
        rows = sorted(rows, key=lambda r: r.from_second)
        key: _StepKey = (
            window,
            rows[0].connect_fee,
            tuple((r.from_second, r.increment, r.rate, r.rate_unit) for r in rows),
        )
        found = self.interned.get(key)
        if found is not None:
            return found
        steps = tuple(
            Step(
                r.from_second,
                r.increment,
                r.rate,
                r.rate_unit,
                to_scaled(r.rate, self.scale) * r.increment * (self.lcm // r.rate_unit),
            )
            for r in rows
        )
        froms = tuple(s.from_second for s in steps)
        runs = _runs(steps, froms)
        single = len(runs) == 1
        made = StepSet(
            window=window,
            connect_fee=rows[0].connect_fee,
            connect_num=to_scaled(rows[0].connect_fee, self.scale) * self.lcm,
            steps=steps,
            froms=froms,
            runs=runs,
            inc0=runs[0][2] if single else 0,
            num0=runs[0][3] if single else 0,
        )
        self.interned[key] = made
        return made


def _heads(entries: dict[str, Entry]) -> tuple[int, dict[str, int]]:
    """Speed-up of the longest-prefix search: for each ``head`` (first ``h`` digits of a
    prefix), the longest prefix length that starts with it. A number's search then starts
    at that length instead of the deck's longest; a number whose head is not there can
    only match prefixes shorter than ``h``. ``h`` is the median prefix length minus 2."""
    lengths = sorted(map(len, entries))
    if not lengths:
        return 1, {}
    h = max(1, lengths[len(lengths) // 2] - 2)
    heads: dict[str, int] = {}
    for p in entries:
        if len(p) >= h and heads.get(p[:h], 0) < len(p):
            heads[p[:h]] = len(p)
    return h, heads


def _runs(steps: tuple[Step, ...], froms: tuple[int, ...]) -> tuple[_Run, ...]:
    """The increments of a call rated from second 0 in one window, grouped by step.

    The step of an increment is the one in force at the increment's start offset; an
    increment that runs past the next step's from_second is charged whole at its own step,
    and the next increment starts where it ends.
    """
    runs: list[_Run] = []
    t = cum = 0
    while True:
        k = bisect_right(froms, t) - 1
        step = steps[k]
        if k + 1 == len(steps):
            runs.append((t, -1, step.increment, step.num, cum))
            return tuple(runs)
        n = -(-(froms[k + 1] - t) // step.increment)
        runs.append((t, t + n * step.increment, step.increment, step.num, cum))
        t += n * step.increment
        cum += n * step.num


def _slot_bounds(windows: Iterable[Window]) -> tuple[int, ...]:
    """Minutes of the week where some window starts or stops holding ((0,) if none)."""
    changes = 0
    for w in windows:
        m = window_mask(w)
        rotated = ((m << 1) | (m >> (MINUTES_PER_WEEK - 1))) & _WEEK_MASK
        changes |= m ^ rotated
    bounds = tuple(i for i in range(MINUTES_PER_WEEK) if changes >> i & 1)
    return bounds or (0,)


# --- quoting ----------------------------------------------------------------------------


def quote(
    table: RateTable,
    plan: Plan | str,
    number: str,
    seconds: int,
    at: datetime,
    service: str = DEFAULT_SERVICE,
    *,
    detail: bool = False,
) -> Quote:
    """The cost of a call of ``seconds`` (units for other services) answered at ``at``.

    ``at`` must be timezone-aware. ``seconds == 0`` is an unanswered call: it costs 0.
    Raises NoRate when the number (or a part of the call) has no rate.
    ``detail=True`` fills ``Quote.pieces`` with the per-rate breakdown.
    """
    # The hot path (one time slot, no breakdown) is written out inline: it is what makes
    # the engine fast. Everything else goes through _quote_general.
    if isinstance(plan, str):
        pr = table.index.get((plan, service))
    else:
        pr = table.index.get((plan.name, service))
        if pr is not None and plan is not pr.plan:
            pr = None
    if pr is None:
        pr = table.rates(plan, service)
    if seconds.__class__ is not int:
        seconds = _as_seconds(seconds)
    if at.tzinfo is None:
        raise ValueError("at must be a timezone-aware datetime")
    if not pr.single or detail or seconds <= 0:
        return _quote_general(pr, number, seconds, at, detail)
    get = pr.entries.get
    head = pr.head
    for n in range(min(len(number), pr.heads.get(number[:head], head - 1)), 0, -1):
        entry = get(number[:n])
        if entry is not None:
            break
    else:
        entry = pr.fallback
        if entry is None or not number:
            raise _refuse(pr, number, at, True)
    ss = entry.by_slot[0]
    assert ss is not None  # one slot, and the prefix has a rate in it
    inc = ss.inc0
    if inc:
        n = -(-seconds // inc)
        total = ss.connect_num + n * ss.num0
        charged = n * inc
    else:
        total, charged = _run_cost(ss, seconds)
    x = total * pr.scale
    den = pr.denominator
    mode = pr.mode
    q = -(-x // den) if mode == 0 else x // den if mode == 1 else (2 * x + den) // (2 * den)
    if pr.max_q is not None and q > pr.max_q:
        q = pr.max_q
    return _new_quote(
        pr.name,
        service,
        number,
        entry.prefix,
        entry.destination,
        seconds,
        charged,
        Decimal(q).scaleb(pr.exponent, EXACT) if q < SCALEB_SAFE else from_scaled(q, -pr.exponent),
        pr.currency,
        ss.connect_fee,
    )


_object_new = object.__new__
_object_setattr = object.__setattr__


def _new_quote(
    plan: str,
    service: str,
    number: str,
    prefix: str,
    destination: str,
    seconds: int,
    charged: int,
    cost: Decimal,
    currency: str,
    connect_fee: Decimal,
) -> Quote:
    """Quote(...) without the generated __init__ of a frozen dataclass, which costs one
    object.__setattr__ per field (half of a quote's time); the result is equal."""
    made = _object_new(Quote)
    _object_setattr(made, "__dict__", {
        "plan": plan, "service": service, "number": number, "prefix": prefix,
        "destination": destination, "seconds": seconds, "charged_seconds": charged,
        "cost": cost, "currency": currency, "connect_fee": connect_fee, "pieces": (),
    })  # fmt: skip
    return made


def _quote_general(pr: PlanRates, number: str, seconds: int, at: datetime, detail: bool) -> Quote:
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0: {seconds}")
    at = at.astimezone(UTC)
    slot = 0 if pr.single else _slot_of(pr, at.astimezone(pr.tz))
    entry = _match(pr, number) if pr.single else _match_at(pr, number, slot)
    if entry is None:
        raise _refuse(pr, number, at, pr.single)
    ss = entry.by_slot[slot]
    assert ss is not None
    plan = pr.plan
    if seconds == 0:
        return Quote(
            plan.name,
            pr.service,
            number,
            entry.prefix,
            entry.destination,
            0,
            0,
            from_scaled(0, plan.decimals),
            plan.currency,
            _ZERO,
        )
    if not detail and _first_segment_end(pr, at) >= seconds:
        total, charged = _run_cost(ss, seconds)
        pieces: tuple[Piece, ...] = ()
    else:
        found: list[Piece] = []
        chain = _chain(pr, number)
        charged, total, gap = _walk(pr, chain, at, seconds, ss.connect_num, None, found)
        if gap:
            when = (at + timedelta(seconds=charged)).astimezone(pr.tz)
            raise NoRate(
                plan.name,
                pr.service,
                number,
                f"no rate in force at {when.isoformat()} ({charged} s into the call)",
            )
        pieces = tuple(found)
    q = round_ratio(total * pr.scale, pr.denominator, plan.rounding)
    if pr.max_q is not None and q > pr.max_q:
        q = pr.max_q
    return Quote(
        plan.name,
        pr.service,
        number,
        entry.prefix,
        entry.destination,
        seconds,
        charged,
        from_scaled(q, plan.decimals),
        plan.currency,
        ss.connect_fee,
        pieces,
    )


def max_seconds(
    table: RateTable,
    plan: Plan | str,
    number: str,
    balance: Decimal,
    at: datetime,
    service: str = DEFAULT_SERVICE,
    *,
    limit: int = MAX_CALL_SECONDS,
) -> int:
    """The longest duration whose cost fits ``balance``, at most ``limit`` seconds.

    Exactly the largest ``s <= limit`` with ``quote(...s...).cost <= balance``: 0 when the
    connect fee or the first increment does not fit. Raises NoRate for a refused number;
    a call that would run into a time with no rate is cut where that time starts.
    """
    pr = table.rates(plan, service)
    if not isinstance(balance, Decimal):
        raise TypeError("balance must be a Decimal (never a float)")
    if not balance.is_finite():
        raise ValueError(f"balance must be finite: {balance}")
    if type(limit) is not int or limit < 0:
        raise ValueError(f"limit must be an int >= 0: {limit!r}")
    if at.tzinfo is None:
        raise ValueError("at must be a timezone-aware datetime")
    at = at.astimezone(UTC)
    single = pr.single
    slot = 0 if single else _slot_of(pr, at.astimezone(pr.tz))
    entry = _match(pr, number) if single else _match_at(pr, number, slot)
    if entry is None:
        raise _refuse(pr, number, at, single)
    ss = entry.by_slot[slot]
    assert ss is not None
    plan_ = pr.plan
    balance_q = floor_scaled(balance, plan_.decimals)
    if balance_q < 0 or limit == 0:
        return 0
    budget: int | None
    if pr.max_q is not None and pr.max_q <= balance_q:
        budget = None  # the cap makes every call affordable
    else:
        budget = max_numerator(balance_q, pr.denominator, pr.scale, plan_.rounding)
        if ss.connect_num > budget:
            return 0
    if single or _first_segment_end(pr, at) >= limit:
        return _run_max(ss, budget, limit)
    t, _, _ = _walk(pr, _chain(pr, number), at, limit, ss.connect_num, budget, None)
    return min(t, limit)


def _as_seconds(seconds: object) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError(f"seconds must be an int: {seconds!r}")
    return int(seconds)


def _match(pr: PlanRates, number: str) -> Entry | None:
    """Longest prefix of ``number`` with a rate, else the ``*`` fallback."""
    get = pr.entries.get
    head = pr.head
    for n in range(min(len(number), pr.heads.get(number[:head], head - 1)), 0, -1):
        entry = get(number[:n])
        if entry is not None:
            return entry
    return pr.fallback if number else None


def _chain(pr: PlanRates, number: str) -> list[Entry]:
    """Every entry matching ``number``, longest prefix first, then the fallback."""
    get = pr.entries.get
    found = [get(number[:n]) for n in range(min(len(number), pr.maxlen), 0, -1)]
    chain = [e for e in found if e is not None]
    if pr.fallback is not None and number:
        chain.append(pr.fallback)
    return chain


def _match_at(pr: PlanRates, number: str, slot: int) -> Entry | None:
    for entry in _chain(pr, number):
        if entry.by_slot[slot] is not None:
            return entry
    return None


def _refuse(pr: PlanRates, number: str, at: datetime, single: bool) -> NoRate:
    if not number:
        reason = "empty number"
    elif single or not _chain(pr, number):
        reason = "no matching prefix"
    else:
        local = at.astimezone(pr.tz)
        reason = f"no matching prefix has a rate at {local.isoformat()}"
    return NoRate(pr.plan.name, pr.service, number, reason)


def _run_cost(ss: StepSet, seconds: int) -> tuple[int, int]:
    """(units, charged seconds) of a call of ``seconds`` > 0 inside one window."""
    for start, end, inc, num, cum in ss.runs:
        if end < 0 or seconds <= end:
            n = -(-(seconds - start) // inc)
            return ss.connect_num + cum + n * num, start + n * inc
    raise AssertionError("the last run is open")


def _run_max(ss: StepSet, budget: int | None, limit: int) -> int:
    """max_seconds inside one window; the connect fee is known to fit the budget."""
    if budget is None:
        return limit
    left = budget - ss.connect_num
    for start, end, inc, num, cum in ss.runs:
        if start >= limit:
            return limit
        if num == 0:
            if end < 0:
                return limit
            continue
        afford = (left - cum) // num
        if end < 0 or afford < (end - start) // inc:
            return min(start + afford * inc, limit)
    raise AssertionError("the last run is open")


# --- time windows -----------------------------------------------------------------------


def _slot_of(pr: PlanRates, local: datetime) -> int:
    minute = local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute
    return (bisect_right(pr.bounds, minute) - 1) % len(pr.bounds)


def _first_segment_end(pr: PlanRates, at: datetime) -> int:
    if pr.single:
        return 1 << 62
    return next(_segments(pr, at, 1))[1]


def _segments(pr: PlanRates, at: datetime, horizon: int) -> Iterator[tuple[int, int, int]]:
    """``(start, end, slot)``: the week slot in force at each whole second offset from
    ``at`` (UTC) in ``[start, end)``, until ``horizon``. Follows the plan's UTC offset
    changes (DST), so a slot is the one of the local wall-clock time at that instant."""
    bounds, tz = pr.bounds, pr.tz
    t = 0
    while t < horizon:
        local = (at + timedelta(seconds=t)).astimezone(tz)
        offset = local.utcoffset()
        minute = local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute
        i = bisect_right(bounds, minute) - 1
        slot = i % len(bounds)
        boundary = bounds[i + 1] if i + 1 < len(bounds) else bounds[0] + MINUTES_PER_WEEK
        micros = (boundary - minute) * 60_000_000 - local.second * 1_000_000 - local.microsecond
        end = t + -(-micros // 1_000_000)  # first whole second at or after the boundary
        if end - 1 > t and (at + timedelta(seconds=end - 1)).astimezone(tz).utcoffset() != offset:
            lo, hi = t, end - 1  # the UTC offset changes in (lo, hi]: find where
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if (at + timedelta(seconds=mid)).astimezone(tz).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            end = hi
        yield t, end, slot
        t = end


def _resolve(chain: list[Entry], slot: int) -> tuple[Entry, StepSet] | None:
    for entry in chain:
        ss = entry.by_slot[slot]
        if ss is not None:
            return entry, ss
    return None


def _walk(
    pr: PlanRates,
    chain: list[Entry],
    at: datetime,
    horizon: int,
    total: int,
    budget: int | None,
    pieces: list[Piece] | None,
) -> tuple[int, int, bool]:
    """Charge increments from offset 0 while they start before ``horizon``.

    Each increment is priced at the slot (window) in force at its start instant, with the
    step in force at its start offset from the call's start. Stops before the first
    increment that would take ``total`` over ``budget``, or at the first increment with no
    rate. Returns (end of the last increment charged, total, stopped at a gap).
    """
    t = 0
    for _, seg_end, slot in _segments(pr, at, horizon):
        if t >= horizon:
            break
        if t >= seg_end:
            continue  # an increment ran over this whole segment
        found = _resolve(chain, slot)
        if found is None:
            return t, total, True
        entry, ss = found
        end = min(seg_end, horizon)
        froms, steps = ss.froms, ss.steps
        while t < end:
            k = bisect_right(froms, t) - 1
            step = steps[k]
            bound = end if k + 1 == len(froms) else min(end, froms[k + 1])
            inc = step.increment
            n = -(-(bound - t) // inc)
            stop = False
            if budget is not None and step.num and (budget - total) // step.num < n:
                n = (budget - total) // step.num
                stop = True
            if n and pieces is not None:
                _add_piece(pieces, t, n * inc, entry, ss, step)
            total += n * step.num
            t += n * inc
            if stop:
                return t, total, False
    return t, total, False


def _add_piece(
    pieces: list[Piece], t: int, length: int, entry: Entry, ss: StepSet, step: Step
) -> None:
    label = ss.window.label
    if pieces:
        last = pieces[-1]
        if (
            last.offset + last.seconds == t
            and last.prefix == entry.prefix
            and last.window == label
            and last.rate == step.rate
            and last.rate_unit == step.rate_unit
            and last.increment == step.increment
        ):
            pieces[-1] = Piece(
                last.offset,
                last.seconds + length,
                last.prefix,
                label,
                step.rate,
                step.rate_unit,
                step.increment,
            )
            return
    pieces.append(Piece(t, length, entry.prefix, label, step.rate, step.rate_unit, step.increment))
