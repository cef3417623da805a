"""A Salesforce-shaped server: the OAuth2 token endpoint and the SOQL query resource.

Written from Salesforce's references: client credentials flow (POST
/services/oauth2/token, answer {access_token, instance_url, id, token_type, issued_at,
signature}, no expires_in)
https://developer.salesforce.com/docs/atlas.en-us.262.0.chatterapi.meta/chatterapi/quickstart_connecting.htm
the query resource (GET /services/data/vXX.X/query?q=, answer {totalSize, done,
nextRecordsUrl, records[{attributes{type,url}, ...}]})
https://developer.salesforce.com/docs/platform/api-rest/guide/resources-query ; SOQL
quoted-string escapes (``\\'`` and ``\\\\``; a bare quote ends the literal)
https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_quotedstringescapes.htm
error bodies ([{message, errorCode}], 401 INVALID_SESSION_ID, 400 MALFORMED_QUERY, 403
REQUEST_LIMIT_EXCEEDED)
https://developer.salesforce.com/docs/platform/api-rest/guide/errorcodes.html
the Sforce-Limit-Info header
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vendors.base import VendorServer

CLIENT_ID = "3MVG9VwZxxW3bBQjhE6m21CG2nSS4WC"
LIMIT_INFO = {"Sforce-Limit-Info": "api-usage=18/15000"}
_SOQL = re.compile(
    r"SELECT (?P<fields>.+?) FROM (?P<object>Contact|Lead) "
    r"WHERE Email = '(?P<literal>(?:[^'\\]|\\.)*)'(?P<rest>.*)$",
    re.DOTALL,
)


def unescape_soql(literal: str) -> str:
    """The value of a SOQL string literal's body (backslash escapes undone)."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), literal)


def errors(code: str, message: str) -> list[dict[str, Any]]:
    """Salesforce's error body."""
    return [{"message": message, "errorCode": code}]


@dataclass
class FakeSalesforce(VendorServer):
    """Contacts and Leads by id; tokens it issued; a secret the client must present."""

    secret: str = field(default_factory=lambda: f"sf-secret-{uuid.uuid4().hex}")
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)

    def routes(self, app: web.Application) -> None:
        """Token endpoint and query resource."""
        app.router.add_post("/services/oauth2/token", self.token)
        app.router.add_get(r"/services/data/{version:v\d+\.\d}/query", self.query)

    def add(self, kind: str, record_id: str, **values: Any) -> None:
        """A Contact or Lead; related names as ``Account={'Name': ...}``."""
        self.records[record_id] = {"kind": kind, "Id": record_id, **values}

    async def token(self, request: web.Request) -> web.Response:
        """Client credentials (or refresh token) -> a bearer token and the instance URL."""
        form = await request.post()
        if form.get("grant_type") not in ("client_credentials", "refresh_token"):
            return web.json_response(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                status=400,
            )
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != self.secret:
            return web.json_response(
                {"error": "invalid_client", "error_description": "invalid client credentials"},
                status=400,
            )
        token = f"00Dxx0000000001!AR8AQ{uuid.uuid4().hex}"
        self.issued.append(token)
        return web.json_response(
            {
                "access_token": token,
                "signature": "nUFHwtfIGLKDTHcLWmDBG8frv0t+HQGl/iCZFIQUarE=",
                "token_format": "opaque",
                "instance_url": self.url,
                "id": f"{self.url}/id/00Dxx0000000001/005xx000000001",
                "token_type": "Bearer",
                "issued_at": "1717171717171",
            }
        )

    async def query(self, request: web.Request) -> web.Response:
        """Run the two query shapes the preset sends, projecting the SELECT list."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return web.json_response(
                errors("INVALID_SESSION_ID", "Session expired or invalid"), status=401
            )
        match = _SOQL.match(request.query.get("q", ""))
        if match is None:
            return web.json_response(
                errors("MALFORMED_QUERY", "unexpected token in the query"), status=400
            )
        email = unescape_soql(match.group("literal")).lower()
        kind = match.group("object")
        rest = match.group("rest")
        rows = [
            r
            for r in self.records.values()
            if r["kind"] == kind
            and str(r.get("Email", "")).lower() == email
            and not ("IsConverted = false" in rest and r.get("IsConverted"))
        ]
        if "ORDER BY LastModifiedDate DESC" in rest:
            rows.sort(key=lambda r: r.get("LastModifiedDate", ""), reverse=True)
        limit = re.search(r"LIMIT (\d+)", rest)
        shown = rows[: int(limit.group(1))] if limit else rows
        version = request.match_info["version"]
        fields = [f.strip() for f in match.group("fields").split(",")]
        return web.json_response(
            {
                "totalSize": len(rows),
                "done": True,
                "records": [self._project(r, fields, version) for r in shown],
            },
            headers=LIMIT_INFO,
        )

    @staticmethod
    def _project(record: dict[str, Any], fields: list[str], version: str) -> dict[str, Any]:
        kind = record["kind"]
        out: dict[str, Any] = {
            "attributes": {
                "type": kind,
                "url": f"/services/data/{version}/sobjects/{kind}/{record['Id']}",
            }
        }
        for name in fields:
            if "." in name:
                parent, child = name.split(".", 1)
                related = record.get(parent)
                out[parent] = (
                    None
                    if related is None
                    else {"attributes": {"type": parent}, child: related.get(child)}
                )
            else:
                out[name] = record.get(name)
        return out
