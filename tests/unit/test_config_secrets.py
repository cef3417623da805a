"""Config errors name the file, line and field, never a secret written in the wrong place.

Each case is a file an operator could plausibly write by mistake, loaded with the real
connector types through ``load_settings``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import load_settings
from aggregator.errors import ConfigError

SECRET = "sk_live_51HxQabcDEF123ghiJKL456mnoPQR"
SHORT = "sk_live_abc"
AUTH = "auth:\n  api_tokens: [t0ken-0123456789]\n"
REST = "  crm:\n    type: rest\n    url: 'https://crm.example.com/c?email={email}'\n"

CASES = {
    "a token as a key under auth": f"auth:\n  {SECRET}: x\n",
    "a short token as a key under auth": f"auth:\n  api_tokens: [t0ken]\n  {SHORT}: x\n",
    "a token as a top-level key": f"{AUTH}{SECRET}: 1\n",
    "a short token as a top-level key": f"{AUTH}{SHORT}: 1\n",
    "a key pasted instead of api_key": (
        f"{AUTH}connectors:\n  stripe:\n    type: stripe\n    {SECRET}: true\n"
    ),
    "a token glued to a key name": f"auth:\n  api_tokens{SECRET}: x\n",
    "a webhook secret as a key": f"{AUTH}webhooks:\n  whsec_{SECRET}: 1\n",
    "a duplicated secret key": f"auth:\n  api_tokens: [t0ken]\n  {SECRET}: 1\n  {SECRET}: 2\n",
    "a header written as its name": (
        f"{AUTH}connectors:\n{REST}    headers:\n      'Authorization: Bearer {SECRET}': x\n"
    ),
    "a bearer token as a header name": (
        f"{AUTH}connectors:\n{REST}    headers:\n      'Bearer {SECRET}': 5\n"
    ),
    "a header value that is not text": (
        f"{AUTH}connectors:\n{REST}    headers:\n      Authorization: [Bearer, {SECRET}]\n"
    ),
    "a DSN as a key": (
        f"{AUTH}connectors:\n  db:\n    type: postgres\n    query: q\n"
        f"    dsn:\n      postgresql://app:{SECRET}@db/app: 1\n"
    ),
    "a DSN in a list": (
        f"{AUTH}connectors:\n  db:\n    type: postgres\n    query: q\n"
        f"    dsn: [postgresql://app:{SECRET}@db/app]\n"
    ),
    "a token as a connector name": f"{AUTH}connectors:\n  {SECRET}:\n    type: stripe\n",
    "a token as a variable name": f"auth:\n  api_tokens: ['${{{SECRET}}}']\n",
    "a token under a wrong YAML tag": f"auth:\n  api_tokens: [!!int {SECRET}]\n",
    "a token as a YAML alias": f"auth:\n  api_tokens: [*{SECRET}]\n",
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_error_echoes_a_misplaced_secret(tmp_path: Path, case: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CASES[case], encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    text = "\n".join(info.value.problems)
    assert info.value.problems
    assert all(problem.startswith(f"{config}:") for problem in info.value.problems), text
    for fragment in (SECRET, SECRET[8:20], SHORT):
        assert fragment not in text, text


def test_a_hidden_key_still_gets_its_line_and_section(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"{AUTH}connectors:\n  stripe:\n    type: stripe\n    {SECRET}: x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    assert f"{config}:6: connectors.stripe.<hidden key>: unknown key" in info.value.problems[-1]


def test_a_header_problem_keeps_its_reason(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"{AUTH}connectors:\n{REST}    headers:\n      'X: {SECRET}': x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    assert info.value.problems == [
        f"{config}:7: connectors.crm.headers: header '<hidden>': no line breaks allowed "
        "(nor ':' in the name)"
    ]


def test_ordinary_mistakes_are_still_named(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"{AUTH}cache:\n  stale_tl: 1\nconnectors:\n  My-CRM:\n    type: rest\n"
        "    url: ${CRM_URL}\n  auth_service:\n    type: stripe\n    api_key: k\n    timout: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={})
    assert info.value.problems == [
        f"{config}:4: cache.stale_tl: unknown key (did you mean 'stale_ttl'?)",
        f"{config}:6: connectors.My-CRM: a connector name may only contain a-z, 0-9 and '_'",
        f"{config}:8: connectors.My-CRM.url: environment variable CRM_URL is not set "
        "(set it, or write ${CRM_URL:-default})",
        f"{config}:12: connectors.auth_service.timout: unknown key (did you mean 'timeout'?)",
    ]
