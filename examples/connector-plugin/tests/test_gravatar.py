"""The gravatar connector as its author tests it: through ``aggregator.plugin``, no server.

Run from this directory with the aggregator installed: ``pytest``. The project's own test
suite runs it too (and tests/integration/test_plugin.py installs the built wheel).
"""

from __future__ import annotations

import hashlib

import pytest
from aggregator_gravatar import GravatarConnector, GravatarSettings
from pydantic import ValidationError

from aggregator.plugin import Connector, ConnectorSettings, Email, FetchOutcome


def gravatar(**settings: object) -> GravatarConnector:
    return GravatarConnector(
        "gravatar", GravatarSettings.model_validate({"type": "gravatar", **settings})
    )


def test_it_is_a_connector_with_its_own_settings() -> None:
    assert issubclass(GravatarConnector, Connector)
    assert GravatarConnector.settings_model is GravatarSettings
    assert issubclass(GravatarSettings, ConnectorSettings)


async def test_the_fields_come_from_the_email_alone() -> None:
    outcome = await gravatar(size=120).fetch(Email("ada@gmail.com", "Ada@Gmail.com"))

    assert isinstance(outcome, FetchOutcome)
    assert outcome.status == "ok"
    digest = hashlib.sha256(b"ada@gmail.com").hexdigest()
    assert outcome.fields == {
        "avatar_url": f"https://gravatar.com/avatar/{digest}?s=120&d=identicon",
        "domain": "gmail.com",
        "free_mail": True,
    }


async def test_free_mail_domains_are_configurable() -> None:
    outcome = await gravatar(free_mail_domains=["Example.com"]).fetch("bob@example.com")

    assert outcome.fields is not None
    assert outcome.fields["free_mail"] is True


@pytest.mark.parametrize(
    "settings", [{"size": 0}, {"size": 4096}, {"default_image": "a b"}, {"colour": "red"}]
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        gravatar(**settings)
