"""Shared fixtures: each support module registers its own as a pytest plugin."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.net",
    "tests.support.redis_server",
    "tests.support.pg",
    "tests.support.fake_stripe",
    "tests.support.upstreams",
    "tests.support.redis_cluster",
    "tests.support.vendors.stack",
    "tests.support.scripted",
]

FAULT_TOTALS = Path(__file__).parent / "artifacts" / "faults.txt"
COMPOSE_UP = Path(__file__).parent / "artifacts" / "compose-up.txt"
_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the fault-injection suite's totals at the end of every run that made them."""
    if FAULT_TOTALS.exists() and FAULT_TOTALS.stat().st_mtime >= _STARTED:
        terminalreporter.section("fault-injection totals")
        terminalreporter.write(FAULT_TOTALS.read_text(encoding="utf-8"))
    if COMPOSE_UP.exists() and COMPOSE_UP.stat().st_mtime >= _STARTED:
        terminalreporter.section("docker compose test")
        terminalreporter.write(COMPOSE_UP.read_text(encoding="utf-8"))
