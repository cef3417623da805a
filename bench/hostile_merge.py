"""Time to flatten and merge one hostile record: thousands of keys that sanitize alike.

    .venv/bin/python bench/hostile_merge.py [--repeat N]

Each row is the best of N runs of ``flatten`` + ``merge_profile`` (as the service runs
them: flatten once, merge the flat fields) for one record whose keys are ``a!``, ``a#``,
``a%``, ... (all sanitize to ``a``), and for one with as many distinct keys. "unbounded"
passes no ``max_keys``; "max_keys" passes the default of ``merge.max_keys``. Before the
collision renaming was made linear, the unbounded 6,000-key record took about 2 s and
the 60,000-key one about 260 s (this machine, the event loop blocked all along).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.config import MergeSettings
from aggregator.merge import Source, flatten, merge_profile
from tests.support.chaos import alike_record


def best_of(repeat: int, record: dict[str, Any], max_keys: int | None) -> tuple[float, int]:
    """The fastest of ``repeat`` runs, in seconds, and the number of keys answered."""
    best = float("inf")
    keys = 0
    for _ in range(repeat):
        started = time.perf_counter()
        flat = flatten(record, max_keys=max_keys)
        merged = merge_profile(
            [Source("crm", "crm")], {"crm": flat}, meta={}, flat=True, max_keys=max_keys
        )
        best = min(best, time.perf_counter() - started)
        keys = len(merged)
    return best, keys


def main() -> None:
    """Print one line per record size, key shape and bound."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    default = MergeSettings().max_keys
    print(f"{'record':<26} {'bound':<16} {'best time':>10} {'keys out':>9}")
    for count in (6_000, 60_000):
        for shape, record in (
            ("alike keys", alike_record(count)),
            ("distinct keys", {f"field{i}": i for i in range(count)}),
        ):
            for label, bound in (("unbounded", None), (f"max_keys {default}", default)):
                seconds, keys = best_of(args.repeat, record, bound)
                name = f"{count:,} {shape}"
                print(f"{name:<26} {label:<16} {seconds * 1000:>8.1f} ms {keys:>9,}")


if __name__ == "__main__":
    main()
