"""``python -m aggregator.samples.stripe_api``: the Stripe-shaped sample server on its own.

It stands in for stripe-mock (https://github.com/stripe/stripe-mock: port 12111, any
``sk_test_`` key in its examples, ``sk_test_123``) in the offline compose stack, so it is
driven here with the official ``stripe`` library, as the proxy drives it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import stripe

from aggregator import demo
from aggregator.samples import stripe_api
from tests.support.redis_server import free_port

MODULE = (sys.executable, "-m", "aggregator.samples.stripe_api")


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The module run with ``args``; yields the process and the first line it printed."""
    process = subprocess.Popen(
        [*MODULE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process, process.stdout.readline().strip()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    """Send ``signum``; the exit code and everything printed after the first line."""
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=10)
    return process.returncode, stdout + stderr


def client(url: str, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)


def test_defaults_are_stripe_mocks_port_and_key_and_the_readme_names_them() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")

    assert (stripe_api.STANDALONE_PORT, stripe_api.STANDALONE_KEY) == (12111, "sk_test_123")
    assert "`python -m aggregator.samples.stripe_api`" in readme
    assert "http://127.0.0.1:12111" in readme
    for key in (stripe_api.STANDALONE_KEY, demo.STRIPE_KEY):
        assert f"`{key}`" in readme, key


def test_serves_the_sample_customers_to_the_stripe_library_and_stops_on_sigterm() -> None:
    port = free_port()
    with serving("--port", str(port)) as (process, announced):
        url = f"http://127.0.0.1:{port}"
        customers = client(url, "sk_test_123").v1.customers.list(
            params={"email": "ada@example.com"}
        )
        with pytest.raises(stripe.AuthenticationError):
            client(url, "sk_test_other").v1.customers.list(params={"email": "ada@example.com"})
        code, output = stop(process, signal.SIGTERM)

    assert announced == f"Stripe-shaped API on {url} (key sk_test_123, 3 sample customers)"
    assert [c.name for c in customers.data] == ["Ada Lovelace"]
    assert code == 0
    assert "Traceback" not in output


def test_key_and_empty_options_and_sigint() -> None:
    port = free_port()
    with serving("--port", str(port), "--key", "sk_test_mine", "--empty") as (process, line):
        url = f"http://127.0.0.1:{port}"
        customers = client(url, "sk_test_mine").v1.customers.list(
            params={"email": "ada@example.com"}
        )
        code, output = stop(process, signal.SIGINT)

    assert line == f"Stripe-shaped API on {url} (key sk_test_mine, no data)"
    assert customers.data == []
    assert code == 0
    assert "Traceback" not in output


def test_a_port_in_use_is_said_plainly_with_exit_code_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*MODULE, "--port", str(port)], capture_output=True, text=True, timeout=30
        )

    assert result.returncode == 1
    assert result.stderr.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in result.stderr
