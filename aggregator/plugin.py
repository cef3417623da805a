"""Everything a connector plugin needs, from one place.

A third-party connector type imports from here only::

    from aggregator.plugin import Connector, ConnectorSettings, RetriableError

and is registered in the ``aggregator.connectors`` entry-point group (see the README,
"Write a connector", and examples/connector-plugin). An HTTP API is often easiest as a
``RestBase`` subclass (what the presets are) returning ``RestSettings``; a connector that
makes further calls may return an ``Answer`` carrying each call's ``StepOutcome``.
"""

from __future__ import annotations

from aggregator.emails import Email, as_sent
from aggregator.errors import (
    ConnectorError,
    FatalError,
    NotFoundError,
    RetriableError,
    UnavailableError,
)
from connectors.base import (
    Answer,
    Connector,
    ConnectorSettings,
    FetchOutcome,
    Status,
    StepOutcome,
)
from connectors.rest import RestBase
from connectors.rest_settings import RestSettings

__all__ = [
    "Answer",
    "Connector",
    "ConnectorError",
    "ConnectorSettings",
    "Email",
    "FatalError",
    "FetchOutcome",
    "NotFoundError",
    "RestBase",
    "RestSettings",
    "RetriableError",
    "Status",
    "StepOutcome",
    "UnavailableError",
    "as_sent",
]
