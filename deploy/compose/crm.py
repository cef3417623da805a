"""A tiny sample CRM for the compose stack: ``GET /api/contacts?email=E`` -> ``{"data": [...]}``.

Standard library only, so it runs on a bare ``python`` image. ``CRM_TOKEN``, when set,
is required as ``Authorization: Bearer <token>``; ``CRM_HOST`` and ``CRM_PORT`` (8000)
choose the address. ``GET /healthz`` answers 200. Emails are never logged.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

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
    "linus@example.com": {
        "id": "con_1003",
        "email": "linus@example.com",
        "title": "Maintainer",
        "phone": None,
        "company": {"name": "Kernel Hackers", "industry": "Open source", "employees": 3},
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


class CrmServer(ThreadingHTTPServer):
    """The HTTP server, holding the bearer token its handler requires (None: no auth)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], token: str | None) -> None:
        super().__init__(address, CrmHandler)
        self.token = token


class CrmHandler(BaseHTTPRequestHandler):
    """Answers ``/healthz`` and ``/api/contacts``; anything else is a 404."""

    server: CrmServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """Route one GET request."""
        parts = urlsplit(self.path)
        if parts.path == "/healthz":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif parts.path == "/api/contacts":
            self._contacts(parts.query)
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _contacts(self, query: str) -> None:
        if not self._authorized():
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        emails = parse_qs(query).get("email", [])
        if len(emails) != 1 or not emails[0].strip():
            self._send(HTTPStatus.BAD_REQUEST, {"error": "one email parameter is required"})
            return
        self._send(HTTPStatus.OK, lookup(emails[0]))

    def _authorized(self) -> bool:
        token = self.server.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line per request, without the query string (it holds the customer's email)."""
        path = urlsplit(getattr(self, "path", "")).path or "-"
        method = getattr(self, "command", None) or "-"
        sys.stderr.write(f"crm {method} {path} {code}\n")

    def log_message(self, format: str, *args: Any) -> None:
        """Other messages keep their numbers; text (a request line, an email) is masked."""
        masked = tuple(arg if isinstance(arg, int) else "-" for arg in args)
        sys.stderr.write(f"crm: {format % masked}\n")


def make_server(host: str, port: int, token: str | None = None) -> CrmServer:
    """A CRM server bound to ``host:port`` (port 0: a free one), not yet serving."""
    return CrmServer((host, port), token)


def _stop(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


def main() -> None:
    """Serve until SIGTERM or Ctrl-C (exit 0); address and token come from the environment."""
    # In its container the CRM must accept connections from the proxy's container.
    host = os.environ.get("CRM_HOST", "0.0.0.0")  # noqa: S104
    port = int(os.environ.get("CRM_PORT", "8000"))
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with make_server(host, port, os.environ.get("CRM_TOKEN") or None) as server:
        sys.stderr.write(f"sample CRM listening on {host}:{server.server_address[1]}\n")
        server.serve_forever()


if __name__ == "__main__":
    main()
