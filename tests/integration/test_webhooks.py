"""POST /webhooks/stripe: signed events drop the cached profile of their customer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest

from aggregator.keys import SERVICE
from tests.support.proxy import Proxy, running_proxy, settings_from
from tests.support.upstreams import FakeCrm

SECRET = "whsec_test_secret_0123456789"


def signed(event: dict[str, Any], secret: str = SECRET) -> tuple[bytes, str]:
    """The payload and Stripe-Signature header Stripe would send."""
    payload = orjson.dumps(event)
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, f"t={timestamp},v1={digest.hexdigest()}"


def event(kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous:
        data["previous_attributes"] = previous
    return {"id": "evt_1", "object": "event", "type": kind, "data": data}


async def post_event(proxy: Proxy, payload: bytes, signature: str) -> tuple[int, dict[str, Any]]:
    async with proxy.session.post(
        f"{proxy.url}/webhooks/stripe", data=payload, headers={"Stripe-Signature": signature}
    ) as response:
        return response.status, await response.json()


def crm_settings(crm: FakeCrm, secret: str | None = SECRET) -> Any:
    webhooks = {"stripe_secret": secret} if secret else {}
    return settings_from(
        {"crm": {"type": "rest", "url": crm.template, "select": "data[0]"}}, webhooks=webhooks
    )


@pytest.mark.parametrize(
    ("kind", "obj", "previous"),
    [
        ("customer.updated", {"object": "customer", "id": "cus_1", "email": "Ada@Example.com"}, {}),
        (
            "customer.updated",
            {"object": "customer", "id": "cus_1", "email": "new@example.com"},
            {"email": "ada@example.com"},
        ),
        ("invoice.paid", {"object": "invoice", "customer_email": "ada@example.com"}, {}),
        (
            "charge.succeeded",
            {"object": "charge", "billing_details": {"email": "ada@example.com"}},
            {},
        ),
    ],
)
async def test_signed_event_purges_the_customers_profile(
    crm: FakeCrm, kind: str, obj: dict[str, Any], previous: dict[str, Any]
) -> None:
    async with running_proxy(crm_settings(crm)) as proxy:
        await proxy.profile("ada@example.com")
        crm.contacts["ada@example.com"]["seats"] = 40
        _, cached = await proxy.profile("ada@example.com")
        status, answer = await post_event(proxy, *signed(event(kind, obj, previous)))
        _, fresh = await proxy.profile("ada@example.com")
    assert cached["crm_seats"] == 12
    assert status == 200
    assert answer["purged"] >= 1
    assert fresh["crm_seats"] == 40
    assert fresh["profile_cached"] is False


async def test_bad_signature_is_400_and_purges_nothing(crm: FakeCrm) -> None:
    obj = {"object": "customer", "id": "cus_1", "email": "ada@example.com"}
    async with running_proxy(crm_settings(crm)) as proxy:
        await proxy.profile("ada@example.com")
        payload, _ = signed(event("customer.updated", obj))
        _, forged = signed(event("customer.updated", obj), secret="whsec_other")
        status, answer = await post_event(proxy, payload, forged)
        missing, _ = await post_event(proxy, payload, "")
        _, body = await proxy.profile("ada@example.com")
    assert (status, missing) == (400, 400)
    assert "Stripe-Signature" in answer["error"]
    assert body["profile_cached"] is True


async def test_unrelated_event_is_acknowledged(crm: FakeCrm) -> None:
    async with running_proxy(crm_settings(crm)) as proxy:
        status, answer = await post_event(
            proxy, *signed(event("payout.paid", {"object": "payout", "id": "po_1"}))
        )
    assert status == 200
    assert answer["purged"] == 0


async def test_webhook_without_a_secret_configured_is_404(crm: FakeCrm) -> None:
    async with running_proxy(crm_settings(crm, secret=None)) as proxy:
        status, answer = await post_event(proxy, b"{}", "t=1,v1=00")
    assert status == 404
    assert "stripe_secret" in answer["error"]


async def test_purge_endpoint_needs_the_token_and_drops_the_profile(crm: FakeCrm) -> None:
    async with running_proxy(crm_settings(crm)) as proxy:
        await proxy.profile("ada@example.com")
        params = {"email": "ada@example.com", "api_token": "wrong"}
        async with proxy.session.post(f"{proxy.url}/profile/purge", params=params) as response:
            refused = response.status
        _, still_cached = await proxy.profile("ada@example.com")
        params["api_token"] = "test-token-0123456789"
        async with proxy.session.post(f"{proxy.url}/profile/purge", params=params) as response:
            purged = response.status
        _, fresh = await proxy.profile("ada@example.com")
    assert refused == 401
    assert still_cached["profile_cached"] is True
    assert purged == 200
    assert fresh["profile_cached"] is False
    assert crm.calls["ada@example.com"] == 2


async def test_profile_path_answers_only_get_and_head(crm: FakeCrm) -> None:
    async with running_proxy(crm_settings(crm)) as proxy:
        params = {"email": "ada@example.com", "api_token": "test-token-0123456789"}
        async with proxy.session.head(f"{proxy.url}/profile", params=params) as response:
            head = response.status
        statuses = []
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            async with proxy.session.request(
                method, f"{proxy.url}/profile", params=params
            ) as response:
                statuses.append(response.status)
    assert head == 200
    assert statuses == [405, 405, 405, 405]


async def test_subscription_event_finds_the_email_through_stripe(
    crm: FakeCrm, fake_stripe: Any
) -> None:
    customer = fake_stripe.add_customer("ada@example.com")
    settings = settings_from(
        {
            "crm": {"type": "rest", "url": crm.template, "select": "data[0]"},
            "stripe": {"type": "stripe", "api_key": fake_stripe.key, "api_base": fake_stripe.url},
        },
        webhooks={"stripe_secret": SECRET},
    )
    subscription = {"object": "subscription", "id": "sub_1", "customer": customer["id"]}
    async with running_proxy(settings) as proxy:
        await proxy.profile("ada@example.com")
        crm.contacts["ada@example.com"]["seats"] = 40
        status, answer = await post_event(
            proxy, *signed(event("customer.subscription.updated", subscription))
        )
        _, fresh = await proxy.profile("ada@example.com")
    assert status == 200
    assert answer["purged"] == 1
    assert fresh["crm_seats"] == 40
    assert fake_stripe.requests[f"/v1/customers/{customer['id']}"] == 1


async def test_after_a_stripe_event_the_next_groove_call_is_a_fresh_cached_hit(
    crm: FakeCrm,
) -> None:
    settings = settings_from(
        {"crm": {"type": "rest", "url": crm.template, "select": "data[0]"}},
        webhooks={"stripe_secret": SECRET, "refetch_after": 0},
    )
    obj = {"object": "customer", "id": "cus_1", "email": "Ada@Example.com"}
    async with running_proxy(settings) as proxy:
        await proxy.profile("ada@example.com")
        crm.contacts["ada@example.com"]["seats"] = 40
        status, answer = await post_event(proxy, *signed(event("customer.updated", obj)))
        service = proxy.app[SERVICE]
        async with asyncio.timeout(5):  # the refetch runs in the background: wait for it
            while len(service.refetches) or "ada@example.com" in service.loads:
                await asyncio.sleep(0)
        _, after = await proxy.profile("ada@example.com")
        await post_event(
            proxy,
            *signed(event("customer.updated", {**obj, "email": "nobody@example.com"})),
        )
        await asyncio.sleep(0)
        idle = len(service.refetches) == 0 and "nobody@example.com" not in service.loads
    assert (status, answer["purged"]) == (200, 1)
    assert after["crm_seats"] == 40
    assert after["profile_cached"] is True
    assert crm.calls["ada@example.com"] == 2
    assert idle
    assert crm.calls["nobody@example.com"] == 0
