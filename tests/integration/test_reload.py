"""Config changes without a restart, and a graceful stop that drains in-flight requests."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from aggregator import reload as reload_module
from aggregator.config import load_settings
from aggregator.keys import SERVICE
from aggregator.reload import RELOADER
from tests.support.fakes import FakeClock
from tests.support.proxy import TOKEN, running_proxy
from tests.support.serve import ServeProcess
from tests.support.upstreams import FakeCrm


def write_config(path: Path, crm: FakeCrm, *, fields: str = "", extra: str = "") -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            server:
              deadline: 1.0
            auth:
              api_tokens: ["{TOKEN}"]
            cache:
              ttl: 60
            connectors:
              crm:
                type: rest
                url: "{crm.template}"
                select: "data[0]"
                {fields}
              crm2:
                type: rest
                url: "{crm.template}"
                select: "data[0]"
            {extra}
            """
        )
    )


async def test_changed_connector_is_rebuilt_and_the_others_kept(
    crm: FakeCrm, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm)
    clock = FakeClock()
    async with running_proxy(load_settings(config), clock=clock) as proxy:
        _, before = await proxy.profile("ada@example.com")
        service = proxy.app[SERVICE]
        crm_before, crm2_before = service.connectors
        write_config(config, crm, fields='fields: {tier: "plan.name"}')
        assert await proxy.app[RELOADER].reload()
        clock.advance(61)
        _, after = await proxy.profile("ada@example.com")
        crm_after, crm2_after = service.connectors
    assert before["crm_plan_name"] == "Pro"
    assert "crm_plan_name" not in after
    assert after["crm_tier"] == "Pro"
    assert crm2_after is crm2_before
    assert crm_after is not crm_before


async def test_invalid_new_config_is_refused_and_the_running_one_stays(
    crm: FakeCrm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm)
    async with running_proxy(load_settings(config)) as proxy:
        write_config(config, crm, fields="timeout: soon")
        with caplog.at_level(logging.ERROR, logger="aggregator.reload"):
            assert not await proxy.app[RELOADER].reload()
        status, body = await proxy.profile("ada@example.com")
    assert status == 200
    assert body["crm_plan_name"] == "Pro"
    assert f"{config}:12: connectors.crm.timeout" in caplog.text


async def test_new_tokens_apply_after_reload(crm: FakeCrm, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, crm)
    async with running_proxy(load_settings(config)) as proxy:
        config.write_text(config.read_text().replace(TOKEN, "rotated-token-0123456789"))
        assert await proxy.app[RELOADER].reload()
        old, _ = await proxy.profile("ada@example.com")
        new, _ = await proxy.profile("ada@example.com", token="rotated-token-0123456789")
    assert (old, new) == (401, 200)


async def test_sighup_and_file_changes_trigger_a_reload(
    crm: FakeCrm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload_module, "POLL_SECONDS", 0.05)
    config = tmp_path / "config.yaml"
    write_config(config, crm)
    clock = FakeClock()
    async with running_proxy(load_settings(config), clock=clock) as proxy:
        write_config(config, crm, fields='fields: {tier: "plan.name"}')
        os.utime(config, (time.time() + 5, time.time() + 5))
        for _ in range(100):
            await asyncio.sleep(0.05)  # the watcher polls the file every 0.05 s
            clock.advance(61)
            _, body = await proxy.profile("ada@example.com")
            if "crm_tier" in body:
                break
        assert body.get("crm_tier") == "Pro"
        write_config(config, crm, fields='fields: {seat_count: "seats"}')
        monkeypatch.setattr(reload_module, "POLL_SECONDS", 3600)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.05)
            clock.advance(61)
            _, body = await proxy.profile("ada@example.com")
            if "crm_seat_count" in body:
                break
    assert body.get("crm_seat_count") == 12


async def test_sigterm_drains_in_flight_requests(crm: FakeCrm, tmp_path: Path) -> None:
    crm.delay["ada@example.com"] = 0.8
    config = tmp_path / "config.yaml"
    write_config(config, crm)
    config.write_text(config.read_text().replace("deadline: 1.0", "deadline: 2.0"))
    server = ServeProcess(config, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_ready(session)
            params = {"email": "ada@example.com", "api_token": TOKEN}
            request = asyncio.ensure_future(session.get(f"{server.url}/profile", params=params))
            await asyncio.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            response = await request
            body = await response.json()
            response.release()
        exit_code = server.proc.wait(10)
    finally:
        server.stop()
    assert response.status == 200
    assert body["crm_plan_name"] == "Pro"
    assert exit_code == 0
