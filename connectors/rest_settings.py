"""Keys of a ``type: rest`` connector: the first call, ``auth``, ``errors``, ``link``, ``then``,
``formats``.

Every template is compiled here once so that a broken one is refused at load time with
the file, line and key (see ``connectors.templating`` for placeholders).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from aggregator.formats import FormatSpec, check_names
from connectors.auth import Authenticator, RestAuth
from connectors.base import ConnectorSettings
from connectors.templating import (
    BodyTemplate,
    SelectTemplate,
    TextTemplate,
    UrlTemplate,
    compile_jmespath,
)

_STEP_NAME = re.compile(r"[a-z0-9_]+")


def _check_fields(value: dict[str, str] | None) -> dict[str, str] | None:
    for name, expression in (value or {}).items():
        if not name:
            raise ValueError("fields: an output name is empty")
        compile_jmespath(expression)
    return value


def _check_formats(value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    """With ``fields``, every format (and money's ``@field``) must name one of them."""
    fields = info.data.get("fields")
    if value and fields:
        check_names(value, fields, "fields")
    return value


FORMATS_HELP = (
    "Output field -> display format (money:eur, money:@currency, cents:usd, date, datetime)"
)


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not name or any(c in name for c in "\r\n:") or any(c in text for c in "\r\n"):
            raise ValueError(f"header {name!r}: no line breaks allowed (nor ':' in the name)")
        TextTemplate(text)
    return value


class StepSettings(BaseModel):
    """One ``then`` step: a further call fed by the first call's selected object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="URL template; {path} placeholders read the first selection.")
    method: Literal["GET", "POST"] = Field(default="GET", description="GET or POST.")
    body: Any = Field(default=None, description="JSON body template (POST).")
    select: str | None = Field(default=None, description="JMESPath choosing what to keep.")
    fields: dict[str, str] | None = Field(
        default=None, description="Output name -> JMESPath on the selected value."
    )
    max_items: int | None = Field(
        default=None, ge=0, description="Items of a selected list kept as numbered keys."
    )
    count: str | None = Field(
        default=None,
        description="JMESPath on the step's whole answer giving <step>_count (a total).",
    )
    formats: dict[str, FormatSpec] = Field(
        default_factory=dict,
        description=FORMATS_HELP + ", applied to the step's fields or to each selected object.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        UrlTemplate(value, paths=True)
        return value

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: Any) -> Any:
        BodyTemplate(value, paths=True)
        return value

    @field_validator("select")
    @classmethod
    def _check_select(cls, value: str | None) -> str | None:
        if value is not None:
            SelectTemplate(value)
        return value

    @field_validator("count")
    @classmethod
    def _check_count(cls, value: str | None) -> str | None:
        if value is not None:
            compile_jmespath(value)
        return value

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_fields(value)

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return _check_formats(value, info)


class RestSettings(ConnectorSettings):
    """Settings of a ``rest`` connector."""

    type: Literal["rest"] = "rest"
    url: str = Field(description="http(s) URL template; {email} is replaced, percent-encoded.")
    method: Literal["GET", "POST"] = Field(
        default="GET", description='POST sends body, or {"email": ...} without one.'
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request.")
    body: Any = Field(
        default=None, description="JSON body (any value); placeholders are filled by data."
    )
    auth: RestAuth | None = Field(
        default=None, description="One of bearer, basic, header, query, oauth2."
    )
    select: str | None = Field(default=None, description="JMESPath choosing the object to flatten.")
    fields: dict[str, str] | None = Field(
        default=None,
        description="Output name -> JMESPath on the selected value; None values omitted.",
    )
    formats: dict[str, FormatSpec] = Field(
        default_factory=dict,
        description=FORMATS_HELP + ", applied to the first call's fields.",
    )
    errors: str | None = Field(
        default=None, description="JMESPath on the answer; a non-empty result is an error."
    )
    link: str | None = Field(
        default=None, description="URL template of the record in the vendor's UI (<prefix>_url)."
    )
    then: dict[str, StepSettings] | None = Field(
        default=None, description="Further calls by name, run concurrently after the first."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1, description="Larger answers are an error.")
    not_found_statuses: list[int] = Field(
        default_factory=lambda: [404], description="Statuses meaning 'unknown customer'."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        UrlTemplate(value)
        return value

    @field_validator("link")
    @classmethod
    def _check_link(cls, value: str | None) -> str | None:
        if value is not None:
            UrlTemplate(value, paths=True)
        return value

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: Any) -> Any:
        BodyTemplate(value)
        return value

    @field_validator("select")
    @classmethod
    def _check_select(cls, value: str | None) -> str | None:
        if value is not None:
            SelectTemplate(value)
        return value

    @field_validator("errors")
    @classmethod
    def _check_errors(cls, value: str | None) -> str | None:
        if value is not None:
            compile_jmespath(value)
        return value

    @field_validator("then")
    @classmethod
    def _check_then(cls, value: dict[str, StepSettings] | None) -> dict[str, StepSettings] | None:
        for name in value or {}:
            if not _STEP_NAME.fullmatch(name):
                raise ValueError(f"then: step name {name!r} may only contain a-z, 0-9 and '_'")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_headers(value)

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_fields(value)

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return _check_formats(value, info)

    @model_validator(mode="after")
    def _check_whole(self) -> RestSettings:
        url = UrlTemplate(self.url)
        if self.method == "GET" and not url.has_email:
            raise ValueError("url must contain {email} (a GET cannot identify the customer else)")
        body_text = "" if self.body is None else json.dumps(self.body)
        if self.method == "POST" and body_text and not url.has_email and "{email" not in body_text:
            raise ValueError("a POST body or the url must contain {email}")
        uses_instance = any(
            template is not None and template.startswith("{instance_url}")
            for template in (self.url, self.link, *[s.url for s in (self.then or {}).values()])
        )
        if uses_instance and (self.auth is None or self.auth.oauth2 is None):
            raise ValueError("{instance_url} needs auth: oauth2 (it comes from the token answer)")
        if self.auth is not None:
            clash = Authenticator(self.auth).header_names() & {h.lower() for h in self.headers}
            if clash:
                raise ValueError(f"headers: {', '.join(sorted(clash))} is set by auth already")
        return self
