"""No token, API key, DSN password or raw email in anything the proxy or its CLI writes.

A realistic session runs twice: as a ``serve`` subprocess logging at DEBUG with the access
log on, and in process under caplog at DEBUG. It includes wrong tokens, bad emails, a
malformed request line, failing connectors holding secrets, and ``check``, ``preview``,
``purge`` runs. Everything written is then searched for each secret and each email.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import aiohttp
import pytest
import yaml

from aggregator.config import parse_settings
from aggregator.logs import JsonFormatter, TextFormatter
from tests.support.fake_stripe import FakeStripe
from tests.support.net import free_port
from tests.support.proxy import running_proxy
from tests.support.serve import ServeProcess, run_aggregator
from tests.support.upstreams import FakeCrm, start_crm

CLOSED_PORT_DSN = "postgresql://postgres:{password}@127.0.0.1:{port}/nowhere"
BROKEN_SQL = "SELECT plan FROM table_that_does_not_exist WHERE email = $1"

GOOD_EMAILS = ("Leaky.Person+vip@Example.com", "ada.private@example.org")
BAD_EMAILS = ("jane.secret.doe@example", "a@@b.example.com", "x" * 300 + "@example.com")


@dataclass(frozen=True)
class Secrets:
    """Every value that must never be written out, fresh for each test."""

    token: str
    crm_bearer: str
    db_password: str
    stripe_key: str

    @classmethod
    def fresh(cls) -> Secrets:
        """Random values, so a hit cannot be a coincidence."""
        tag = uuid.uuid4().hex
        return cls(
            token=f"groove-tok-{tag[:20]}",
            crm_bearer=f"crm-bearer-{tag[10:30]}",
            db_password=f"pg-pw-{tag[5:25]}",
            stripe_key=f"sk_test_{tag}",
        )

    def env(self) -> dict[str, str]:
        """The environment the config takes its secrets from."""
        return {
            "GROOVE_API_TOKEN": self.token,
            "CRM_TOKEN": self.crm_bearer,
            "DB_PASSWORD": self.db_password,
            "STRIPE_API_KEY": self.stripe_key,
        }


def forbidden(secrets: Secrets) -> dict[str, str]:
    """Needle -> what it is: secrets, and every email in its raw, normalized and encoded forms."""
    needles = {
        secrets.token: "api token",
        secrets.crm_bearer: "CRM bearer token",
        secrets.db_password: "DSN password",
        secrets.stripe_key: "Stripe API key",
    }
    for email in (*GOOD_EMAILS, *BAD_EMAILS[:1]):
        for form in {email, email.lower(), quote(email, safe=""), quote_plus(email)}:
            for variant in {form, form.lower()}:
                needles[variant] = f"email {email!r}"
    return needles


def leaks(text: str, secrets: Secrets) -> list[str]:
    """Each forbidden value found in ``text``, with the line it is on."""
    found = []
    lowered = text.lower()
    for needle, what in forbidden(secrets).items():
        position = lowered.find(needle.lower())
        if position >= 0:
            start = text.rfind("\n", 0, position) + 1
            end = text.find("\n", position)
            found.append(f"{what}: {text[start : end if end >= 0 else None][:300]}")
    return found


def with_password(dsn: str, password: str) -> str:
    """The DSN with ``password`` set (a trust-auth server ignores it)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def config_document(
    crm: FakeCrm, stripe_url: str, postgres_dsn: str, redis_url: str, namespace: str
) -> dict[str, Any]:
    """Connectors that all fail, each holding a secret; secrets come from ${VARS}."""
    parts = urlsplit(postgres_dsn)
    host = parts.netloc.rpartition("@")[2]
    real_dsn = urlunsplit(parts._replace(netloc=f"postgres:${{DB_PASSWORD}}@{host}"))
    rest = {"type": "rest", "select": "data[0]", "retries": 0, "timeout": 0.5}
    headers = {"Authorization": "Bearer ${CRM_TOKEN}", "X-Api-Key": "${CRM_TOKEN}"}
    return {
        "server": {"host": "127.0.0.1", "deadline": 1.5, "access_log": True},
        "auth": {"api_tokens": ["${GROOVE_API_TOKEN}"]},
        "cache": {"url": redis_url, "namespace": namespace},
        "logging": {"level": "DEBUG", "format": "text"},
        "connectors": {
            "crm": {**rest, "url": crm.template, "headers": headers},
            "gone": {**rest, "url": "http://127.0.0.1:1/c?email={email}", "headers": headers},
            "db": {
                "type": "postgres",
                "dsn": real_dsn,
                "query": BROKEN_SQL,
                "timeout": 0.5,
                "retries": 0,
            },
            "olddb": {
                "type": "postgres",
                "dsn": CLOSED_PORT_DSN.format(password="${DB_PASSWORD}", port=free_port()),
                "query": "SELECT 1 WHERE $1 = ''",
                "timeout": 0.5,
                "retries": 0,
            },
            "stripe": {
                "type": "stripe",
                "api_key": "${STRIPE_API_KEY}",
                "api_base": stripe_url,
                "retries": 0,
                "timeout": 0.5,
            },
        },
    }


@pytest.fixture
async def failing_crm() -> AsyncIterator[FakeCrm]:
    """A CRM that knows the emails but answers every request with a 503."""
    crm = FakeCrm(contacts={e.lower(): {"plan": "Pro"} for e in GOOD_EMAILS}, fail_with=503)
    runner = await start_crm(crm)
    try:
        yield crm
    finally:
        await runner.cleanup()


async def realistic_session(base_url: str, secrets: Secrets) -> list[int]:
    """What Groove, a misconfigured caller and an attacker would send; the statuses seen."""
    statuses: list[int] = []
    profile = f"{base_url}/profile"
    asks: list[dict[str, str]] = []
    for email in GOOD_EMAILS:
        asks += [
            {"email": email, "api_token": secrets.token},
            {"email": email, "api_token": secrets.token},
            {"email": email, "api_token": secrets.token[:-1] + "X"},
            {"email": email, "api_token": ""},
            {"email": email},
        ]
    asks += [{"email": email, "api_token": secrets.token} for email in BAD_EMAILS]
    async with aiohttp.ClientSession() as session:
        for params in asks:
            async with session.get(profile, params=params) as response:
                statuses.append(response.status)
        for path in ("/readyz", "/metrics", "/nope"):
            async with session.get(f"{base_url}{path}") as response:
                statuses.append(response.status)
        purge = {"email": GOOD_EMAILS[0], "api_token": secrets.token}
        async with session.post(f"{profile}/purge", params=purge) as response:
            statuses.append(response.status)
        async with session.put(profile, params=purge) as response:
            statuses.append(response.status)
    return statuses


def malformed_request_lines(secrets: Secrets) -> Iterable[bytes]:
    """Requests aiohttp's parser rejects, each carrying the token and an email."""
    query = f"email={GOOD_EMAILS[0]}&api_token={secrets.token}".encode()
    yield b"GET /profile?" + query + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n"
    yield b"GET /profile?" + query + b" HTTP/1.1\r\nHost: x\r\nX-Bad: \x01" + query + b"\r\n\r\n"
    yield b"GET /profile?" + query + b"&pad=" + b"p" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    yield b"G\x00T /profile?" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def raw_exchange(port: int, request: bytes) -> int:
    """Send raw bytes; the status the proxy answered with (0 when it answered nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def run_cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m aggregator <args> --config <config>`` with its output captured."""
    return run_aggregator(*args, "--config", str(config), env=env)


async def test_serve_and_cli_output_holds_no_secret_and_no_email(
    tmp_path: Path,
    failing_crm: FakeCrm,
    fake_stripe: FakeStripe,
    postgres_dsn: str,
    redis_url: str,
    cache_namespace: str,
) -> None:
    secrets = Secrets.fresh()
    document = config_document(
        failing_crm, fake_stripe.url, postgres_dsn, redis_url, cache_namespace
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    server = ServeProcess(config, tmp_path / "serve.log", secrets.env())
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
        statuses = await realistic_session(server.url, secrets)
    finally:
        server.stop()
    outputs = {"serve": server.output()}

    for args in (("check",), ("preview", GOOD_EMAILS[0]), ("purge", GOOD_EMAILS[1])):
        # In a thread: the fake upstreams serve from this test's event loop.
        result = await asyncio.to_thread(run_cli, config, secrets.env(), *args)
        outputs[" ".join(args[:1])] = result.stdout + result.stderr
    bad = dict(document)
    bad["server"] = {**document["server"], "port": "${GROOVE_API_TOKEN}", "deadline": "x"}
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(yaml.safe_dump(bad, sort_keys=False), encoding="utf-8")
    refused = await asyncio.to_thread(run_cli, bad_config, secrets.env(), "check")
    outputs["check (bad config)"] = refused.stdout + refused.stderr

    assert 200 in statuses and 401 in statuses and 400 in statuses, statuses
    assert all(status < 500 for status in statuses), statuses
    assert "crm" in outputs["serve"] and "request" in outputs["serve"], outputs["serve"][-2000:]
    assert "FAIL crm (rest): HTTP 503" in outputs["check"], outputs["check"]
    assert "FAIL stripe (stripe): stripe: invalid API key" in outputs["check"], outputs["check"]
    assert '"crm_error": "error"' in outputs["preview"], outputs["preview"]
    assert "configuration refused" in outputs["check (bad config)"]
    found = {name: leaks(text, secrets) for name, text in outputs.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}


def render(records: Iterable[logging.LogRecord]) -> str:
    """Every record as the text and the JSON formatter would write it, tracebacks included."""
    text, json = TextFormatter(), JsonFormatter()
    return "\n".join(f"{text.format(r)}\n{json.format(r)}" for r in records)


async def test_in_process_logs_at_debug_hold_no_secret_and_no_email(
    caplog: pytest.LogCaptureFixture,
    failing_crm: FakeCrm,
    fake_stripe: FakeStripe,
    postgres_dsn: str,
    redis_url: str,
    cache_namespace: str,
) -> None:
    secrets = Secrets.fresh()
    document = config_document(
        failing_crm, fake_stripe.url, postgres_dsn, redis_url, cache_namespace
    )
    settings = parse_settings(yaml.safe_dump(document), source="hygiene.yaml", env=secrets.env())
    caplog.set_level(logging.DEBUG)
    async with running_proxy(settings) as proxy:
        statuses = await realistic_session(proxy.url, secrets)

    assert 200 in statuses and 401 in statuses and 400 in statuses, statuses
    assert all(status < 500 for status in statuses), statuses
    assert any(r.name == "aggregator.request" for r in caplog.records)
    assert leaks(render(caplog.records), secrets) == []


async def test_malformed_requests_leave_no_token_or_email_in_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # aiohttp's parser puts the offending line (request line or header) in its exception,
    # and aiohttp.server logs that exception with its traceback.
    secrets = Secrets.fresh()
    settings = parse_settings(
        yaml.safe_dump({"auth": {"api_tokens": ["${GROOVE_API_TOKEN}"]}}),
        source="hygiene.yaml",
        env=secrets.env(),
    )
    caplog.set_level(logging.DEBUG)
    async with running_proxy(settings) as proxy:
        port = int(proxy.url.rpartition(":")[2])
        statuses = [
            await asyncio.to_thread(raw_exchange, port, line)
            for line in malformed_request_lines(secrets)
        ]

    assert statuses == [400, 400, 400, 400]
    assert any(r.name == "aiohttp.server" for r in caplog.records)
    assert leaks(render(caplog.records), secrets) == []
