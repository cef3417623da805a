"""Every vendor fake at once, seeded with one customer, plus the config that reads them all.

Used by the end-to-end tests that run ``aggregator serve``, ``check`` and ``preview``
against the six presets and a ``rest`` connector that uses every newer key.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from tests.support.vendors import hubspot, intercom, pipedrive, salesforce, shopify, zendesk
from tests.support.vendors.base import Scripted, VendorServer

EMAIL = "o'brien+vip@example.com"
CRM_TOKEN = "crm-bearer-7d1f0c"


async def _crm(request: web.Request) -> web.StreamResponse:
    """A GraphQL-ish CRM (POST /graphql) and a REST plan service (GET /plans)."""
    if request.headers.get("Authorization") != f"Bearer {CRM_TOKEN}":
        return web.json_response({"errors": [{"message": "unauthorized"}]}, status=401)
    if request.path == "/graphql":
        body = await request.json()
        # A fuzzy search: both come back, the connector's select keeps the exact email.
        people = [
            {"id": "p-1", "email": "O'Brien+VIP@example.com", "plan": "Enterprise", "seats": 40},
            {"id": "p-2", "email": "joann.obrien@example.com", "plan": "Free", "seats": 1},
        ]
        found = people if body["variables"]["email"] == EMAIL else []
        return web.json_response({"data": {"people": found}, "errors": []})
    if request.path == "/people/p-1/notes":
        return web.json_response({"total": 4, "notes": [{"text": f"note {n}"} for n in range(4)]})
    if request.path == "/plans":
        return web.json_response({"plan": "Legacy", "email": request.query["email"]})
    return web.json_response({"error": "no route"}, status=404)


@dataclass
class Stack:
    """The running fakes."""

    hubspot: hubspot.FakeHubSpot
    salesforce: salesforce.FakeSalesforce
    intercom: intercom.FakeIntercom
    shopify: shopify.FakeShopify
    zendesk: zendesk.FakeZendesk
    pipedrive: pipedrive.FakePipedrive
    crm: Scripted

    def servers(self) -> list[VendorServer]:
        """All of them."""
        return [
            self.hubspot,
            self.salesforce,
            self.intercom,
            self.shopify,
            self.zendesk,
            self.pipedrive,
            self.crm,
        ]

    def env(self) -> dict[str, str]:
        """The secrets the config reads from the environment."""
        return {
            "HUBSPOT_TOKEN": hubspot.TOKEN,
            "SALESFORCE_CLIENT_SECRET": self.salesforce.secret,
            "INTERCOM_TOKEN": intercom.TOKEN,
            "SHOPIFY_TOKEN": shopify.TOKEN,
            "ZENDESK_TOKEN": zendesk.TOKEN,
            "PIPEDRIVE_TOKEN": pipedrive.TOKEN,
            "CRM_TOKEN": CRM_TOKEN,
        }

    def connectors_yaml(self) -> str:
        """The ``connectors:`` section (indented two spaces) for every fake."""
        return textwrap.indent(
            textwrap.dedent(
                f"""\
                crm:
                  type: rest
                  prefix: ""
                  url: "{self.crm.url}/graphql"
                  method: POST
                  auth: {{bearer: "${{CRM_TOKEN}}"}}
                  body:
                    query: "query($email: String!) {{ people(q: $email) {{ id plan }} }}"
                    variables: {{email: "{{email}}"}}
                  errors: errors
                  select: "data.people[?lower(email)=='{{email|lower}}'] | [0]"
                  fields: {{person_id: id, plan: plan, seats: seats}}
                  link: "https://crm.example.com/people/{{id}}"
                  then:
                    notes:
                      url: "{self.crm.url}/people/{{id}}/notes"
                      select: notes
                      max_items: 2
                      count: total
                extra:
                  type: rest
                  prefix: ""
                  url: "{self.crm.url}/plans?email={{email}}"
                  auth: {{bearer: "${{CRM_TOKEN}}"}}
                  fields: {{plan: plan}}
                hubspot:
                  type: hubspot
                  token: ${{HUBSPOT_TOKEN}}
                  api_base: {self.hubspot.url}
                salesforce:
                  type: salesforce
                  client_id: {salesforce.CLIENT_ID}
                  client_secret: ${{SALESFORCE_CLIENT_SECRET}}
                  api_base: {self.salesforce.url}
                intercom:
                  type: intercom
                  token: ${{INTERCOM_TOKEN}}
                  api_base: {self.intercom.url}
                shop:
                  type: shopify
                  shop: acme
                  token: ${{SHOPIFY_TOKEN}}
                  api_base: {self.shopify.url}
                zendesk:
                  type: zendesk
                  subdomain: acme
                  email: {zendesk.AGENT}
                  token: ${{ZENDESK_TOKEN}}
                  api_base: {self.zendesk.url}
                pipedrive:
                  type: pipedrive
                  company_domain: acme
                  token: ${{PIPEDRIVE_TOKEN}}
                  api_base: {self.pipedrive.url}/api/v1
                """
            ),
            "  ",
        )


def seed(stack: Stack) -> None:
    """One customer, ``o'brien+vip@example.com``, known to every vendor."""
    stack.hubspot.add_contact("101", email=EMAIL, firstname="Pat", lastmodifieddate="2024-05-01")
    stack.hubspot.add_deal("901", "101", dealname="Renewal", amount="1200", createdate="2024-04-01")
    stack.salesforce.add(
        "Contact", "003A", Email=EMAIL, Name="Pat O'Brien", Account={"Name": "Acme Corp"}
    )
    stack.intercom.add_contact("6650a1", EMAIL, name="Pat", created_at=1700000000)
    stack.intercom.add_conversation(
        "c1", "6650a1", title="Invoice?", state="open", updated_at=1717000000
    )
    stack.shopify.add_customer(
        207119551,
        EMAIL,
        [{"name": "#1001", "createdAt": "2024-05-01T00:00:00Z", "total": "19.99"}],
        displayName="Pat O'Brien",
        amountSpent={"amount": "19.99", "currencyCode": "USD"},
    )
    stack.zendesk.users.append(
        {"id": 12, "email": EMAIL, "name": "Pat O'Brien", "role": "end-user"}
    )
    stack.zendesk.tickets.append(
        {
            "id": 100,
            "requester_id": 12,
            "subject": "Login",
            "status": "open",
            "updated_at": "2024-05-02",
        }
    )
    stack.pipedrive.persons[7] = {"name": "Pat O'Brien", "emails": [EMAIL]}
    stack.pipedrive.deals.append(
        {
            "id": 50,
            "person_id": 7,
            "title": "Upsell",
            "value": 900,
            "currency": "EUR",
            "status": "open",
            "add_time": "2024-05-01 10:00:00",
        }
    )


@pytest.fixture
async def vendor_stack() -> AsyncIterator[Stack]:
    """Every fake running and seeded."""
    stack = Stack(
        hubspot.FakeHubSpot(),
        salesforce.FakeSalesforce(),
        intercom.FakeIntercom(),
        shopify.FakeShopify(),
        zendesk.FakeZendesk(),
        pipedrive.FakePipedrive(),
        Scripted(_crm),
    )
    for server in stack.servers():
        await server.start()
    seed(stack)
    yield stack
    for server in stack.servers():
        await server.stop()
