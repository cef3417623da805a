"""POST /webhooks/stripe: a signed Stripe event drops the cached profile of its customer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import stripe
from aiohttp import web

from aggregator.emails import InvalidEmail, parse_email
from aggregator.errors import ConnectorError
from aggregator.handlers import JSON, json_error
from aggregator.keys import SERVICE

log = logging.getLogger("aggregator.webhooks")

MAX_EVENT_BYTES = 512 * 1024
WATCHED_PREFIXES = ("customer.", "charge.", "invoice.")


class CustomerDirectory(Protocol):
    """Something that can name the email of a Stripe customer id (the stripe connector)."""

    async def email_of_customer(self, customer_id: str) -> str | None:
        """The customer's email, or None."""


class NotAnEvent(ValueError):
    """A validly signed payload that is not shaped like a Stripe event; says what is wrong."""


def event_parts(payload: bytes) -> tuple[str, Mapping[str, Any], Mapping[str, Any]]:
    """The type, ``data.object`` and ``data.previous_attributes`` of an event; NotAnEvent else.

    Only the structure the proxy walks is checked (an email of another type is
    simply not used): the event, ``data``, its object, ``previous_attributes`` and
    ``billing_details`` must be objects (the last two may be null), ``type`` text and
    ``customer`` an id or an object.
    """
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise NotAnEvent("the body is not JSON this proxy reads (nested too deep?)") from None
    if not isinstance(event, dict):
        raise NotAnEvent("the body is not a JSON object")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise NotAnEvent("'type' is not a non-empty string")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise NotAnEvent("'data.object' is not an object")
    obj: dict[str, Any] = data["object"]
    previous = data.get("previous_attributes")
    if previous is None:
        previous = {}
    if not isinstance(previous, dict):
        raise NotAnEvent("'data.previous_attributes' is not an object")
    if not isinstance(obj.get("billing_details"), dict | None):
        raise NotAnEvent("'billing_details' is not an object")
    if not isinstance(obj.get("customer"), str | dict | None):
        raise NotAnEvent("'customer' is neither an id nor an object")
    return event_type, obj, previous


def emails_in_event(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> set[str]:
    """Emails written in the event's object itself (customer, charge, invoice).

    Each is normalized and remembers its spelling (``Email.as_sent``): Stripe matches
    emails case-sensitively, so a refetch looks the customer up as Stripe has it.
    """
    found: set[str] = set()
    billing = obj.get("billing_details")
    candidates: list[Any] = [
        obj.get("customer_email"),
        obj.get("receipt_email"),
        billing.get("email") if isinstance(billing, Mapping) else None,
        previous.get("email"),
    ]
    if obj.get("object") == "customer":
        candidates.append(obj.get("email"))
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        candidates.append(customer.get("email"))
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            try:
                found.add(parse_email(candidate))
            except InvalidEmail:
                continue
    return found


def customer_id_of(obj: Mapping[str, Any]) -> str | None:
    """The customer id an event's object belongs to."""
    if obj.get("object") == "customer":
        value = obj.get("id")
    else:
        value = obj.get("customer")
        if isinstance(value, Mapping):
            value = value.get("id")
    return value if isinstance(value, str) and value else None


def is_watched(event_type: str) -> bool:
    """Customer, charge, subscription and invoice events change what a profile shows."""
    return event_type.startswith(WATCHED_PREFIXES) or "subscription" in event_type


def _directory(request: web.Request) -> CustomerDirectory | None:
    for connector in request.app[SERVICE].connectors:
        if hasattr(connector, "email_of_customer"):
            directory: CustomerDirectory = connector
            return directory
    return None


async def stripe_webhook(request: web.Request) -> web.Response:
    """Verify the signature, find the customer's email(s), purge their cached profiles.

    Profiles that were cached are fetched again in the background once the customer's
    events stop (``webhooks.refetch_after``), with each email spelled as Stripe has it.
    """
    secret = request.app[SERVICE].settings.webhooks.stripe_secret
    if secret is None:
        return json_error(404, "stripe webhooks are not configured (webhooks.stripe_secret)")
    if request.content_length is not None and request.content_length > MAX_EVENT_BYTES:
        return json_error(413, "event too large")
    payload = await request.read()
    if len(payload) > MAX_EVENT_BYTES:
        return json_error(413, "event too large")
    signature = request.headers.get("Stripe-Signature", "")
    if not signature.isascii():
        return json_error(400, "invalid Stripe-Signature or payload")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret.get_secret_value(), stripe.Webhook.DEFAULT_TOLERANCE
        )
    except (stripe.SignatureVerificationError, ValueError):
        return json_error(400, "invalid Stripe-Signature or payload")
    try:
        event_type, obj, previous = event_parts(payload)
    except NotAnEvent as exc:
        return json_error(400, f"not a Stripe event: {exc}")
    if not is_watched(event_type):
        return _answer(event_type, 0)
    emails = emails_in_event(obj, previous)
    customer_id = customer_id_of(obj)
    directory = _directory(request)
    if customer_id and directory is not None and (not emails or event_type.startswith("sub")):
        try:
            email = await directory.email_of_customer(customer_id)
        except (ConnectorError, TimeoutError):
            log.warning("stripe webhook %s: customer lookup failed", event_type)
            email = None
        if email:
            with contextlib.suppress(InvalidEmail):
                emails.add(parse_email(email))
    purged = 0
    service = request.app[SERVICE]
    for email in emails:
        purged += bool(await service.invalidate(email))
    log.info("stripe webhook %s purged %d profile(s)", event_type, purged)
    return _answer(event_type, purged)


def _answer(event_type: str, purged: int) -> web.Response:
    body = orjson.dumps({"received": True, "type": event_type, "purged": purged})
    return web.Response(body=body, content_type=JSON)
