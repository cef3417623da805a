"""Secrets from files in config.yaml: ``${file:/run/secrets/name}`` and ``VAR_FILE``.

Docker mounts a service's secrets as files under /run/secrets/ and Kubernetes mounts a
Secret's keys as files in a volume; the official Docker images read ``VAR_FILE`` in place
of ``VAR``. A refusal names file, line and field, and never the secret itself.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aggregator.config import Settings, load_settings, parse_settings
from aggregator.errors import ConfigError
from tests.unit.test_config import TYPES, FakeStripeSettings

SECRET = "sk_live_0123456789abcdef"


def write_config(directory: Path, body: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def stripe_config(directory: Path, api_key: str, enabled: str = "true") -> Path:
    return write_config(
        directory,
        f"""\
        auth:
          api_tokens: ["t0ken"]
        connectors:
          stripe:
            type: stripe
            enabled: {enabled}
            api_key: "{api_key}"
        """,
    )


def load(path: Path, env: dict[str, str] | None = None) -> Settings:
    return load_settings(path, env=env or {}, connector_types=TYPES)


def refusal(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env)
    return info.value.problems


def api_key(settings: Settings) -> str:
    stripe = settings.connectors["stripe"]
    assert isinstance(stripe, FakeStripeSettings)
    return stripe.api_key.get_secret_value()


def test_a_file_reference_is_the_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "stripe_api_key"
    secret.write_text(SECRET + "\n", encoding="utf-8")

    settings = load(stripe_config(tmp_path, f"${{file:{secret}}}"))

    assert api_key(settings) == SECRET


def test_only_one_trailing_newline_is_dropped_and_crlf_counts_as_one(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"line one\nline two\n\n")
    (tmp_path / "b").write_bytes(b"tok\r\n")
    config = write_config(
        tmp_path,
        f"""\
        auth:
          api_tokens: ["${{file:{tmp_path / "a"}}}", "pre-${{file:{tmp_path / "b"}}}-post"]
        """,
    )

    tokens = [t.get_secret_value() for t in load(config).auth.api_tokens]

    assert tokens == ["line one\nline two\n", "pre-tok-post"]


def test_a_relative_file_reference_is_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text(SECRET, encoding="utf-8")
    config = stripe_config(tmp_path, "${file:secrets/key}")
    monkeypatch.chdir("/")

    assert api_key(load(config)) == SECRET


def test_a_kubernetes_secret_volume_is_read_through_its_symlinks(tmp_path: Path) -> None:
    volume = tmp_path / "secret-volume"
    timestamped = volume / "..2026_11_28_07_00_00.000000001"
    timestamped.mkdir(parents=True)
    (timestamped / "stripe-api-key").write_text(SECRET, encoding="utf-8")
    (volume / "..data").symlink_to(timestamped.name)
    (volume / "stripe-api-key").symlink_to("..data/stripe-api-key")

    settings = load(stripe_config(tmp_path, f"${{file:{volume / 'stripe-api-key'}}}"))

    assert api_key(settings) == SECRET


def test_a_missing_file_is_refused_with_file_line_field_and_path(tmp_path: Path) -> None:
    config = stripe_config(tmp_path, "${file:/run/secrets/nowhere}")

    problems = refusal(config)

    assert problems == [
        f"{config}:7: connectors.stripe.api_key: "
        "cannot read secret file /run/secrets/nowhere: No such file or directory"
    ]


def test_a_path_through_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET, encoding="utf-8")
    path = tmp_path / "key" / "stripe"

    problems = refusal(stripe_config(tmp_path, f"${{file:{path}}}"))

    assert problems[0].endswith(f"cannot read secret file {path}: Not a directory")


def test_a_directory_a_huge_file_and_binary_data_are_refused_without_their_content(
    tmp_path: Path,
) -> None:
    (tmp_path / "huge").write_text(SECRET * 5000, encoding="utf-8")
    (tmp_path / "binary").write_bytes(SECRET.encode() + b"\xff\xfe")
    config = write_config(
        tmp_path,
        f"""\
        auth:
          api_tokens:
            - "${{file:{tmp_path}}}"
            - "${{file:{tmp_path / "huge"}}}"
            - "${{file:{tmp_path / "binary"}}}"
            - "${{file:}}"
        """,
    )

    problems = refusal(config)

    assert problems == [
        f"{config}:3: auth.api_tokens[0]: secret file {tmp_path} is not a regular file",
        f"{config}:4: auth.api_tokens[1]: secret file {tmp_path / 'huge'} "
        "is larger than 65536 bytes",
        f"{config}:5: auth.api_tokens[2]: secret file {tmp_path / 'binary'} is not UTF-8 text",
        f"{config}:6: auth.api_tokens[3]: "
        "a file reference needs a path: ${file:/run/secrets/name}",
    ]
    assert not any(SECRET[:8] in problem for problem in problems)


def test_the_file_convention_reads_an_unset_variable_from_var_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    config = stripe_config(tmp_path, "${STRIPE_API_KEY}")

    settings = load(config, {"STRIPE_API_KEY_FILE": str(secret)})

    assert api_key(settings) == SECRET


def test_the_file_convention_with_a_default(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(SECRET, encoding="utf-8")
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    config = stripe_config(tmp_path, "${STRIPE_API_KEY:-sk_test_default}")

    from_file = load(config, {"STRIPE_API_KEY_FILE": str(secret)})
    empty_file = load(config, {"STRIPE_API_KEY_FILE": str(tmp_path / "empty")})
    neither = load(config)

    assert api_key(from_file) == SECRET
    assert api_key(empty_file) == "sk_test_default"  # empty, like an empty variable
    assert api_key(neither) == "sk_test_default"


def test_a_var_file_that_cannot_be_read_is_refused_naming_the_variable(tmp_path: Path) -> None:
    config = stripe_config(tmp_path, "${STRIPE_API_KEY:-sk_test_default}")

    problems = refusal(config, {"STRIPE_API_KEY_FILE": "/run/secrets/gone"})

    assert problems == [
        f"{config}:7: connectors.stripe.api_key: "
        "cannot read STRIPE_API_KEY_FILE=/run/secrets/gone: No such file or directory"
    ]


def test_var_and_var_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(SECRET, encoding="utf-8")
    config = stripe_config(tmp_path, "${STRIPE_API_KEY}")

    problems = refusal(config, {"STRIPE_API_KEY": SECRET, "STRIPE_API_KEY_FILE": str(secret)})

    assert problems == [
        f"{config}:7: connectors.stripe.api_key: "
        "both STRIPE_API_KEY and STRIPE_API_KEY_FILE are set: keep one"
    ]


def test_a_missing_secret_file_of_a_disabled_connector_is_fine(tmp_path: Path) -> None:
    config = stripe_config(tmp_path, "${file:/run/secrets/nowhere}", enabled="false")

    settings = load(config)

    assert settings.enabled_connectors() == []


def test_file_content_is_not_interpolated_again(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("pa$$word-${HOME}", encoding="utf-8")

    settings = load(stripe_config(tmp_path, f"${{file:{secret}}}"), {"HOME": "/root"})

    assert api_key(settings) == "pa$$word-${HOME}"


def test_a_config_given_as_text_reads_relative_files_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("t0ken-from-file\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    settings = parse_settings(
        'auth:\n  api_tokens: ["${file:token}"]\n', env={}, connector_types=TYPES
    )

    assert settings.auth.api_tokens[0].get_secret_value() == "t0ken-from-file"


def test_a_secret_pasted_in_place_of_a_path_or_variable_name_is_not_echoed(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        f"""\
        auth:
          api_tokens: ["${{file:/run/secrets/{SECRET}}}", "${{TOKEN}}"]
        """,
    )

    problems = refusal(config, {"TOKEN_FILE": f"/run/{SECRET}"})

    assert problems == [
        f"{config}:2: auth.api_tokens[0]: "
        "cannot read secret file <hidden path>: No such file or directory",
        f"{config}:2: auth.api_tokens[1]: "
        "cannot read TOKEN_FILE=<hidden path>: No such file or directory",
    ]
