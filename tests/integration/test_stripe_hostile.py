"""Hostile answers from a Stripe-shaped server cost bounded memory and time.

No real Stripe answer is larger than a few hundred kilobytes (a list holds at most 100
objects: https://docs.stripe.com/api/pagination) and Stripe never redirects an API call.
Here the server answers what an attacker in the path (or a broken proxy) could: a body of
512 MiB, declared or not, a 256 MiB gzip bomb, an endless body, a body trickling one byte
at a time, a redirect to another origin. The connector must give up at ``max_body_bytes``
(4 MiB by default), within its timeout, without following the redirect, and the process
must not grow by anything like what was sent (a coarse VmRSS check, generous on purpose;
the precise memory test of the whole proxy lives with the fault suite).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from aggregator.samples.stripe_api import FakeStripe
from connectors.stripe import StripeConnector, StripeSettings
from tests.support.fake_stripe import Hostile, ScriptedStripe, gzip_bomb
from tests.support.stripe_objects import StripeObjects

EMAIL = "ada@example.com"
MIB = 1 << 20


def rss_mib() -> float:
    """Resident memory of this process (Linux ``VmRSS``)."""
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
async def connector(fake_stripe: ScriptedStripe) -> AsyncIterator[StripeConnector]:
    """A connector with no retries (each hostile answer is met once) and a 1.5 s timeout."""
    settings = StripeSettings.model_validate(
        {
            "type": "stripe",
            "api_key": fake_stripe.key,
            "api_base": fake_stripe.url,
            "timeout": 1.5,
            "retries": 0,
            "circuit_failures": 0,
        }
    )
    connector = StripeConnector("stripe", settings)
    async with aiohttp.ClientSession() as session:
        await connector.open(session)
        yield connector
        await connector.close()


@pytest.mark.parametrize("kind", ["huge", "huge_declared", "gzip_bomb", "endless"])
async def test_an_oversized_answer_is_an_error_at_the_cap(
    fake_stripe: ScriptedStripe, connector: StripeConnector, kind: Hostile
) -> None:
    StripeObjects(fake_stripe).customer(EMAIL)
    fake_stripe.hostile(kind, path="/v1/customers")

    outcome = await connector.fetch(EMAIL)

    assert outcome.status == "error"
    assert outcome.detail == "FatalError"
    assert fake_stripe.requests["/v1/customers"] == 1


async def test_a_gzip_answer_of_normal_size_is_read(
    fake_stripe: ScriptedStripe, connector: StripeConnector
) -> None:
    """The connector asks for gzip and reads it (aiohttp's own decompression is off)."""
    StripeObjects(fake_stripe).customer(EMAIL, id="cus_gzip")
    fake_stripe.compress = True

    outcome = await connector.fetch(EMAIL)

    assert outcome.status == "ok"
    assert outcome.fields is not None and outcome.fields["id"] == "cus_gzip"
    assert fake_stripe.compressed_answers == fake_stripe.total_requests


async def test_a_trickling_answer_ends_at_the_timeout(
    fake_stripe: ScriptedStripe, connector: StripeConnector
) -> None:
    StripeObjects(fake_stripe).customer(EMAIL)
    fake_stripe.hostile("trickle", path="/v1/customers")

    outcome = await connector.fetch(EMAIL)

    assert outcome.status == "timeout"
    assert outcome.elapsed < 1.5 + 1.0


async def test_a_trickling_answer_ends_at_the_callers_deadline(
    fake_stripe: ScriptedStripe, connector: StripeConnector
) -> None:
    StripeObjects(fake_stripe).customer(EMAIL)
    fake_stripe.hostile("trickle", path="/v1/customers")
    loop_deadline = asyncio.get_running_loop().time() + 0.3

    outcome = await connector.fetch(EMAIL, deadline=loop_deadline)

    assert outcome.status == "timeout"
    assert outcome.elapsed < 0.3 + 1.0


async def test_a_body_cut_short_is_a_connection_error_and_retried(
    fake_stripe: ScriptedStripe, connector: StripeConnector
) -> None:
    StripeObjects(fake_stripe).customer(EMAIL, id="cus_ada")
    fake_stripe.hostile("cut", times=1, path="/v1/customers")
    retrying = StripeConnector("stripe", connector.settings.model_copy(update={"retries": 1}))
    async with aiohttp.ClientSession() as session:
        await retrying.open(session)
        outcome = await retrying.fetch(EMAIL)

    assert outcome.status == "ok"
    assert fake_stripe.requests["/v1/customers"] == 2


async def test_a_redirect_to_another_origin_is_not_followed(
    fake_stripe: ScriptedStripe, connector: StripeConnector
) -> None:
    other = FakeStripe(fake_stripe.key)
    other.add_customer(EMAIL, id="cus_elsewhere")
    await other.start()
    try:
        StripeObjects(fake_stripe).customer(EMAIL)
        fake_stripe.hostile("redirect", path="/v1/customers", location=f"{other.url}/v1/customers")

        outcome = await connector.fetch(EMAIL)
    finally:
        await other.close()

    assert outcome.status == "error"
    assert other.total_requests == 0


async def test_hostile_answers_do_not_grow_the_process(
    fake_stripe: ScriptedStripe, connector: StripeConnector
) -> None:
    StripeObjects(fake_stripe).customer(EMAIL)
    gzip_bomb()  # built before measuring: it is the server's, not the connector's
    await connector.fetch(EMAIL)
    before = rss_mib()

    kinds: list[Hostile] = ["huge", "gzip_bomb", "endless", "huge", "gzip_bomb", "endless"]
    for kind in kinds:
        fake_stripe.hostile(kind, times=1, path="/v1/customers")
        outcome = await connector.fetch(EMAIL)
        assert outcome.status == "error"

    grown = rss_mib() - before
    sent_mib = fake_stripe.hostile_bytes_sent / MIB
    # The server writes until the client hangs up: past the cap, every time.
    assert sent_mib > 4 * connector.settings.max_body_bytes / MIB
    # Unbounded, one huge answer alone would hold 512 MiB and one bomb 256 MiB.
    assert grown < 64, f"grew {grown:.0f} MiB after {sent_mib:.0f} MiB of hostile answers"
