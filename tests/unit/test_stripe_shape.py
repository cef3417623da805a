"""The stripe connector declares the fields the README's Stripe table documents, so
``aggregator check`` can list the keys it shares with another connector of its prefix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aggregator.collisions import collision_report
from aggregator.merge import Source
from connectors.base import Connector
from connectors.rest import RestConnector, RestSettings
from connectors.stripe import StripeConnector, StripeSettings
from tests.support.vendors.base import flat_keys

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_fields() -> list[str]:
    """The names in the README's Stripe field table, shorthands spelled out.

    A row may name several fields: ``stripe_payment_method_type``, ``_brand``, ... where
    each ``_brand`` replaces the last word of the full name before it.
    """
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| `stripe_id` |") : text.index("### PostgreSQL")]
    names: list[str] = []
    for line in table.splitlines():
        if not line.startswith("| `stripe_"):
            continue
        base = ""
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if name.startswith("stripe_"):
                names.append(name)
                base = name.rsplit("_", 1)[0]
            else:
                assert name.startswith("_"), name
                names.append(base + name)
    return names


def stripe(prefix: str | None = None) -> StripeConnector:
    settings = StripeSettings.model_validate(
        {"type": "stripe", "api_key": "sk_test_x", "prefix": prefix}
    )
    return StripeConnector("stripe", settings)


def test_the_declared_shape_is_the_readme_table() -> None:
    documented = documented_fields()
    assert len(documented) == len(set(documented)), "a field is documented twice"
    declared = {f"stripe_{key}" for key in flat_keys(stripe().declared_shape())}
    assert declared == set(documented)


def test_check_lists_stripe_fields_another_connector_also_gives() -> None:
    crm = RestConnector(
        "crm",
        RestSettings(
            type="rest",
            prefix="",
            url="http://crm.invalid/c?email={email}",
            fields={"plan": "plan", "owner": "owner.name", "mrr": "mrr"},
        ),
    )
    connectors: list[Connector[Any]] = [stripe(prefix=""), crm]
    sources = [Source(c.name, c.prefix) for c in connectors]

    report = collision_report(
        sources, {c.name: c.declared_shape() for c in connectors}, max_list_items=3
    )

    assert report == [
        "keys that can collide (the connector listed first keeps the key):",
        "  plan: stripe keeps it; crm's is crm_plan",
        "  mrr: stripe keeps it; crm's is crm_mrr",
    ]
