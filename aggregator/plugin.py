"""Everything a connector plugin needs, from one place.

A third-party connector type imports from here only::

    from aggregator.plugin import Connector, ConnectorSettings, RetriableError

and is registered in the ``aggregator.connectors`` entry-point group (see the README,
"Write a connector", and examples/connector-plugin).
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
from connectors.base import Connector, ConnectorSettings, FetchOutcome, Status

__all__ = [
    "Connector",
    "ConnectorError",
    "ConnectorSettings",
    "Email",
    "FatalError",
    "FetchOutcome",
    "NotFoundError",
    "RetriableError",
    "Status",
    "UnavailableError",
    "as_sent",
]
