"""Keys of a ``type: rest`` connector: the first call, ``auth``, ``errors``, ``link``, ``then``,
``formats``.

Every template is compiled here once so that a broken one is refused at load time with
the file, line and key (see ``connectors.templating`` for placeholders).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
_Value = TypeVar("_Value")


def _compiles(compile_: Callable[[Any], object]) -> AfterValidator:
    """A validator that compiles the value (which raises ValueError when it is bad) and keeps it."""

    def check(value: _Value) -> _Value:
        compile_(value)
        return value

    return AfterValidator(check)


def _check_fields(value: dict[str, str]) -> dict[str, str]:
    for name, expression in value.items():
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


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not name or any(c in name for c in "\r\n:") or any(c in text for c in "\r\n"):
            raise ValueError(f"header {name!r}: no line breaks allowed (nor ':' in the name)")
        TextTemplate(text)
    return value


# Checked key types the first call and a ``then`` step share. The first call's url and body
# take ``{email}``; a step's url and body, and ``link``, take ``{path}`` placeholders that read
# the first call's selection.
EmailUrl = Annotated[str, _compiles(UrlTemplate)]
PathUrl = Annotated[str, _compiles(partial(UrlTemplate, paths=True))]
EmailBody = Annotated[Any, _compiles(BodyTemplate)]
PathBody = Annotated[Any, _compiles(partial(BodyTemplate, paths=True))]
Select = Annotated[str, _compiles(SelectTemplate)]
JMESPath = Annotated[str, _compiles(compile_jmespath)]
Fields = Annotated[dict[str, str], AfterValidator(_check_fields)]
Formats = Annotated[dict[str, FormatSpec], AfterValidator(_check_formats)]
Headers = Annotated[dict[str, str], AfterValidator(_check_headers)]

FORMATS_HELP = (
    "Output field -> display format (money:eur, money:@currency, cents:usd, date, datetime)"
)


class StepSettings(BaseModel):
    """One ``then`` step: a further call fed by the first call's selected object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: PathUrl = Field(description="URL template; {path} placeholders read the first selection.")
    method: Literal["GET", "POST"] = Field(default="GET", description="GET or POST.")
    body: PathBody = Field(default=None, description="JSON body template (POST).")
    select: Select | None = Field(default=None, description="JMESPath choosing what to keep.")
    fields: Fields | None = Field(
        default=None, description="Output name -> JMESPath on the selected value."
    )
    max_items: int | None = Field(
        default=None, ge=0, description="Items of a selected list kept as numbered keys."
    )
    count: JMESPath | None = Field(
        default=None,
        description="JMESPath on the step's whole answer giving <step>_count (a total).",
    )
    formats: Formats = Field(
        default_factory=dict,
        description=FORMATS_HELP + ", applied to the step's fields or to each selected object.",
    )


class RestSettings(ConnectorSettings):
    """Settings of a ``rest`` connector."""

    type: Literal["rest"] = "rest"
    url: EmailUrl = Field(description="http(s) URL template; {email} is replaced, percent-encoded.")
    method: Literal["GET", "POST"] = Field(
        default="GET", description='POST sends body, or {"email": ...} without one.'
    )
    headers: Headers = Field(default_factory=dict, description="Sent with every request.")
    body: EmailBody = Field(
        default=None, description="JSON body (any value); placeholders are filled by data."
    )
    auth: RestAuth | None = Field(
        default=None, description="One of bearer, basic, header, query, oauth2."
    )
    select: Select | None = Field(
        default=None, description="JMESPath choosing the object to flatten."
    )
    fields: Fields | None = Field(
        default=None,
        description="Output name -> JMESPath on the selected value; None values omitted.",
    )
    formats: Formats = Field(
        default_factory=dict,
        description=FORMATS_HELP + ", applied to the first call's fields.",
    )
    errors: JMESPath | None = Field(
        default=None, description="JMESPath on the answer; a non-empty result is an error."
    )
    link: PathUrl | None = Field(
        default=None, description="URL template of the record in the vendor's UI (<prefix>_url)."
    )
    then: dict[str, StepSettings] | None = Field(
        default=None, description="Further calls by name, run concurrently after the first."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1, description="Larger answers are an error.")
    not_found_statuses: list[int] = Field(
        default_factory=lambda: [404], description="Statuses meaning 'unknown customer'."
    )

    @field_validator("then")
    @classmethod
    def _check_then(cls, value: dict[str, StepSettings] | None) -> dict[str, StepSettings] | None:
        for name in value or {}:
            if not _STEP_NAME.fullmatch(name):
                raise ValueError(f"then: step name {name!r} may only contain a-z, 0-9 and '_'")
        return value

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
