"""Connector types: each turns an email into a mapping of fields from one upstream."""

from connectors.base import Connector, ConnectorSettings, FetchOutcome

__all__ = ["Connector", "ConnectorSettings", "FetchOutcome"]
