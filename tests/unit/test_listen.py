"""Where ``aggregator serve`` may listen, and which tokens it warns about (issue 11)."""

from __future__ import annotations

import pytest

from aggregator.config import Settings, parse_settings
from aggregator.server import Refused, is_loopback, plan_listen, token_warnings


def settings(*tokens: str, host: str = "0.0.0.0") -> Settings:
    listed = ", ".join(f'"{t}"' for t in tokens)
    text = f"server: {{host: '{host}', port: 8080}}\nauth: {{api_tokens: [{listed}]}}\n"
    return parse_settings(text, env={})


STRONG = "k3J9x0Qw8rT2mZ5v"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_configured_token_listens_where_asked() -> None:
    plan = plan_listen(settings(STRONG), None, None, {})
    assert (plan.host, plan.port, plan.warnings) == ("0.0.0.0", 8080, [])
    assert plan_listen(settings(STRONG), "10.0.0.1", 9000, {}).host == "10.0.0.1"


@pytest.mark.parametrize(
    ("cli_host", "environ"),
    [("0.0.0.0", {}), ("::", {}), (None, {"HOST": "0.0.0.0"}), ("192.168.1.5", {"HOST": ""})],
)
def test_the_public_token_refuses_an_explicit_wide_address(
    cli_host: str | None, environ: dict[str, str]
) -> None:
    with pytest.raises(Refused, match="set GROOVE_API_TOKEN"):
        plan_listen(settings("dev-token", host=cli_host or "0.0.0.0"), cli_host, None, environ)


def test_the_public_token_alongside_a_real_one_still_counts() -> None:
    with pytest.raises(Refused):
        plan_listen(settings(STRONG, "dev-token"), "0.0.0.0", None, {})


def test_the_public_token_from_the_config_default_falls_back_to_loopback() -> None:
    plan = plan_listen(settings("dev-token"), None, None, {})
    assert plan.host == "127.0.0.1"
    assert any("listening on 127.0.0.1 only" in w for w in plan.warnings)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_the_public_token_may_listen_on_loopback(host: str) -> None:
    plan = plan_listen(settings("dev-token", host=host), host, None, {"HOST": host})
    assert plan.host == host
    assert plan.warnings == [
        "auth.api_tokens[0] is the public development token 'dev-token': set GROOVE_API_TOKEN "
        "to your Groove account's API token"
    ]


@pytest.mark.parametrize(
    ("token", "warning"),
    [
        ("demo-token", "well-known token 'demo-token'"),
        ("changeme", "well-known token 'changeme'"),
        ("Secret", "well-known token 'Secret'"),
        ("short-token", "shorter than 16 characters"),
    ],
)
def test_weak_tokens_are_warned_about_but_accepted(token: str, warning: str) -> None:
    plan = plan_listen(settings(STRONG, token), "0.0.0.0", None, {})
    assert plan.host == "0.0.0.0"
    assert [w for w in token_warnings(settings(STRONG, token))] == plan.warnings
    assert len(plan.warnings) == 1 and warning in plan.warnings[0]
    assert plan.warnings[0].startswith("auth.api_tokens[1]")
