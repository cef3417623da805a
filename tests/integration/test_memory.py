"""The proxy's memory stays bounded whatever its upstreams send.

A real ``aggregator serve`` process talks to a hostile JSON API (60,000 keys that
sanitize alike, 60,000 distinct keys, 1,000-deep nesting, a 50 MB body, an endless
body, a gzip bomb inflating to 1 GB), to PostgreSQL rows built the same way (60,000-key
JSONB documents, deep JSONB, a 5 MB text and a 5 MB JSONB value, a query matching
millions of rows) and to a Stripe-shaped server whose customer search answers with 512
MiB (declared or not), a gzip bomb inflating to 256 MiB, an endless body, a body
trickling a byte at a time, a body cut short, or a redirect to another origin. Five
rounds of 88 concurrent requests hit every kind at once (circuit breakers kept shut, so
every request reaches its upstreams); each answer must show the bound that applied, and
the peak resident set (VmHWM in /proc) must stay under 300 MB. The resident set after
each round is printed.

What bounds it: rest's ``max_body_bytes`` (decompressed bytes), ``merge.max_keys`` and
``merge.max_value_chars``, Postgres JSON over 1 MiB left unparsed, ``many`` queries read
through a cursor (10,000 rows), Stripe's ``max_body_bytes`` (4 MiB, on the wire and
decompressed) and its timeout. A Postgres text value is read whole by the driver: its
size times the pool's connections is not bounded by the proxy (cut it in SQL).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.hostile import (
    HOSTILE_QUERIES,
    KINDS,
    STRIPE_KINDS,
    running_hostile_api,
    running_hostile_stripe,
    seed_hostile_rows,
)
from tests.support.pg import PgSchema
from tests.support.proxy import TOKEN
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.slow

RSS_LIMIT_MB = 300
ROUNDS = 5
PER_KIND = 3
STRIPE_PER_KIND = 10
"""Per Stripe kind: the three that send bulk (huge, endless, gzip bomb) then outnumber the
connector's ``max_concurrency`` (25), so every Stripe slot reads a hostile body at once."""


def memory_mb(pid: int) -> dict[str, float]:
    """The process's current (VmRSS) and peak (VmHWM) resident set, in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def hostile_config(api_url: str, dsn: str, stripe_url: str, stripe_key: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "deadline": 8.0},
        "auth": {"api_tokens": [TOKEN]},
        "cache": {"url": "memory://", "ttl": 300},
        "logging": {"level": "WARNING"},
        "connectors": {
            "crm": {
                "type": "rest",
                "url": f"{api_url}/contacts?email={{email}}",
                "timeout": 6.0,
                "circuit_failures": 1000,
            },
            "db": {
                "type": "postgres",
                "dsn": dsn,
                "queries": HOSTILE_QUERIES,
                "timeout": 6.0,
                "max_size": 4,
                "circuit_failures": 1000,
            },
            "stripe": {
                "type": "stripe",
                "api_key": stripe_key,
                "api_base": stripe_url,
                "timeout": 2.0,
                "rate_limit": 10_000,
                "endpoint_rate_limit": 10_000,
                "circuit_failures": 1000,
            },
        },
    }


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
async def test_rss_stays_bounded_with_hostile_upstreams(
    pg_schema: PgSchema, tmp_path: Path
) -> None:
    await seed_hostile_rows(pg_schema)
    async with running_hostile_api() as api, running_hostile_stripe() as stripe:
        config = tmp_path / "config.yaml"
        settings = hostile_config(api.url, pg_schema.dsn, stripe.url, stripe.key)
        config.write_text(yaml.safe_dump(settings))
        serve = ServeProcess(config, tmp_path / "serve.log")
        answers: list[tuple[str, int, dict[str, Any]]] = []
        rounds: list[float] = []
        try:
            async with aiohttp.ClientSession() as session:
                await serve.wait_ready(session)
                before = memory_mb(serve.proc.pid)

                async def ask(email: str) -> None:
                    params = {"email": email, "api_token": TOKEN}
                    async with session.get(f"{serve.url}/profile", params=params) as response:
                        answers.append((email, response.status, await response.json()))

                for round_no in range(ROUNDS):
                    emails = [
                        f"{kind}+{round_no}-{n}@example.com"
                        for kind in KINDS
                        for n in range(PER_KIND)
                    ] + [
                        f"stripe_{kind}+{round_no}-{n}@example.com"
                        for kind in STRIPE_KINDS
                        for n in range(STRIPE_PER_KIND)
                    ]
                    await asyncio.gather(*(ask(email) for email in emails))
                    rounds.append(memory_mb(serve.proc.pid)["VmRSS"])
                after = memory_mb(serve.proc.pid)
        finally:
            serve.stop()

    print(
        f"\nRSS before {before['VmRSS']:.0f} MB, after each round "
        f"{', '.join(f'{mb:.0f}' for mb in rounds)} MB, peak {after['VmHWM']:.0f} MB "
        f"over {len(answers)} hostile profiles ({len(answers) // ROUNDS} at a time); Stripe "
        f"answered {dict(stripe.counts)}, sending {stripe.hostile_bytes_sent / 2**20:.0f} MiB"
    )
    assert all(status == 200 for _, status, _ in answers), [a[:2] for a in answers if a[1] != 200]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for email, _, body in answers:
        by_kind.setdefault(email.partition("+")[0], []).append(body)
    # Every hostile kind was read and bounded, not merely timed out.
    assert all(b["crm_truncated"] and b["crm_a_1000"] == 999 for b in by_kind["alike"])
    assert all(b["db_truncated"] for b in by_kind["alike"] + by_kind["wide"])
    assert all(b["crm_truncated"] for b in by_kind["wide"])
    assert all(b["crm_" + "_".join(["n"] * 33)] == "..." for b in by_kind["deep"])
    assert all(b["db_doc_note"] == "x" * 10_000 + "…" for b in by_kind["huge"])
    assert all(b["db_doc_doc"] == "..." for b in by_kind["huge"])
    assert all(b["db_rows_count"] == 10_000 for b in by_kind["endless"])
    assert all(
        b["crm_error"] == "error" for kind in ("huge", "endless", "bomb") for b in by_kind[kind]
    )
    # Every hostile Stripe answer ended at the cap, the timeout or the redirect, and only
    # the Stripe part of those profiles is missing.
    for kind in STRIPE_KINDS:
        expected = "timeout" if kind == "trickle" else "error"
        bodies = by_kind[f"stripe_{kind}"]
        assert len(bodies) == ROUNDS * STRIPE_PER_KIND
        assert all(b["stripe_error"] == expected and b["crm_tier"] == "gold" for b in bodies), (
            kind,
            bodies[0],
        )
        assert stripe.counts[kind] >= ROUNDS * STRIPE_PER_KIND
    assert stripe.decoy.total_requests == 0
    assert after["VmHWM"] < RSS_LIMIT_MB, f"peak RSS {after['VmHWM']:.0f} MB"
