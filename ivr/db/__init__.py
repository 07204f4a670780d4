"""Database access: models, engine and transactions, migrations."""

from .engine import Database, DatabaseUnavailable, lock_account, rows_changed, run_bounded
from .types import Money, MoneyPrecisionError

__all__ = ["Database", "DatabaseUnavailable", "Money", "MoneyPrecisionError", "lock_account",
           "rows_changed", "run_bounded"]
