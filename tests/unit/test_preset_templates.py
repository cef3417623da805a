"""The template sections in examples/templates/ use only keys their preset documents, and
render (as Groove would) with a profile made of those keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from aggregator.groove import render_sidebar
from aggregator.merge import flatten, sanitize_key
from aggregator.registry import get_connector_type

TEMPLATES = Path(__file__).resolve().parents[2] / "examples" / "templates"
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "hubspot": ("hubspot", {"token": "t"}),
    "salesforce": ("salesforce", {"instance": "acme", "client_id": "i", "client_secret": "s"}),
    "intercom": ("intercom", {"token": "t"}),
    "shopify": ("shop", {"shop": "acme", "token": "t"}),
    "zendesk": ("zendesk", {"subdomain": "acme", "email": "a@acme.example", "token": "t"}),
    "pipedrive": ("pipedrive", {"company_domain": "acme", "token": "t"}),
}


def documented_keys(kind: str) -> tuple[str, set[str]]:
    prefix, settings = PRESETS[kind]
    connector_type = get_connector_type(kind)
    connector = connector_type(
        prefix, connector_type.settings_model.model_validate({"type": kind, **settings})
    )
    shape = connector.declared_shape()
    assert shape is not None
    return prefix, {sanitize_key(f"{prefix}_{key}") for key in flatten(shape)}


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_a_template_section_uses_only_documented_keys(kind: str) -> None:
    prefix, keys = documented_keys(kind)
    text = (TEMPLATES / f"{kind}.liquid").read_text(encoding="utf-8")

    used = set(re.findall(rf"\b{prefix}_[a-z0-9_]+", text))

    assert used, "the section should show something"
    assert {key for key in used if not key.endswith("_error")} <= keys


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_a_template_section_renders_with_its_keys(kind: str) -> None:
    prefix, keys = documented_keys(kind)
    profile: dict[str, Any] = {key: f"<{key}>" for key in keys}
    profile.update({key: 2 for key in keys if key.endswith(("_count", "_matches"))})
    profile[f"{prefix}_url"] = "https://vendor.example/record/1"
    text = (TEMPLATES / f"{kind}.liquid").read_text(encoding="utf-8")

    html = render_sidebar(text, profile, "o'brien+vip@example.com")

    assert 'href="https://vendor.example/record/1"' in html
