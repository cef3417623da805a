"""config.yaml loading: models, interpolation, and problems reported with file:line."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, model_validator

from aggregator.config import Settings, load_settings, parse_settings
from aggregator.errors import ConfigError
from connectors.base import Connector, ConnectorSettings
from tests.support.registry import entry_points, loadable_types


class FakeStripeSettings(ConnectorSettings):
    api_key: SecretStr
    api_base: str = "https://api.stripe.com"


class FakePostgresSettings(ConnectorSettings):
    dsn: SecretStr
    query: str


class FakeRestSettings(ConnectorSettings):
    url: str
    headers: dict[str, str] = {}
    select: str | None = None


class FakeStripe(Connector[FakeStripeSettings]):
    settings_model = FakeStripeSettings

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        return None


class FakePostgres(Connector[FakePostgresSettings]):
    settings_model = FakePostgresSettings

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        return None


class FakeRest(Connector[FakeRestSettings]):
    settings_model = FakeRestSettings

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        return None


class FakeTemplateSettings(ConnectorSettings):
    url: str
    retries: int = 1

    @model_validator(mode="after")
    def _email_in_url(self) -> FakeTemplateSettings:
        if "{email}" not in self.url:
            raise ValueError("url must contain {email}")
        return self


class FakeTemplate(Connector[FakeTemplateSettings]):
    settings_model = FakeTemplateSettings

    async def _fetch(self, email: str) -> Mapping[str, Any] | None:
        return None


TYPES: dict[str, type[Connector[Any]]] = {
    "stripe": FakeStripe,
    "postgres": FakePostgres,
    "rest": FakeRest,
}

CONTRACT_EXAMPLE = """\
server:
  host: 0.0.0.0
  port: 8080
  path: /profile
  deadline: 3.0            # seconds: the whole answer, whatever upstreams do
auth:
  api_tokens: ["${GROOVE_API_TOKEN}"]
cache:
  url: ${REDIS_URL:-memory://}   # redis://, rediss://, or memory:// (in-process)
  ttl: 300                 # seconds a profile is fresh
  stale_ttl: 86400         # seconds an expired copy may still be served on failure
merge:
  max_list_items: 3
  meta_prefix: profile
connectors:                # order = priority for collisions
  stripe:
    type: stripe
    enabled: true
    api_key: ${STRIPE_API_KEY}
    api_base: ${STRIPE_API_BASE:-https://api.stripe.com}   # stripe-mock or a test server
    timeout: 2.0
  db:
    type: postgres
    enabled: true
    dsn: ${DATABASE_URL}
    query: "SELECT plan, seats, signed_up_at FROM accounts WHERE lower(email) = $1"
    timeout: 1.0
  crm:
    type: rest
    enabled: true
    url: "https://crm.example.com/api/contacts?email={email}"   # {email} is percent-encoded
    headers: {Authorization: "Bearer ${CRM_TOKEN}"}
    select: "data[0]"      # JMESPath: the object to flatten (optional)
    timeout: 2.0
"""

CONTRACT_ENV = {
    "GROOVE_API_TOKEN": "groove-token",
    "STRIPE_API_KEY": "sk_test_123",
    "DATABASE_URL": "postgresql://u:pw@127.0.0.1/test",
    "CRM_TOKEN": "crm-token",
}

AUTH = 'auth:\n  api_tokens: ["t0ken"]\n'


def parse(text: str, env: Mapping[str, str] | None = None) -> Settings:
    return parse_settings(
        textwrap.dedent(text), source="config.yaml", env=env or {}, connector_types=TYPES
    )


def problems(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value.problems


def test_contract_example_parses() -> None:
    settings = parse(CONTRACT_EXAMPLE, CONTRACT_ENV)

    assert settings.server.port == 8080
    assert settings.server.deadline == 3.0
    assert [t.get_secret_value() for t in settings.auth.api_tokens] == ["groove-token"]
    assert settings.cache.url == "memory://"
    stripe, db, crm = settings.connectors.values()
    assert isinstance(stripe, FakeStripeSettings)
    assert stripe.api_key.get_secret_value() == "sk_test_123"
    assert stripe.api_base == "https://api.stripe.com"
    assert isinstance(db, FakePostgresSettings)
    assert db.query.endswith("lower(email) = $1")
    assert db.timeout == 1.0
    assert isinstance(crm, FakeRestSettings)
    assert crm.headers == {"Authorization": "Bearer crm-token"}
    assert crm.select == "data[0]"


def test_defaults_of_a_minimal_config() -> None:
    settings = parse(AUTH)

    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8080
    assert settings.server.path == "/profile"
    assert settings.server.allow_ips == []
    assert settings.server.client_rate_limit is None
    assert settings.cache.url == "memory://"
    assert (settings.cache.ttl, settings.cache.stale_ttl) == (300, 86400)
    assert settings.cache.namespace == "aggregator"
    assert settings.merge.max_list_items == 3
    assert settings.merge.meta_prefix == "profile"
    assert (settings.logging.level, settings.logging.format) == ("INFO", "text")
    assert settings.webhooks.stripe_secret is None
    assert settings.connectors == {}
    assert parse_settings(AUTH, env={}, connector_types=TYPES).source is None


def test_load_settings_reads_the_file_and_remembers_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(AUTH + "server:\n  port: 9000\n")

    settings = load_settings(path, env={}, connector_types=TYPES)

    assert settings.server.port == 9000
    assert settings.source == path


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.yaml", env={}, connector_types=TYPES)

    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: config file not found"]


def test_interpolation_forms() -> None:
    settings = parse(
        """\
        auth:
          api_tokens: ["${TOKEN}", "pre-${TOKEN}-post"]
        server:
          port: ${PORT:-8080}
          host: ${HOST:-}
          path: /p$$th
        cache:
          url: ${REDIS_URL:-memory://}
          namespace: ${NS:-fallback}
        webhooks:
          stripe_secret: ${WEBHOOK_SECRET:-}
        connectors:
          db:
            type: postgres
            dsn: ${DSN}
            query: "SELECT 1 WHERE x = $1 AND y = '$$${SUFFIX}'"
        """,
        {
            "TOKEN": "abc",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "NS": "",
            "DSN": "d",
            "SUFFIX": "z",
        },
    )

    assert [t.get_secret_value() for t in settings.auth.api_tokens] == ["abc", "pre-abc-post"]
    assert settings.server.port == 8080
    assert settings.server.host == ""
    assert settings.server.path == "/p$th"
    assert settings.cache.url == "redis://127.0.0.1:6379/0"
    assert settings.cache.namespace == "fallback"  # set but empty takes the default, as in sh
    assert settings.webhooks.stripe_secret is None
    db = settings.connectors["db"]
    assert isinstance(db, FakePostgresSettings)
    assert db.query == "SELECT 1 WHERE x = $1 AND y = '$z'"


def test_a_whole_value_variable_is_coerced_to_the_field_type() -> None:
    settings = parse(
        AUTH + "server:\n  port: ${PORT}\n  access_log: ${LOG}\n", {"PORT": "9001", "LOG": "yes"}
    )

    assert settings.server.port == 9001
    assert settings.server.access_log is True


def test_missing_variable_names_file_line_field_and_variable(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  port: 8080\nauth:\n  api_tokens: ['${GROOVE_API_TOKEN}']\n")

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={}, connector_types=TYPES)

    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith(f"{path}:4: auth.api_tokens[0]: ")
    assert "GROOVE_API_TOKEN" in problem
    assert "not set" in problem


def test_missing_variable_in_a_disabled_connector_is_fine() -> None:
    text = AUTH + textwrap.dedent(
        """\
        connectors:
          stripe:
            type: stripe
            enabled: ${STRIPE_ENABLED:-false}
            api_key: ${STRIPE_API_KEY}
          crm:
            type: rest
            enabled: false
            url: ${CRM_URL}
            headers: {Authorization: "Bearer ${CRM_TOKEN}"}
        """
    )
    settings = parse(text)

    assert list(settings.connectors) == ["stripe", "crm"]
    assert not settings.connectors["stripe"].enabled
    assert not settings.connectors["crm"].enabled
    assert settings.enabled_connectors() == []

    errors = problems(text, {"STRIPE_ENABLED": "true"})
    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:7: connectors.stripe.api_key: ")
    assert "STRIPE_API_KEY" in errors[0]


def test_disabled_connector_that_cannot_validate_for_want_of_variables() -> None:
    text = AUTH + textwrap.dedent(
        """\
        connectors:
          pay:
            type: stripe
            enabled: false
            api_key: ${KEY}
            retries: ${RETRIES}
            timeout: 0.5
          hook:
            type: template
            enabled: false
            url: https://crm.test/${CRM_PATH}
        """
    )
    types: dict[str, type[Connector[Any]]] = {**TYPES, "template": FakeTemplate}
    settings = parse_settings(text, env={"KEY": "sk_secret"}, connector_types=types)

    pay = settings.connectors["pay"]
    assert isinstance(pay, FakeStripeSettings)
    assert not pay.enabled
    assert pay.api_key.get_secret_value() == "sk_secret"
    assert "sk_secret" not in repr(settings)
    assert (pay.retries, pay.timeout) == (1, 0.5)
    assert not settings.connectors["hook"].enabled

    with pytest.raises(ConfigError) as info:
        parse_settings(
            text.replace("enabled: false", "enabled: true"), env={}, connector_types=types
        )
    assert [p.split(": ")[1] for p in info.value.problems] == [
        "connectors.pay.api_key",
        "connectors.pay.retries",
        "connectors.hook.url",
    ]
    assert all("is not set" in p for p in info.value.problems)


def test_invalid_variable_reference_is_an_error_once() -> None:
    errors = problems(AUTH + "server:\n  path: /${not valid}\n  host: ${HOST\n")

    assert len(errors) == 2
    assert errors[0].startswith("config.yaml:4: server.path: invalid variable reference")
    assert errors[1].startswith("config.yaml:5: server.host: invalid variable reference")


def test_missing_variable_in_enabled_itself_is_an_error() -> None:
    errors = problems(
        AUTH + "connectors:\n  s:\n    type: stripe\n    enabled: ${ON}\n    api_key: ${KEY}\n"
    )

    assert len(errors) == 2
    assert errors[0].startswith("config.yaml:6: connectors.s.enabled: ") and "ON" in errors[0]
    assert errors[1].startswith("config.yaml:7: connectors.s.api_key: ") and "KEY" in errors[1]


def test_a_typo_in_a_disabled_connector_is_still_an_error() -> None:
    errors = problems(
        AUTH
        + "connectors:\n  s:\n    type: stripe\n    enabled: false\n"
        + "    api_key: ${KEY}\n    timout: 2\n"
    )

    assert errors == ["config.yaml:8: connectors.s.timout: unknown key (did you mean 'timeout'?)"]


def test_unknown_top_level_key_names_its_line() -> None:
    errors = problems(AUTH + "server:\n  port: 1\n\nlogs:\n  level: INFO\n")

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:6: logs: unknown key")


def test_unknown_key_in_a_section_suggests_the_right_one() -> None:
    errors = problems(AUTH + "cache:\n  ttl: 10\n  stale_tl: 20\n")

    assert errors == ["config.yaml:5: cache.stale_tl: unknown key (did you mean 'stale_ttl'?)"]


def test_unknown_connector_key_names_its_line() -> None:
    errors = problems(
        AUTH + "connectors:\n  db:\n    type: postgres\n    dsn: x\n    query: q\n    sql: q\n"
    )

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:8: connectors.db.sql: unknown key")


def test_bad_type_names_its_line_and_field() -> None:
    errors = problems(
        AUTH + "connectors:\n  stripe:\n    type: stripe\n    api_key: k\n    timeout: soon\n"
    )

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:7: connectors.stripe.timeout: Input should be a")


def test_several_problems_are_reported_together_in_line_order() -> None:
    errors = problems(
        """\
        server:
          port: 70000
          path: profile
        cache:
          url: http://127.0.0.1
        connectors:
          x:
            type: nope
        """
    )

    assert len(errors) == 5
    assert errors[0].startswith("config.yaml:1: auth: required key is missing")
    assert errors[1].startswith("config.yaml:2: server.port: Input should be less than")
    assert errors[2] == "config.yaml:3: server.path: must start with '/'"
    assert errors[3].startswith("config.yaml:5: cache.url: scheme 'http' is not supported")
    assert errors[4].startswith("config.yaml:8: connectors.x.type: unknown connector type 'nope'")


def test_unknown_connector_type_lists_the_known_ones() -> None:
    errors = problems(AUTH + "connectors:\n  crm:\n    type: soap\n    url: u\n")

    assert errors == [
        "config.yaml:5: connectors.crm.type: unknown connector type 'soap' "
        "(known types: postgres, rest, stripe)"
    ]


def test_a_connector_without_type_is_an_error() -> None:
    errors = problems(AUTH + "connectors:\n  crm:\n    url: u\n")

    assert errors == ["config.yaml:4: connectors.crm.type: required key is missing"]


def test_connector_names_are_restricted() -> None:
    errors = problems(AUTH + "connectors:\n  My-CRM:\n    type: rest\n    url: u\n")

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:4: connectors.My-CRM: a connector name may only")


def test_connectors_may_share_a_prefix_including_the_empty_one() -> None:
    settings = parse(
        AUTH
        + textwrap.dedent(
            """\
            connectors:
              db:
                type: rest
                url: "https://db.example/c?email={email}"
                prefix: ""
              crm:
                type: rest
                url: "https://crm.example/c?email={email}"
                prefix: ""
              billing:
                type: rest
                url: "https://b.example/c?email={email}"
                prefix: crm
              crm2:
                type: rest
                url: "https://c2.example/c?email={email}"
                prefix: crm
            """
        )
    )

    assert [conf.prefix for _, conf in settings.enabled_connectors()] == ["", "", "crm", "crm"]


def test_a_prefix_with_other_characters_is_refused() -> None:
    errors = problems(
        AUTH
        + "connectors:\n"
        + "  a:\n    type: rest\n    url: 'https://a.example/?e={email}'\n    prefix: 'My CRM'\n"
    )

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:7: connectors.a.prefix: a prefix may only contain")


def test_duplicate_yaml_key_names_both_lines() -> None:
    errors = problems(AUTH + "server:\n  port: 1\n  host: h\n  port: 2\n")

    assert errors == ["config.yaml:6: server.port: duplicate key (first on line 4)"]


def test_yaml_syntax_error_names_the_line_without_quoting_it() -> None:
    errors = problems(AUTH + "connectors:\n  s:\n    type: stripe\n    api_key: 'sk_live_SECRET\n")

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:")
    assert "invalid YAML" in errors[0]
    assert "sk_live_SECRET" not in errors[0]


def test_yaml_syntax_error_line_is_exact() -> None:
    errors = problems(AUTH + "server:\n  port: 1\n   host: x\n")

    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:5: invalid YAML: ")


def test_secret_values_never_appear_in_errors() -> None:
    secret = "sk_live_do_not_print_me"
    with pytest.raises(ConfigError) as info:
        parse(
            """\
            auth:
              api_tokens: [{token: "${KEY}"}]
            server:
              port: ${KEY}
            connectors:
              s:
                type: stripe
                api_key: [1]
                timeout: ${KEY}
                prefix: ${KEY}
            """,
            {"KEY": secret},
        )

    text = str(info.value)
    assert len(info.value.problems) == 4
    assert secret not in text
    assert "SecretStr" not in text


def test_empty_token_is_refused() -> None:
    errors = problems('auth:\n  api_tokens: ["ok", "${TOKEN:-}"]\n')

    assert errors == ["config.yaml:2: auth.api_tokens[1]: must not be empty"]


def test_connector_order_is_config_order() -> None:
    settings = parse(
        AUTH
        + "connectors:\n"
        + "".join(f"  {name}:\n    type: rest\n    url: u\n" for name in ["zeta", "alpha", "mid"])
    )

    assert list(settings.connectors) == ["zeta", "alpha", "mid"]


def test_enabled_connectors_skips_disabled_ones_in_order() -> None:
    settings = parse(
        AUTH
        + "connectors:\n"
        + "  c:\n    type: rest\n    url: u\n"
        + "  b:\n    type: rest\n    url: u\n    enabled: false\n"
        + "  a:\n    type: stripe\n    api_key: k\n    prefix: pay\n"
    )

    enabled = settings.enabled_connectors()
    assert [name for name, _ in enabled] == ["c", "a"]
    assert enabled[1][1].prefix == "pay"
    assert isinstance(enabled[1][1], FakeStripeSettings)


def test_yaml_merge_keys_share_connector_defaults() -> None:
    settings = parse(
        AUTH
        + textwrap.dedent(
            """\
            connectors:
              a:
                <<: &defaults {type: rest, timeout: 0.5}
                url: a
              b:
                <<: *defaults
                url: b
                timeout: 1.5
            """
        )
    )

    assert [c.timeout for c in settings.connectors.values()] == [0.5, 1.5]
    assert [c.type for c in settings.connectors.values()] == ["rest", "rest"]


def test_an_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]

    errors = problems("\n".join(lines) + "\n")

    assert errors == ["config.yaml: more than 100,000 values once YAML aliases are expanded"]


def test_server_allow_ips_and_logging_level() -> None:
    settings = parse(
        AUTH
        + "server:\n  allow_ips: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7']\n"
        + "logging:\n  level: debug\n  format: json\n"
    )

    assert settings.server.allow_ips == [
        IPv4Network("10.0.0.0/8"),
        IPv6Network("2001:db8::/32"),
        IPv4Network("192.0.2.7/32"),
    ]
    assert settings.logging.level == "DEBUG"

    errors = problems(AUTH + "server:\n  allow_ips: ['10.0.0.0/8', 'everyone']\n")
    assert len(errors) == 1
    assert errors[0].startswith("config.yaml:4: server.allow_ips[1]: ")


def test_settings_are_frozen() -> None:
    settings = parse(AUTH)

    with pytest.raises(ValueError, match="frozen"):
        settings.server.port = 1


@pytest.fixture
def plugin_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Entry points: a working test type and a third-party one whose import fails."""
    points = {"rest": f"{__name__}:FakeRest", "broken": "no_such_module_for_tests:Thing"}
    with entry_points(monkeypatch, points):
        yield


@pytest.mark.usefixtures("plugin_registry")
def test_a_broken_plugin_only_matters_when_used() -> None:
    text = AUTH + "connectors:\n  crm:\n    type: rest\n    url: u\n"
    settings = parse_settings(text, source="config.yaml", env={})
    assert isinstance(settings.connectors["crm"], FakeRestSettings)
    assert loadable_types() == ["rest"]

    with pytest.raises(ConfigError) as info:
        parse_settings(text + "  x:\n    type: broken\n", source="config.yaml", env={})

    (problem,) = info.value.problems
    assert problem.startswith("config.yaml:8: connectors.x.type: connector type 'broken' cannot")
    assert "no_such_module_for_tests" in problem


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/webhooks/stripe", "/preview"]
)
def test_server_path_may_not_shadow_the_proxys_own_routes(path: str) -> None:
    text = AUTH + f"server:\n  path: {path}\n"
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, source="c.yaml", env={}, connector_types=TYPES)
    assert f"c.yaml:4: server.path: {path} is one of the proxy's own paths" in str(caught.value)


# -- postgres DSN and formats (issue 12) ----------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("mysql://root:hunter2@db/app", "is a mysql:// URL"),
        ("postgresql:/nohost", "is not a URL"),
        ("hunter2", "is not a URL"),
        ("", "is empty"),
    ],
)
def test_a_postgres_dsn_that_is_not_postgresql_is_refused_at_its_line(
    dsn: str, problem: str
) -> None:
    text = (
        'auth: {api_tokens: ["t"]}\n'
        "connectors:\n"
        "  db:\n"
        "    type: postgres\n"
        f'    dsn: "{dsn}"\n'
        '    query: "SELECT 1"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_settings(text, source="c.yaml", env={})
    message = str(info.value)
    assert f"c.yaml:5: connectors.db.dsn: {problem}" in message
    assert "postgresql://" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("dsn", ["postgresql://u:p@h/db", "postgres://h/db", "POSTGRESQL://h"])
def test_postgresql_dsns_pass(dsn: str) -> None:
    text = (
        'auth: {api_tokens: ["t"]}\n'
        f'connectors:\n  db: {{type: postgres, dsn: "{dsn}", query: "SELECT 1"}}\n'
    )
    assert parse_settings(text, source="c.yaml", env={}).connectors["db"].enabled


def test_a_disabled_connector_may_leave_the_dsn_empty() -> None:
    text = (
        'auth: {api_tokens: ["t"]}\n'
        "connectors:\n"
        '  db: {type: postgres, enabled: false, dsn: "${DATABASE_URL}", query: "SELECT 1"}\n'
    )
    settings = parse_settings(text, source="c.yaml", env={"DATABASE_URL": ""})
    assert not settings.connectors["db"].enabled


def test_a_bad_format_is_refused_at_its_line() -> None:
    text = (
        'auth: {api_tokens: ["t"]}\n'
        "connectors:\n"
        "  db:\n"
        "    type: postgres\n"
        "    dsn: postgresql://h/db\n"
        '    query: "SELECT 1"\n'
        "    formats:\n"
        "      mrr: money:usd\n"
        "      seats: money\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_settings(text, source="c.yaml", env={})
    assert "c.yaml:9: connectors.db.formats.seats: money needs a currency" in str(info.value)
