"""The ``fake_stripe`` fixture: the package's Stripe-shaped sample server, empty, per test.

The server itself lives in ``aggregator.samples.stripe_api`` so that ``aggregator demo``
can use it; it is re-exported here for the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from aggregator.samples.stripe_api import (
    BASE_TIME,
    JSON,
    LIVE_DEFAULT,
    Failure,
    FakeStripe,
    start_fake_stripe,
)

__all__ = [
    "BASE_TIME",
    "JSON",
    "LIVE_DEFAULT",
    "Failure",
    "FakeStripe",
    "fake_stripe",
    "start_fake_stripe",
]


@pytest_asyncio.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    """An empty fake Stripe account served on 127.0.0.1."""
    fake = await start_fake_stripe(seed=False)
    try:
        yield fake
    finally:
        await fake.close()
