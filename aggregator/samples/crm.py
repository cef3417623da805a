"""A sample CRM: ``GET /api/contacts?email=E`` -> ``{"data": [contact]}`` (empty when unknown).

Contacts for the sample emails of the other upstreams. When a token is given,
``Authorization: Bearer <token>`` is required; ``GET /healthz`` answers 200 without one.
``aggregator demo`` serves it on a loopback port; the compose stack runs it as
``python -m aggregator.samples.crm`` (see ``main``). No access log: queries hold emails.
"""

from __future__ import annotations

import hmac
import os
import sys
from typing import Any

from aiohttp import web

from aggregator.samples.serving import serve

CONTACTS: dict[str, dict[str, Any]] = {
    "ada@example.com": {
        "id": "con_1001",
        "email": "ada@example.com",
        "title": "Head of Engineering",
        "phone": "+44 20 7946 0018",
        "company": {"name": "Analytical Engines Ltd", "industry": "Hardware", "employees": 42},
        "owner": {"name": "Sam Rivera", "team": "EMEA"},
        "lifecycle_stage": "customer",
        "tags": ["vip", "beta"],
        "last_contacted_at": "2024-05-30T14:30:00Z",
    },
    "grace@example.com": {
        "id": "con_1002",
        "email": "grace@example.com",
        "title": "VP Platform",
        "phone": "+1 202 555 0147",
        "company": {"name": "Compiler Works Inc", "industry": "Software", "employees": 1800},
        "owner": {"name": "Priya Natarajan", "team": "Enterprise"},
        "lifecycle_stage": "customer",
        "tags": ["enterprise", "renewal-q3"],
        "last_contacted_at": "2024-06-01T09:05:00Z",
    },
    "alan@example.com": {
        "id": "con_1003",
        "email": "alan@example.com",
        "title": "Research Lead",
        "phone": None,
        "company": {"name": "Bletchley Computing", "industry": "Research", "employees": 12},
        "owner": {"name": "Sam Rivera", "team": "EMEA"},
        "lifecycle_stage": "at_risk",
        "tags": ["self-serve"],
        "last_contacted_at": None,
    },
}


def lookup(email: str) -> dict[str, Any]:
    """The API's answer for one email: its contact in ``data``, or an empty ``data``."""
    contact = CONTACTS.get(email.strip().lower())
    return {"data": [contact] if contact is not None else []}


def crm_app(token: str | None = None) -> web.Application:
    """The CRM as an aiohttp application; ``token`` (when set) is required as a bearer."""
    expected = f"Bearer {token}".encode() if token else None

    async def contacts(request: web.Request) -> web.Response:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        emails = request.query.getall("email", [])
        if len(emails) != 1 or not emails[0].strip():
            return web.json_response({"error": "one email parameter is required"}, status=400)
        return web.json_response(lookup(emails[0]))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/api/contacts", contacts)
    app.router.add_get("/healthz", healthz)
    return app


class SampleCrm:
    """The sample CRM served on a loopback port."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns the base URL."""
        self._runner, self.url = await serve(crm_app(self.token), host, port)
        return self.url

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_sample_crm(
    host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> SampleCrm:
    """Start the sample CRM; close() it after."""
    crm = SampleCrm(token)
    await crm.start(host, port)
    return crm


def main() -> None:
    """Serve until SIGTERM or Ctrl-C (exit 0); ``CRM_HOST``, ``CRM_PORT``, ``CRM_TOKEN`` apply."""
    # In its container the CRM must accept connections from the proxy's container.
    host = os.environ.get("CRM_HOST", "0.0.0.0")  # noqa: S104
    port = int(os.environ.get("CRM_PORT", "8000"))
    token = os.environ.get("CRM_TOKEN") or None

    def announce(*_: object) -> None:
        sys.stderr.write(f"sample CRM listening on {host}:{port}\n")

    web.run_app(crm_app(token), host=host, port=port, access_log=None, print=announce)


if __name__ == "__main__":
    main()
