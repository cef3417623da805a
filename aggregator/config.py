"""``config.yaml`` into frozen pydantic models, with ``${VAR}`` interpolation.

Every problem is reported at once, each as ``<file>:<line>: <field>: <message>``.
The YAML node tree is walked by hand so that every value keeps the line it was
written on, and so that interpolation happens on string scalars only.

Interpolation: ``${VAR}`` is the variable's value (an unset one is an error, a set
but empty one is ``""``); ``${VAR:-default}`` is the default when VAR is unset or
empty (shell semantics; the default may be empty); ``$$`` is one ``$``; any other
``$`` is kept as written (so ``$1`` in SQL stays). Mapping keys are not interpolated.

Secrets from files (Docker and Kubernetes secrets): ``${file:/run/secrets/name}`` is the
content of that file (a relative path is taken from the config file's directory), and an
unset ``${VAR}`` is read from the file named by ``VAR_FILE`` when that is set (the
convention of the official Docker images). One trailing newline is dropped; a missing,
unreadable, huge or non-UTF-8 file is refused with file, line and field, never its content.

A connector whose ``enabled`` is false may use unset variables: errors that stem
from those values are ignored (an unknown key is still an error). Such a connector
is validated with ``""`` in place of each unset variable; if that fails only
because of them, it is built field by field with ``model_construct`` (see
``_placeholder``). It is never opened, so nothing reads those fields.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from aggregator.errors import ConfigError
from aggregator.registry import get_connector_type
from connectors.base import Connector, ConnectorSettings

Loc = tuple[str | int, ...]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_NAME = re.compile(r"[a-z0-9_]+")
_PREFIX = re.compile(r"[a-z0-9_]*")
_CACHE_SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")
_OWN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/webhooks/stripe", "/preview"})


# -- models -------------------------------------------------------------------------


class ServerSettings(BaseModel):
    """The HTTP server: where it listens, whom it serves, how long an answer may take."""

    model_config = _FROZEN

    host: str = Field(default="0.0.0.0", description="Address to listen on.")  # noqa: S104
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to listen on.")
    path: str = Field(
        default="/profile",
        description="URL path of the profile endpoint Groove calls; starts with /.",
    )
    deadline: float = Field(
        default=3.0, gt=0, description="Seconds the whole answer may take, whatever upstreams do."
    )
    access_log: bool = Field(default=False, description="Log one line per request.")
    allow_ips: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Client addresses or CIDR networks allowed to call; empty allows everyone.",
    )
    client_rate_limit: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second allowed per client IP; unset turns it off.",
    )
    client_burst: int = Field(
        default=20, ge=1, description="Requests a client IP may make at once above its rate."
    )
    max_request_line: int = Field(default=8190, ge=1, description="Longest request line, in bytes.")
    max_header_size: int = Field(
        default=8190, ge=1, description="Longest request header, in bytes."
    )
    drain_timeout: float = Field(
        default=10.0, ge=0, description="Seconds in-flight requests get to finish on shutdown."
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a whole request line and headers; "
        "a slower connection is answered 408 and closed.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Processes serving the port (--workers overrides); they share one Redis, "
        "or each keeps its own memory:// cache.",
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        if value in _OWN_PATHS:
            raise ValueError(f"{value} is one of the proxy's own paths")
        return value


def _non_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class AuthSettings(BaseModel):
    """Who may ask: the Groove account API tokens accepted as ``api_token``."""

    model_config = _FROZEN

    api_tokens: Annotated[
        list[Annotated[SecretStr, AfterValidator(_non_empty)]], BeforeValidator(_one_or_many)
    ] = Field(
        min_length=1,
        description="Accepted Groove API tokens (several while rotating); none may be empty.",
    )


class CacheSettings(BaseModel):
    """Where profiles are kept and for how long."""

    model_config = _FROZEN

    url: str = Field(
        default="memory://",
        description="memory:// (in-process), redis://, rediss:// or redis+cluster:// URL.",
    )
    ttl: float = Field(default=300, gt=0, description="Seconds a cached profile is fresh.")
    stale_ttl: float = Field(
        default=86400,
        ge=0,
        description="Seconds past ttl an expired copy may be served on failure.",
    )
    refresh_ahead: float = Field(
        default=0,
        ge=0,
        description="Seconds past ttl during which a cached copy is answered at once and "
        "refreshed in the background; 0 turns it off.",
    )
    max_entries: int = Field(
        default=10000, ge=1, description="Profiles the in-process cache holds."
    )
    near_ttl: float = Field(
        default=1.0,
        ge=0,
        description="Seconds an in-process copy in front of Redis stays; 0 = none.",
    )
    namespace: str = Field(
        default="aggregator", description="Prefix of every cache key ([a-z0-9_-]+)."
    )
    timeout: float = Field(default=0.25, gt=0, description="Seconds one cache operation may take.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme not in _CACHE_SCHEMES:
            shown = f"scheme {scheme!r}" if scheme else "a URL without a scheme"
            raise ValueError(
                f"{shown} is not supported; use memory://, redis://, rediss:// or redis+cluster://"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_-]+", value):
            raise ValueError("may only contain a-z, 0-9, '_' and '-'")
        return value


def _sanitize(value: str) -> str:
    """Lower case, each run of characters outside ``[a-z0-9_]`` as one ``_``, trimmed."""
    return re.sub(r"[^a-z0-9_]+", "_", value.lower()).strip("_")


class MergeSettings(BaseModel):
    """How the answers of all connectors become one flat object."""

    model_config = _FROZEN

    max_list_items: int = Field(
        default=3, ge=0, le=50, description="Items of a list of objects shown, plus <key>_count."
    )
    meta_prefix: str = Field(
        default="profile",
        description="Prefix of the meta keys (profile_complete, ...); sanitized to [a-z0-9_].",
    )
    max_keys: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most keys one answer carries from its connectors (each connector's "
        "answer is cut there too); a connector cut short gets <prefix>_truncated: true.",
    )
    max_value_chars: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Longest text value, in characters; a longer one is cut and ends with '…'.",
    )

    @field_validator("meta_prefix")
    @classmethod
    def _check_meta_prefix(cls, value: str) -> str:
        cleaned = _sanitize(value)
        if not cleaned:
            raise ValueError("must contain at least one letter or digit")
        return cleaned


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class LoggingSettings(BaseModel):
    """What the process logs, and how."""

    model_config = _FROZEN

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = Field(
        default="INFO", description="Lowest level logged."
    )
    format: Literal["text", "json"] = Field(
        default="text", description="text for people, json for one JSON object per line."
    )


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


class WebhookSettings(BaseModel):
    """Incoming webhooks that invalidate cached profiles."""

    model_config = _FROZEN

    stripe_secret: Annotated[SecretStr | None, BeforeValidator(_empty_is_none)] = Field(
        default=None,
        description="Stripe webhook signing secret (whsec_...); unset or empty turns "
        "POST /webhooks/stripe off.",
    )


class Settings(BaseModel):
    """The whole configuration."""

    model_config = _FROZEN

    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP server.")
    auth: AuthSettings = Field(description="Groove API tokens.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Profile cache.")
    merge: MergeSettings = Field(default_factory=MergeSettings, description="Answer shape.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings, description="Webhooks.")
    connectors: dict[str, SerializeAsAny[ConnectorSettings]] = Field(
        default_factory=dict,
        description="Connectors by name, in priority order; each has type, enabled, prefix, "
        "timeout and its type's own keys.",
    )
    source: Path | None = Field(default=None, exclude=True, description="The file this came from.")

    def enabled_connectors(self) -> list[tuple[str, ConnectorSettings]]:
        """The enabled connectors as (name, settings), in config order."""
        return [(name, conf) for name, conf in self.connectors.items() if conf.enabled]


# -- loading ------------------------------------------------------------------------


def load_settings(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    connector_types: Mapping[str, type[Connector[Any]]] | None = None,
) -> Settings:
    """Read, interpolate and validate a config file; ConfigError lists every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    return parse_settings(text, source=str(path), env=env, connector_types=connector_types)


def parse_settings(
    text: str,
    *,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    connector_types: Mapping[str, type[Connector[Any]]] | None = None,
) -> Settings:
    """Validate config text; ``source`` names it in messages (``<...>`` = not a file)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # Only problem/context: str(exc) quotes the offending line, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = _masked(exc.problem or exc.context or "syntax error")
        raise ConfigError([f"{source}:{line}: invalid YAML: {detail}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    reader = _Reader(source, os.environ if env is None else env)
    try:
        data = {} if root is None else reader.value(root, ())
    except _TooLarge:
        limit = f"{_MAX_NODES:,}"
        problem = f"{source}: more than {limit} values once YAML aliases are expanded"
        raise ConfigError([problem]) from None
    file = None if source.startswith("<") and source.endswith(">") else Path(source)
    return _Validator(reader, connector_types).settings(data, file)


# -- YAML with lines and interpolation ----------------------------------------------

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000
_REFERENCE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|(\{))")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Missing:
    loc: Loc
    name: str
    problem: str = ""  # when set, the message instead of "environment variable ... not set"


_FILE_PREFIX = "file:"
_MAX_SECRET_FILE = 64 * 1024


class _TooLarge(Exception):
    pass


class _Reader:
    """Builds plain Python values from YAML nodes, noting each value's line."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.lines: dict[Loc, int] = {(): 1}
        self.missing: list[_Missing] = []
        self.unreadable: list[Loc] = []
        self.problems: list[tuple[int, str]] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._nodes = 0

    def line(self, loc: Loc) -> int:
        """The line of ``loc``, or of its nearest ancestor that was written down."""
        return self.lines[self.known(loc)]

    def known(self, loc: Loc) -> Loc:
        """The longest prefix of ``loc`` that exists in the file."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return loc[:end]
        return ()

    def problem(self, loc: Loc, message: str, line: int | None = None) -> None:
        """Note one problem at ``loc`` (on ``line`` when given)."""
        where = self.line(loc) if line is None else line
        field = f"{_shown(loc)}: " if loc else ""
        self.problems.append((where, f"{self.source}:{where}: {field}{message}"))

    def value(self, node: yaml.Node, loc: Loc) -> Any:
        """The Python value of ``node``, interpolated."""
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise _TooLarge
        if id(node) in self._active:
            self.problem(loc, "a YAML alias refers to itself")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*loc, index)] = item.start_mark.line + 1
                    items.append(self.value(item, (*loc, index)))
                return items
            return self._scalar(node, loc)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node, merged in self._pairs(node, loc, set()):
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(loc, "a mapping key must be a plain string", line)
                continue
            key = str(key_node.value)
            if key in seen:
                if not merged:
                    self.problem((*loc, key), f"duplicate key (first on line {seen[key]})", line)
                continue
            seen[key] = line
            self.lines[(*loc, key)] = line
            result[key] = self.value(value_node, (*loc, key))
        return result

    def _pairs(
        self, node: yaml.MappingNode, loc: Loc, active: set[int]
    ) -> Iterator[tuple[yaml.Node, yaml.Node, bool]]:
        """Key/value nodes: the mapping's own first, then those of ``<<`` merges."""
        active = active | {id(node)}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
            else:
                yield key_node, value_node, False
        for merge in merges:
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for src in sources:
                if not isinstance(src, yaml.MappingNode) or id(src) in active:
                    self.problem(
                        loc, "'<<' takes a mapping or a list of mappings", merge.start_mark.line + 1
                    )
                    continue
                for key_node, value_node, _ in self._pairs(src, loc, active):
                    yield key_node, value_node, True

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        if node.tag == _STR_TAG:
            return self._interpolate(str(node.value), loc)
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.constructor.ConstructorError, ValueError, TypeError, OverflowError):
            # Neither the value nor its tag is quoted: either may be a misplaced secret.
            self.problem(loc, "cannot read value: its YAML tag is unknown or does not fit it")
            self.unreadable.append(loc)
            return None

    def _interpolate(self, text: str, loc: Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            body = match.group(2)
            if body is not None and body.startswith(_FILE_PREFIX):
                return self._secret_file(body[len(_FILE_PREFIX) :], loc) or ""
            variable = None if body is None else _VARIABLE.fullmatch(body)
            if variable is None:
                self.problem(
                    loc,
                    "invalid variable reference: use ${NAME} or ${NAME:-default}, "
                    "and $$ for a literal $",
                )
                self.unreadable.append(loc)
                return ""
            name, default = variable.group(1), variable.group(2)
            value = self.env.get(name)
            secret_file = self.env.get(f"{name}_FILE")
            if secret_file and value is not None:
                shown = name if _plain_name(f"{name}_FILE") else "a variable"
                problem = f"both {shown} and {shown}_FILE are set: keep one"
                self.missing.append(_Missing(loc, name, problem))
                return ""
            if secret_file:
                value = self._secret_file(secret_file, loc, f"{name}_FILE")
                if value is None:
                    return ""
            if default is not None and not value:
                return default
            if value is None:
                self.missing.append(_Missing(loc, name))
                return ""
            return value

        return _REFERENCE.sub(replace, text)

    def _secret_file(self, path: str, loc: Loc, variable: str | None = None) -> str | None:
        """A secret file's text without its trailing newline; None (and noted) if unreadable."""
        file = Path(path)
        if variable is None and not file.is_absolute():
            base = self.source
            if not (base.startswith("<") and base.endswith(">")):
                file = Path(base).parent / file
        # Shown only when plainly a path and a variable name: a secret pasted in their place
        # must not be echoed.
        path_shown = all(_plain_name(part) for part in file.parts if part != "/")
        where = str(file) if path_shown else "<hidden path>"
        if variable is None:
            named = f"secret file {where}"
        else:
            named = f"{variable if _plain_name(variable) else 'a *_FILE variable'}={where}"
        try:
            if not path:
                problem = "a file reference needs a path: ${file:/run/secrets/name}"
            elif not stat.S_ISREG(file.stat().st_mode):
                problem = f"{named} is not a regular file"
            else:
                with file.open("rb") as handle:
                    data = handle.read(_MAX_SECRET_FILE + 1)
                if len(data) <= _MAX_SECRET_FILE:
                    return data.decode("utf-8").removesuffix("\n").removesuffix("\r")
                problem = f"{named} is larger than {_MAX_SECRET_FILE} bytes"
        except UnicodeDecodeError:
            problem = f"{named} is not UTF-8 text"
        except OSError as exc:
            problem = f"cannot read {named}: {exc.strerror or type(exc).__name__}"
        self.missing.append(_Missing(loc, variable or _FILE_PREFIX + path, problem))
        return None


# -- what an error may show --------------------------------------------------------
#
# A message names the file, the line and the field, never a value. A secret written by
# mistake as a key (``sk_live_...: x``), a header name or a variable name would still
# show through the field's path: a key is shown only when it is a key of the model at
# that place, or plainly a config key's name outside the containers that hold secrets.

_HIDDEN_KEY = "<hidden key>"
_SECRET_CONTAINERS = ("auth", "header", "dsn", "secret", "token", "password", "api_key")
_CREDENTIAL_PREFIXES = ("sk_", "rk_", "pk_", "whsec_", "ghp_", "gho_", "ghs_", "ghu_", "xox")
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")
# Quoted text of two characters or more ('a' or ':' alone cannot be a secret).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.){2,}'|\"(?:[^\"\\]|\\.){2,}\"")


def _plain_name(name: str) -> bool:
    """A key or variable name safe to print: short, few digits, no credential prefix, and
    not the mix of upper case, lower case and digits that generated secrets have."""
    mixed = name != name.lower() and name != name.upper() and any(c.isdigit() for c in name)
    return (
        bool(_PLAIN_NAME.fullmatch(name))
        and sum(c.isdigit() for c in name) <= 4
        and not mixed
        and not name.lower().startswith(_CREDENTIAL_PREFIXES)
    )


def _secret_holder(loc: Loc) -> bool:
    """True when ``loc`` is, or lies inside, a value that may hold a secret.

    Judged by the names of fields (``auth``, ``headers``, ``dsn``, ``api_key``, ...);
    a connector's own name is not a field and does not count.
    """
    fields = [
        part.lower()
        for depth, part in enumerate(loc)
        if isinstance(part, str) and not (depth == 1 and loc[0] == "connectors")
    ]
    return any(word in field for field in fields for word in _SECRET_CONTAINERS)


def _key_shown(parent: Loc, key: str) -> bool:
    known = _model_keys(Settings, parent) if all(isinstance(p, str) for p in parent) else None
    if known is not None and key in known:
        return True
    return not _secret_holder(parent) and _plain_name(key)


def _shown(loc: Loc) -> str:
    """``loc`` as ``a.b[0].c``, each key that may be a secret as ``<hidden key>``."""
    out = ""
    for depth, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = part if _key_shown(loc[:depth], part) else _HIDDEN_KEY
        out += f".{name}" if out else name
    return out


def _masked(message: str, loc: Loc | None = None) -> str:
    """``message`` with its quoted parts hidden where ``loc`` may hold a secret (None: always)."""
    return _QUOTED.sub("'<hidden>'", message) if loc is None or _secret_holder(loc) else message


# -- validation ---------------------------------------------------------------------


def _model_keys(model: type[BaseModel], path: Loc) -> list[str] | None:
    """The keys a nested model at ``path`` accepts, when that can be told."""
    for part in path:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = None if info is None else info.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return [info.alias or name for name, info in model.model_fields.items() if not info.exclude]


def _unknown_key(model: type[BaseModel], rel: Loc) -> str:
    keys = _model_keys(model, rel[:-1])
    if not keys:
        return "unknown key"
    close = difflib.get_close_matches(str(rel[-1]), keys, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(keys)})"


def _message(err: ErrorDetails, model: type[BaseModel], rel: Loc) -> str:
    """A message built from pydantic's ``msg`` alone: input values may be secrets."""
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return _unknown_key(model, rel)
    msg = err["msg"]
    for noise in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(noise)
    return _masked(msg, rel)


def _placeholder(
    model: type[ConnectorSettings], raw: Mapping[str, Any], ignored: set[str]
) -> ConnectorSettings:
    """A disabled connector that cannot validate for want of variables; never opened.

    Each field is validated on its own (so secrets stay SecretStr); the fields that
    failed for an unset variable take their default, or None when they have none.
    Model and field validators do not run, so this is built with ``model_construct``.
    """
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in raw and key not in ignored:
            try:
                values[name] = TypeAdapter(info.rebuild_annotation()).validate_python(raw[key])
                continue
            except ValidationError:
                pass
        if info.is_required():
            values[name] = None
    values["enabled"] = False
    return model.model_construct(**values)


class _Validator:
    """Turns the plain values read from YAML into Settings, collecting problems."""

    def __init__(self, reader: _Reader, types: Mapping[str, type[Connector[Any]]] | None) -> None:
        self.reader = reader
        self.types = types

    def settings(self, data: Any, file: Path | None) -> Settings:
        """Validate everything, then raise ConfigError with all problems, if any."""
        reader = self.reader
        if not isinstance(data, dict):
            reader.problem((), "the configuration must be a mapping of sections")
            self._raise()
        raw_connectors = data.get("connectors")
        if raw_connectors is None:
            raw_connectors = {}
        elif not isinstance(raw_connectors, dict):
            reader.problem(("connectors",), "must be a mapping of connector name to settings")
            raw_connectors = {}
        disabled = {name for name, raw in raw_connectors.items() if self._disabled(name, raw)}
        for missing in reader.missing:
            if (
                len(missing.loc) > 1
                and missing.loc[0] == "connectors"
                and missing.loc[1] in disabled
            ):
                continue
            if missing.problem:
                reader.problem(missing.loc, missing.problem)
            elif _plain_name(missing.name):
                reader.problem(
                    missing.loc,
                    f"environment variable {missing.name} is not set "
                    f"(set it, or write ${{{missing.name}:-default}})",
                )
            else:
                reader.problem(
                    missing.loc,
                    "an environment variable named here is not set (its name looks like a "
                    "secret, so it is not shown: write ${NAME} with the variable's name)",
                )
        built: dict[str, ConnectorSettings] = {}
        for name, raw in raw_connectors.items():
            conf = self._connector(name, raw, name in disabled)
            if conf is not None:
                built[name] = conf
        self._check_prefixes(built, raw_connectors)
        sections = {k: v for k, v in data.items() if k not in ("connectors", "source")}
        if "source" in data:
            reader.problem(("source",), _unknown_key(Settings, ("source",)))
        settings: Settings | None = None
        try:
            settings = Settings.model_validate({**sections, "connectors": built, "source": file})
        except ValidationError as exc:
            self._report(exc, (), Settings)
        if settings is None or reader.problems:
            self._raise()
        return settings

    def _raise(self) -> NoReturn:
        problems = sorted(self.reader.problems, key=lambda item: item[0])
        raise ConfigError([text for _, text in problems])

    def _disabled(self, name: str, raw: Any) -> bool:
        """True when the connector says ``enabled: false`` (after interpolation)."""
        if not isinstance(raw, dict) or "enabled" not in raw:
            return False
        loc: Loc = ("connectors", name, "enabled")
        if any(m.loc == loc for m in self.reader.missing):
            return False
        try:
            return not TypeAdapter(bool).validate_python(raw["enabled"])
        except ValidationError:
            return False  # the model reports the bad value

    def _connector(self, name: str, raw: Any, disabled: bool) -> ConnectorSettings | None:
        reader = self.reader
        loc: Loc = ("connectors", name)
        if not _NAME.fullmatch(name):
            reader.problem(loc, "a connector name may only contain a-z, 0-9 and '_'")
        if not isinstance(raw, dict):
            reader.problem(loc, "must be a mapping with at least a 'type' key")
            return None
        type_name = raw.get("type")
        if not isinstance(type_name, str):
            problem = "required key is missing" if "type" not in raw else "must be a string"
            reader.problem((*loc, "type"), problem)
            return None
        try:
            model = get_connector_type(type_name, self.types).settings_model
        except ConfigError as exc:
            for text in exc.problems:
                reader.problem((*loc, "type"), text)
            return None
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            reported, ignored = self._report(exc, loc, model)
        if disabled and not reported:
            return _placeholder(model, raw, ignored)
        return None

    def _report(
        self, exc: ValidationError, base: Loc, model: type[BaseModel]
    ) -> tuple[int, set[str]]:
        """Note pydantic's errors, minus those that stem from an unset variable.

        Those are reported as unset variables already, or sit in a disabled connector
        where they do not matter; an unknown key is always reported. Returns how many
        problems were noted and the top-level keys whose errors were passed over.
        """
        reader = self.reader
        count = 0
        ignored: set[str] = set()
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            rel: Loc = tuple(err["loc"])
            loc = (*base, *rel)
            if err["type"] != "extra_forbidden" and self._from_missing(loc):
                if rel and isinstance(rel[0], str):
                    ignored.add(rel[0])
                continue
            known = reader.known(loc)
            if err["type"] == "missing" and len(loc) > len(known):
                known = loc[: len(known) + 1]
            reader.problem(known, _message(err, model, rel))
            count += 1
        return count, ignored

    def _from_missing(self, loc: Loc) -> bool:
        """True when ``loc`` holds, or lies inside, a value with an unset variable.

        Values that could not be read at all count too: they are reported already.
        """
        for other in (*(m.loc for m in self.reader.missing), *self.reader.unreadable):
            shorter = min(len(loc), len(other))
            if loc[:shorter] == other[:shorter]:
                return True
        return False

    def _check_prefixes(
        self, built: Mapping[str, ConnectorSettings], raw: Mapping[str, Any]
    ) -> None:
        """Each prefix must be [a-z0-9_]*; several connectors may share one (even ""): the
        merge's collision rule decides who keeps a key, and ``aggregator check`` lists it."""
        for name, conf in built.items():
            if not conf.enabled or not _NAME.fullmatch(name):
                continue
            prefix = name if conf.prefix is None else conf.prefix
            has_key = isinstance(raw.get(name), dict) and "prefix" in raw[name]
            loc: Loc = ("connectors", name, "prefix") if has_key else ("connectors", name)
            if not _PREFIX.fullmatch(prefix):
                self.reader.problem(loc, "a prefix may only contain a-z, 0-9 and '_'")
