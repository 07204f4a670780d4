"""Pure rating engine: rate decks, plans and exact call quotes (no database).

Typical use::

    rows = load_deck("deck.csv")
    table = RateTable.build([Plan("retail", "EUR", tz="Europe/Madrid")], rows)
    q = quote(table, "retail", "34912345678", 125, datetime.now(UTC))
    allowed = max_seconds(table, "retail", "34912345678", Decimal("5.00"), datetime.now(UTC))
"""

from ivr.rating.deck import check_rows, load_deck, parse_astpp, parse_deck
from ivr.rating.engine import MAX_CALL_SECONDS, RateTable, max_seconds, quote
from ivr.rating.model import (
    DeckError,
    NoRate,
    Piece,
    Plan,
    Quote,
    RateRow,
    Window,
)
from ivr.rating.money import Rounding

__all__ = [
    "MAX_CALL_SECONDS",
    "DeckError",
    "NoRate",
    "Piece",
    "Plan",
    "Quote",
    "RateRow",
    "RateTable",
    "Rounding",
    "Window",
    "check_rows",
    "load_deck",
    "max_seconds",
    "parse_astpp",
    "parse_deck",
    "quote",
]
