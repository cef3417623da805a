"""What the stripe connector declares is what a fetch gives, and ``aggregator check`` lists
the keys it shares with a connector of the same prefix (rest ``fields`` here)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from connectors.stripe import StripeConnector, StripeSettings
from tests.support.fake_stripe import ScriptedStripe
from tests.support.proxy import TOKEN
from tests.support.serve import aggregator
from tests.support.stripe_objects import T0, StripeObjects
from tests.support.vendors.base import flat_keys

EMAIL = "ada@example.com"


async def test_a_fetch_gives_exactly_the_declared_fields(fake_stripe: ScriptedStripe) -> None:
    objects = StripeObjects(fake_stripe)
    ada = objects.customer(EMAIL, created=T0)
    objects.payment_method(ada)
    objects.subscription(ada, [objects.item(objects.price(2900, product="Pro"))])
    objects.charge(ada, 2900, created=T0 + 20)
    settings = StripeSettings.model_validate(
        {"type": "stripe", "api_key": fake_stripe.key, "api_base": fake_stripe.url}
    )
    connector = StripeConnector("stripe", settings)
    async with aiohttp.ClientSession() as session:
        await connector.open(session)
        outcome = await connector.fetch(EMAIL)
        await connector.close()

    assert outcome.status == "ok"
    assert flat_keys(outcome.fields) == flat_keys(connector.declared_shape())


async def test_check_lists_the_keys_stripe_shares_with_a_rest_connector(
    tmp_path: Path, fake_stripe: ScriptedStripe
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
auth: {{api_tokens: ["{TOKEN}"]}}
connectors:
  billing:
    type: stripe
    prefix: acct
    api_key: {fake_stripe.key}
    api_base: {fake_stripe.url}
  crm:
    type: rest
    prefix: acct
    url: "{fake_stripe.url}/v1/customers?email={{email}}"
    headers: {{Authorization: "Bearer {fake_stripe.key}"}}
    select: "data[0]"
    fields: {{id: id, balance: balance, owner: metadata.owner}}
""",
        encoding="utf-8",
    )
    code, out, err = await aggregator("check", "--config", str(config))

    assert code == 0, out + err
    lines = out.splitlines()
    assert "  acct_id: billing keeps it; crm's is crm_acct_id" in lines
    assert "  acct_balance: billing keeps it; crm's is crm_acct_balance" in lines
    assert not any("owner" in line for line in lines)
    assert not any("known only after a fetch" in line for line in lines)
