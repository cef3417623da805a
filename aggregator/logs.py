"""Logging set-up: plain text by default, JSON lines on request; no personal data."""

from __future__ import annotations

import logging
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def request_id(sent: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a plain token (<= 128 characters from
    ``[A-Za-z0-9._:/+=-]``), else a new random id: a log line carries no forged fields."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex[:16]


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The classic line, with any structured extras appended as key=value."""
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in extras.items())
        return line


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class MalformedRequestRedactor(logging.Filter):
    """aiohttp logs a malformed request with its raw line, token and email included:
    keep the fact, drop the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite records about HTTP parse errors; pass everything else untouched."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "rejected a malformed request: %s (HTTP %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
        return True


def install_redactor() -> None:
    """Attach the redactor to aiohttp's server logger once."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestRedactor) for f in server_log.filters):
        server_log.addFilter(MalformedRequestRedactor())


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Route the root logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    install_redactor()
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # asyncpg repeats a traceback per retry while a database is down; our own line says it once.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
