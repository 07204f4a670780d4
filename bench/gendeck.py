"""Write a large rate deck (the project's own CSV format) for the import and deck-swap
benches: ``rows`` distinct prefixes of one plan, built from the ASTPP A-Z deck's country
prefixes and its rates, extended with digits until there are enough.

    python bench/gendeck.py OUT.csv [--rows 1000000] [--plan bench] [--rate-scale 1]

Deterministic: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import csv
from decimal import Decimal
from pathlib import Path

DEFAULT_DECK = (
    Path(__file__).resolve().parents[2] / "shared/data/ratedecks/astpp_outbound_routes_AZ.csv"
)
HEADER = ("plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,"
          "days,start,end,service\n")


def write_deck(out: Path, rows: int, plan: str, rate_scale: Decimal = Decimal(1),
               source: Path = DEFAULT_DECK) -> int:
    """Write ``rows`` deck lines (plus the header) to ``out``; returns the count."""
    with source.open(newline="") as f:
        base = [(r["prefix"], r["destination"], Decimal(r["rate_per_min"]))
                for r in csv.DictReader(f)]
    taken: set[str] = set()
    written = i = 0
    with out.open("w", newline="") as f:
        f.write(HEADER)
        while written < rows:
            prefix, destination, rate = base[i % len(base)]
            round_ = i // len(base)
            i += 1
            extended = prefix + (str(round_ - 1) if round_ else "")
            if extended in taken:
                continue
            taken.add(extended)
            price = (rate * rate_scale).quantize(Decimal("0.0001"))
            f.write(f"{plan},{extended},{destination},0,{price},60,6,0,*,,,voice\n")
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--plan", default="bench")
    parser.add_argument("--rate-scale", type=Decimal, default=Decimal(1))
    args = parser.parse_args()
    n = write_deck(args.out, args.rows, args.plan, args.rate_scale)
    print(f"{args.out}: {n} rate lines")


if __name__ == "__main__":
    main()
