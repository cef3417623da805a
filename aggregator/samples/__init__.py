"""Sample upstreams for ``aggregator demo`` and the tests: Stripe-shaped API, CRM, SQL data."""

from __future__ import annotations

SAMPLE_EMAILS = ("ada@example.com", "grace@example.com", "alan@example.com")
