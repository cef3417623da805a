"""A small HTTP load generator, run as its own process; prints one JSON line of results.

Each line of JOBS_FILE is a job: one or more tab-separated URLs, fetched one after another
(or all at once with ``--parallel``); a job's latency is from its first byte sent to its
last byte read. ``--seconds S`` cycles through the jobs for S seconds; without it each job
runs once. ``--concurrency C`` jobs are in flight at any time, over at most C connections
per host. It stands in for wrk where wrk is missing, and drives the latency benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop


def percentile(sorted_values: list[float], pct: float) -> float:
    """The nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


class Run:
    """Shared state of one load run."""

    def __init__(self, jobs: Iterator[list[str]], parallel: bool, distinct: str | None) -> None:
        self.jobs = jobs
        self.parallel = parallel
        self.distinct = distinct
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.values: set[str] = set()
        self.stop_at = float("inf")

    async def fetch(self, session: aiohttp.ClientSession, url: str) -> None:
        """One GET; its status (and the watched key's value) noted."""
        try:
            async with session.get(url) as response:
                body = await response.read()
                self.statuses[response.status] += 1
                if self.distinct is not None:
                    self.values.add(str(orjson.loads(body).get(self.distinct)))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1

    async def worker(self, session: aiohttp.ClientSession) -> None:
        """Take jobs until none is left or time is up."""
        for job in self.jobs:
            if time.perf_counter() >= self.stop_at:
                return
            started = time.perf_counter()
            if self.parallel:
                await asyncio.gather(*(self.fetch(session, url) for url in job))
            else:
                for url in job:
                    await self.fetch(session, url)
            self.latencies.append(time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Drive the load; the results as a mapping."""
    lines = [line.split("\t") for line in Path(args.jobs_file).read_text().splitlines() if line]
    jobs: Iterator[list[str]] = itertools.cycle(lines) if args.seconds else iter(lines)
    state = Run(jobs, args.parallel, args.distinct)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        if args.seconds:
            state.stop_at = started + args.seconds
        await asyncio.gather(*(state.worker(session) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    latencies = sorted(state.latencies)
    ms = 1000.0
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50) * ms,
        "p90_ms": percentile(latencies, 90) * ms,
        "p99_ms": percentile(latencies, 99) * ms,
        "max_ms": (latencies[-1] if latencies else 0.0) * ms,
        "statuses": {str(k): v for k, v in state.statuses.items()},
        "errors": dict(state.errors),
        "distinct": len(state.values),
    }


def main() -> int:
    """Parse the command line, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("jobs_file")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--distinct", help="count the distinct values of this JSON key")
    args = parser.parse_args()
    result = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
