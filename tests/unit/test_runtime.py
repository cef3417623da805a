"""The runtime: built from settings, opened and closed in one place, swapped whole on reload."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import aiohttp
import pytest

from aggregator import cli
from aggregator.runtime import LiveRuntime, OpenError, Runtime, build
from aggregator.store import ProfileStore
from connectors.base import ConnectorSettings
from tests.support.fakes import ScriptedConnector, runtime_for
from tests.support.proxy import settings_from
from tests.support.registry import entry_points


class RecordingStore(ProfileStore):
    """A memory store that logs when it is opened and closed."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(settings_from().cache, namespace="unit")
        self.events = events

    async def open(self) -> None:
        self.events.append("open cache")

    async def close(self) -> None:
        self.events.append("close cache")


class Tracked(ScriptedConnector):
    """A connector type for the registry that remembers every instance made."""

    made: ClassVar[list[Tracked]] = []

    def __init__(self, name: str, settings: ConnectorSettings | None = None) -> None:
        super().__init__(name, settings, answers={"ada@example.com": {"plan": "Pro"}})
        Tracked.made.append(self)


class FailsToOpen(Tracked):
    """A connector type whose ``open`` fails, as a bad credential or pool setting would."""

    async def open(self, session: aiohttp.ClientSession) -> None:
        raise ConnectionRefusedError("no pool for you")


@pytest.fixture
def tracked_types(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    Tracked.made.clear()
    points = {"tracked": f"{__name__}:Tracked", "fails": f"{__name__}:FailsToOpen"}
    with entry_points(monkeypatch, points):
        yield


def parts(events: list[str], *names: str) -> tuple[RecordingStore, tuple[ScriptedConnector, ...]]:
    return RecordingStore(events), tuple(ScriptedConnector(n, events=events) for n in names)


def runtime_of(store: ProfileStore, connectors: tuple[ScriptedConnector, ...]) -> Runtime:
    return runtime_for(settings_from(), connectors, store)


async def test_opened_opens_the_store_then_each_connector_and_closes_in_reverse(
    session: aiohttp.ClientSession,
) -> None:
    events: list[str] = []
    runtime = runtime_of(*parts(events, "a", "b"))
    async with runtime.opened(session) as opened:
        assert opened is runtime
        assert events == ["open cache", "open a", "open b"]
    assert events[3:] == ["close b", "close a", "close cache"]


async def test_a_failing_open_closes_what_was_opened_and_names_the_part(
    session: aiohttp.ClientSession,
) -> None:
    events: list[str] = []
    store, (a, b, c) = parts(events, "a", "b", "c")
    b.open_error = ConnectionRefusedError("refused")
    with pytest.raises(OpenError) as caught:
        async with runtime_of(store, (a, b, c)).opened(session):
            pytest.fail("must not be reached")
    assert caught.value.name == "b"
    assert isinstance(caught.value.cause, ConnectionRefusedError)
    assert events == ["open cache", "open a", "close a", "close cache"]


async def test_opened_can_record_failures_and_go_on(session: aiohttp.ClientSession) -> None:
    events: list[str] = []
    store, (a, b, c) = parts(events, "a", "b", "c")
    b.open_error = ConnectionRefusedError("refused")
    failed: dict[str, Exception] = {}
    async with runtime_of(store, (a, b, c)).opened(session, failed=failed):
        assert set(failed) == {"b"}
    assert events == ["open cache", "open a", "open c", "close c", "close a", "close cache"]


@pytest.mark.usefixtures("tracked_types")
def test_build_keeps_unchanged_connectors_and_the_store() -> None:
    first = build(settings_from({"a": {"type": "tracked"}, "b": {"type": "tracked"}}))
    second = build(
        settings_from({"a": {"type": "tracked"}, "b": {"type": "tracked", "timeout": 1.5}}),
        first,
    )
    third = build(settings_from({"a": {"type": "tracked"}}, cache={"ttl": 5}), second)
    assert second.connectors[0] is first.connectors[0]
    assert second.connectors[1] is not first.connectors[1]
    assert second.store is first.store
    assert third.connectors == (first.connectors[0],)
    assert third.store is not first.store, "cache settings or the namespace changed"
    assert second.tokens == first.tokens == (b"test-token-0123456789", b"second-token-abcdefgh")


@pytest.mark.usefixtures("tracked_types")
async def test_a_reload_opens_new_parts_and_closes_only_what_was_left_behind(
    session: aiohttp.ClientSession,
) -> None:
    serving: list[Runtime] = []
    live = LiveRuntime(session, serving.append)
    old = build(settings_from({"a": {"type": "tracked"}, "b": {"type": "tracked"}}))
    await live.start(old)
    a, b = Tracked.made
    new = build(
        settings_from({"a": {"type": "tracked"}, "c": {"type": "tracked"}}, cache={"ttl": 9}),
        old,
    )
    await live.start(new, grace=3600)
    (c,) = Tracked.made[2:]
    assert serving == [old, new]
    assert live.runtime is new
    assert [(x.opened, x.closed) for x in (a, b, c)] == [(1, 0), (1, 0), (1, 0)]
    failing = build(settings_from({"a": {"type": "tracked"}, "z": {"type": "fails"}}), new)
    with pytest.raises(OpenError):
        await live.start(failing)
    assert live.runtime is new
    await live.close()
    assert [(x.opened, x.closed) for x in (a, b, c)] == [(1, 1), (1, 1), (1, 1)]


@pytest.mark.usefixtures("tracked_types")
async def test_preview_closes_what_it_opened_when_a_later_connector_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_from({"first": {"type": "tracked"}, "second": {"type": "fails"}})
    code = await cli.preview(settings, "ada@example.com", None)
    (first, _) = Tracked.made
    assert code == 1
    assert (first.opened, first.closed) == (1, 1)
    assert "opening second failed: ConnectionRefusedError" in capsys.readouterr().err


@pytest.mark.usefixtures("tracked_types")
async def test_check_reports_a_connector_that_fails_to_open_and_probes_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_from({"first": {"type": "tracked"}, "second": {"type": "fails"}})
    code = await cli.check(settings)
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL second (fails): ConnectionRefusedError" in out
    assert "ok   first (tracked)" in out
    assert all(x.closed == x.opened for x in Tracked.made)
