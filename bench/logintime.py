"""Log-in bench: an unknown card number takes as long to refuse as a wrong PIN.

    python bench/logintime.py [--tries 50] [--postgres URL]

Times ``ivr.login.log_in`` (card number and PIN checked together) for a number that is no
card and for a real card with a wrong PIN, alternately, and prints the median and the
10th/90th percentiles of each. Both check a PIN hash of the same cost (a decoy for the
unknown number) and run two short transactions; the caller ID and card thresholds are
set out of reach so nothing is locked. On SQLite in a temporary directory unless
``--postgres`` names a database to use (its tables are created; use a scratch one).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from ivr import login
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.login import LoginPolicy
from ivr.testing.access import create_test_plan, new_card

UNKNOWN = "000000000000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=50)
    parser.add_argument("--postgres", metavar="URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(args.postgres or f"sqlite:///{Path(tmp) / 'ivr.sqlite3'}")
        upgrade(db.engine)
        create_test_plan(db)
        card = new_card(db, Decimal("5"))
        wrong = "9" * len(card.pin) if card.pin != "9" * len(card.pin) else "1" * len(card.pin)
        policy = LoginPolicy(pin_max_failures=10**9, callerid_max_failures=10**9)
        login.log_in(db, UNKNOWN, wrong, None, policy)  # the decoy hash is made once
        times: dict[str, list[float]] = {"unknown card number": [], "wrong PIN": []}
        for _ in range(args.tries):
            for what, number in (("unknown card number", UNKNOWN), ("wrong PIN", card.number)):
                start = time.perf_counter()
                login.log_in(db, number, wrong, None, policy)
                times[what].append((time.perf_counter() - start) * 1000)
        for what, ms in times.items():
            deciles = statistics.quantiles(ms, n=10)
            print(f"{what:20} median {statistics.median(ms):6.1f} ms   "
                  f"p10 {deciles[0]:6.1f}   p90 {deciles[-1]:6.1f}   ({len(ms)} tries)")
        db.engine.dispose()


if __name__ == "__main__":
    main()
