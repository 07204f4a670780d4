"""Money and durations, spoken: SAY NUMBER for the numbers, and for the words around them
Asterisk's core sounds where they exist (English: "dollars", "minutes", "and" ...), else
the catalogue's own prompts ("cents", "dollar", every Spanish word).

    await voice.say_money(call, Decimal("5.20"), "USD")   # five dollars and twenty cents
    await voice.say_duration(call, 23 * 60)               # twenty-three minutes

(ivr.prompts.api.Voice speaks the steps this module plans.)

Numbers are said by Asterisk (SAY NUMBER) in the channel's language, which is set to the
call's prompt language first; the sandbox has the English and Spanish core sounds.

Each helper stops at a key in ``escape_digits`` and returns it ("" when none).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from ..agi import AgiSession

# Core sounds that say a catalogue word, per language, in the voice that says the numbers.
# Checked present in Asterisk 22's core sounds (asterisk-core-sounds-en / -es: the Spanish
# set has no singular minute or second); others come from the catalogue.
CORE_SOUNDS: dict[str, dict[str, str]] = {
    "en": {
        "unit-dollars": "digits/dollars",
        "unit-hours": "hours",
        "unit-minute": "minute",
        "unit-minutes": "minutes",
        "unit-second": "second",
        "unit-seconds": "seconds",
        "word-and": "vm-and",
        "word-minus": "digits/minus",
    },
    "es": {
        "unit-dollars": "digits/dollars",
        "unit-hours": "hours",
        "unit-minutes": "minutes",
        "unit-seconds": "seconds",
        "word-and": "vm-and",
        "word-minus": "digits/minus",
    },
}

# currency: (one, many, one hundredth, many hundredths) as catalogue ids
CURRENCIES: dict[str, tuple[str, str, str, str]] = {
    "USD": ("unit-dollar", "unit-dollars", "unit-cent", "unit-cents"),
    "EUR": ("unit-euro", "unit-euros", "unit-euro-cent", "unit-euro-cents"),
    "GBP": ("unit-pound", "unit-pounds", "unit-penny", "unit-pence"),
    "MXN": ("unit-peso", "unit-pesos", "unit-centavo", "unit-centavos"),
}
DURATION_UNITS = (
    ("unit-hour", "unit-hours"),
    ("unit-minute", "unit-minutes"),
    ("unit-second", "unit-seconds"),
)
WORDS = ("word-and", "word-minus")
CENT = Decimal("0.01")

Step = tuple[str, int | str]  # ("number", 5) or ("word", "unit-dollars")


def word_ids() -> set[str]:
    """Every catalogue id these helpers may play (checked by the coverage test)."""
    ids = set(WORDS)
    for units in CURRENCIES.values():
        ids.update(units)
    for pair in DURATION_UNITS:
        ids.update(pair)
    return ids


def money_steps(amount: Decimal, currency: str) -> list[Step]:
    """What to say for an amount, truncated to cents (a balance is never overstated)."""
    try:
        one, many, cent_one, cent_many = CURRENCIES[currency.upper()]
    except KeyError:
        raise ValueError(f"no spoken words for currency {currency!r}; "
                         f"known: {', '.join(sorted(CURRENCIES))}") from None
    amount = Decimal(amount).quantize(CENT, rounding=ROUND_DOWN)
    steps: list[Step] = []
    if amount < 0:
        steps.append(("word", "word-minus"))
        amount = -amount
    whole = int(amount)
    cents = int((amount - whole) * 100)
    if whole or not cents:
        steps += [("number", whole), ("word", one if whole == 1 else many)]
    if cents:
        if whole:
            steps.append(("word", "word-and"))
        steps += [("number", cents), ("word", cent_one if cents == 1 else cent_many)]
    return steps


def duration_steps(seconds: int, *, whole_minutes: bool = False) -> list[Step]:
    """``1 hour, 5 minutes and 3 seconds``; with ``whole_minutes`` only the (floored)
    minutes: "you have 23 minutes" never promises a minute that is not there."""
    seconds = max(0, int(seconds))
    if whole_minutes:
        minutes = seconds // 60
        return [("number", minutes), ("word", "unit-minute" if minutes == 1 else "unit-minutes")]
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(n, units) for n, units in zip((hours, minutes, secs), DURATION_UNITS, strict=True)
             if n]
    if not parts:
        parts = [(0, DURATION_UNITS[2])]
    steps: list[Step] = []
    for i, (n, (one, many)) in enumerate(parts):
        if i and i == len(parts) - 1:
            steps.append(("word", "word-and"))
        steps += [("number", n), ("word", one if n == 1 else many)]
    return steps


async def channel_language(call: AgiSession, lang: str) -> None:
    """SAY NUMBER speaks the channel's language: make it the caller's (once per change)."""
    current = call.state.get("channel_language") or (call.env.get("language") or "en")
    if current.split("_")[0].lower() != lang:
        await call.set_variable("CHANNEL(language)", lang)
    call.state["channel_language"] = lang
