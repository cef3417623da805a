"""The proxy's memory stays bounded whatever its upstreams send.

A real ``aggregator serve`` process talks to a hostile JSON API (60,000 keys that
sanitize alike, 60,000 distinct keys, 1,000-deep nesting, a 50 MB body, an endless
body, a gzip bomb inflating to 1 GB) and to PostgreSQL rows built the same way (a
60,000-key JSONB, deep JSONB, a 30 MB text value, a query streaming millions of rows).
Rounds of concurrent requests hit every kind at once; the process's peak resident set
(VmHWM in /proc) must stay under 300 MB, and every answer is still a 200.

The Stripe connector's hostile bodies are not part of this test yet (its body caps are
being added separately).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.hostile import HOSTILE_QUERIES, KINDS, running_hostile_api, seed_hostile_rows
from tests.support.pg import PgSchema
from tests.support.proxy import TOKEN
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.slow

RSS_LIMIT_MB = 300
ROUNDS = 3
PER_KIND = 4


def memory_mb(pid: int) -> dict[str, float]:
    """The process's current (VmRSS) and peak (VmHWM) resident set, in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def hostile_config(api_url: str, dsn: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "deadline": 3.0},
        "auth": {"api_tokens": [TOKEN]},
        "cache": {"url": "memory://", "ttl": 300},
        "logging": {"level": "WARNING"},
        "connectors": {
            "crm": {"type": "rest", "url": f"{api_url}/contacts?email={{email}}", "timeout": 2.0},
            "db": {
                "type": "postgres",
                "dsn": dsn,
                "queries": HOSTILE_QUERIES,
                "timeout": 2.0,
                "max_size": 4,
            },
        },
    }


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
async def test_rss_stays_bounded_with_hostile_upstreams(
    pg_schema: PgSchema, tmp_path: Path
) -> None:
    await seed_hostile_rows(pg_schema)
    async with running_hostile_api() as api:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(hostile_config(api.url, pg_schema.dsn)))
        serve = ServeProcess(config, tmp_path / "serve.log")
        answers: list[tuple[str, int, dict[str, Any]]] = []
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
                        for kind in os.environ.get("HOSTILE_KINDS", ",".join(KINDS)).split(",")
                        for n in range(PER_KIND)
                    ]
                    await asyncio.gather(*(ask(email) for email in emails))
                after = memory_mb(serve.proc.pid)
        finally:
            serve.stop()

    print(
        f"\nRSS before {before['VmRSS']:.0f} MB, after {after['VmRSS']:.0f} MB, "
        f"peak {after['VmHWM']:.0f} MB over {len(answers)} hostile profiles"
    )
    if os.environ.get("HOSTILE_KINDS"):
        return
    assert all(status == 200 for _, status, _ in answers), [a[:2] for a in answers if a[1] != 200]
    by_kind = {email.partition("+")[0]: body for email, _, body in answers}
    assert by_kind["alike"]["crm_truncated"] is True
    assert by_kind["wide"]["db_doc_truncated"] is True or by_kind["wide"].get("db_truncated")
    assert by_kind["huge"]["crm_error"] == "error"
    assert by_kind["bomb"]["crm_error"] == "error"
    assert after["VmHWM"] < RSS_LIMIT_MB, f"peak RSS {after['VmHWM']:.0f} MB"
