"""Serving an aiohttp application on a port: the one way the sample upstreams (and the
tests' fakes) do it."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, **runner_options: Any
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (0: any free port): its runner, to clean up, and base URL.

    ``runner_options`` go to ``web.AppRunner`` (its access log is off).
    """
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"
