"""Fault injection: the proxy keeps answering, in time and without losing data, whatever fails.

The load test runs the real app over HTTP with a healthy ``rest`` connector, a ``rest``
connector on a chaos upstream, a ``stripe`` connector on a Stripe-shaped chaos upstream
(normal answers mixed with Stripe's 429/500 and with hostile ones: 512 MiB declared or
not, a gzip bomb, endless, trickling, cut short, a redirect to another origin), and (when
a private PostgreSQL can be run) a ``postgres`` connector, on a Redis cache; Redis is
stopped and started, PostgreSQL restarted and both chaos upstreams turned to an outage
while the load runs. The fuzz test throws arbitrary query strings, headers and raw request lines
at ``GET /profile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from aggregator.config import Settings
from tests.support.chaos import (
    ChaosUpstream,
    Kind,
    StripeChaos,
    StripeKind,
    running_chaos,
    running_stripe_chaos,
)
from tests.support.pg import PgSchema, RestartablePostgres, create_schema, drop_schema
from tests.support.proxy import TOKEN, running_proxy, settings_from
from tests.support.raw_http import ThreadedApp, status_of
from tests.support.redis_server import RedisProcess

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

DEADLINE = 1.0
SLACK = 0.1
REQUESTS = 3000
EMAILS = 300
CONCURRENCY = 50
TTL = 0.5
STALE_TTL = 3600.0
SEED = 20240604
HEALTHZ_LIVENESS = 0.5

CHAOS_MIX: dict[Kind, float] = {
    "ok": 0.50,
    "delay": 0.06,
    "reset": 0.08,
    "http500": 0.08,
    "http429": 0.08,
    "bad_json": 0.06,
    "endless": 0.07,
    "huge": 0.07,
}
CHAOS_OUTAGE: dict[Kind, float] = {"http500": 1.0, "reset": 1.0, "delay": 0.3, "bad_json": 0.5}
STRIPE_MIX: dict[StripeKind, float] = {
    "ok": 0.90,
    "http429": 0.01,
    "http500": 0.01,
    "huge": 0.01,
    "huge_declared": 0.01,
    "gzip_bomb": 0.01,
    "endless": 0.01,
    "trickle": 0.01,
    "cut": 0.015,
    "redirect": 0.015,
}
"""Per Stripe call; a known customer's profile takes four calls."""
STRIPE_OUTAGE: dict[StripeKind, float] = {
    kind: weight for kind, weight in STRIPE_MIX.items() if kind != "ok"
}

# (share of requests completed, action): the disturbances, in order.
SCHEDULE = (
    (0.15, "redis stop"),
    (0.30, "redis start"),
    (0.45, "postgres stop"),
    (0.55, "postgres start"),
    (0.65, "chaos outage"),
    (0.80, "chaos mixed"),
)

SOURCES = {"crm": "crm_tier", "chaos": "chaos_tier", "db": "db_plan", "stripe": "stripe_id"}


def email_of(index: int) -> str:
    """The address of test customer ``index``."""
    return f"customer{index:04d}@example.com"


@dataclass(slots=True)
class Answer:
    """One request of the load, as the client saw it."""

    email: str
    sent: float
    done: float
    status: int
    body: dict[str, Any]

    @property
    def elapsed(self) -> float:
        """Seconds from sending the request to having read the whole answer."""
        return self.done - self.sent


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects the test session already holds out of the garbage collector's passes.

    A full pass of the cyclic collector scans every tracked object: here pytest's and every
    test module's, which a proxy process does not hold, for 100-200 ms of the event loop
    each time (three to five times a run, measured). Frozen, a pass costs what the load
    allocates, as it would in the proxy.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def durable_redis() -> Iterator[RedisProcess]:
    """A private Redis with an fsync'ed append-only file, so a restart keeps the data."""
    server = RedisProcess(None, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def optional_postgres(request: pytest.FixtureRequest) -> RestartablePostgres | None:
    """The restartable PostgreSQL, or None where one cannot be run here."""
    try:
        server: RestartablePostgres = request.getfixturevalue("restartable_postgres")
    except Exception as exc:
        print(f"postgres part skipped: {type(exc).__name__}: {exc}")
        return None
    return server


@pytest.fixture
async def accounts(optional_postgres: RestartablePostgres | None) -> AsyncIterator[PgSchema | None]:
    """A schema on the restartable server with an account row for every test customer."""
    if optional_postgres is None:
        yield None
        return
    schema = await create_schema(optional_postgres.dsn)
    emails = [email_of(i) for i in range(EMAILS)]
    await schema.execute(
        "INSERT INTO accounts (email, plan, seats) "
        "SELECT e, 'Team', 5 FROM unnest($1::text[]) AS e ON CONFLICT DO NOTHING",
        emails,
    )
    try:
        yield schema
    finally:
        if not optional_postgres.running:
            await optional_postgres.start()
        await drop_schema(schema)


def seed_stripe_customers(stripe: StripeChaos) -> None:
    """Every third test customer pays through Stripe: a monthly subscription and a charge.

    The others are unknown to Stripe (one call each instead of four), as many of a support
    team's customers are; it keeps the load's CPU for the proxy rather than the fakes.
    """
    for index in range(0, EMAILS, 3):
        customer = stripe.add_customer(email_of(index), name=f"Customer {index}")
        stripe.add_subscription(customer, [stripe.item(4900, nickname="Team monthly")])
        stripe.add_charge(customer, 4900)


# -- the load test ---------------------------------------------------------------------


class Disturber:
    """Stops and starts Redis and PostgreSQL and turns the chaos up, as the load progresses."""

    def __init__(
        self,
        redis: RedisProcess,
        postgres: RestartablePostgres | None,
        chaos: ChaosUpstream,
        stripe: StripeChaos,
    ) -> None:
        self.redis = redis
        self.postgres = postgres
        self.chaos = chaos
        self.stripe = stripe
        self.done = 0
        self.started = time.perf_counter()
        self.events: list[tuple[float, str]] = []

    async def run(self) -> None:
        """Carry out SCHEDULE, each step once its share of requests has been answered."""
        for share, action in SCHEDULE:
            while self.done < share * REQUESTS:
                await asyncio.sleep(0.005)
            await self._do(action)
            self.events.append((time.perf_counter() - self.started, action))

    async def _do(self, action: str) -> None:
        if action == "redis stop":
            await asyncio.to_thread(self.redis.stop)
        elif action == "redis start":
            await asyncio.to_thread(self.redis.start)
        elif action == "postgres stop" and self.postgres is not None:
            await self.postgres.stop()
        elif action == "postgres start" and self.postgres is not None:
            await self.postgres.start()
        elif action == "chaos outage":
            self.chaos.set_weights(CHAOS_OUTAGE)
            self.stripe.set_weights(STRIPE_OUTAGE)
        elif action == "chaos mixed":
            self.chaos.set_weights(CHAOS_MIX)
            self.stripe.set_weights(STRIPE_MIX)


async def send_load(url: str, session: Any, disturber: Disturber) -> list[Answer]:
    """REQUESTS requests over EMAILS customers, CONCURRENCY at a time."""
    rng = random.Random(SEED)
    plan = iter([email_of(rng.randrange(EMAILS)) for _ in range(REQUESTS)])
    answers: list[Answer] = []

    async def worker() -> None:
        for email in plan:
            target = f"{url}/profile?email={quote(email)}&api_token={TOKEN}"
            sent = time.perf_counter()
            async with session.get(target) as response:
                raw = await response.read()
                status = response.status
            done = time.perf_counter()
            body = orjson.loads(raw) if status == 200 else {"raw": raw.decode(errors="replace")}
            answers.append(Answer(email, sent, done, status, body))
            disturber.done += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers


def stale_violations(answers: list[Answer], sources: list[str], origin: float) -> list[str]:
    """Answers lacking a failing connector's fields though an earlier answer had them.

    A copy "existed" when an answer received before this request was sent held that
    connector's fields, less than ttl + stale_ttl ago.
    """
    problems: list[str] = []
    by_email: dict[str, list[Answer]] = {}
    for answer in sorted(answers, key=lambda a: a.sent):
        by_email.setdefault(answer.email, []).append(answer)
    for email, history in by_email.items():
        for answer in history:
            for name in sources:
                key = SOURCES[name]
                failed = f"{name}_error" in answer.body
                if not failed:
                    continue
                if key in answer.body and answer.body.get("profile_stale") is not True:
                    problems.append(f"{email}: {name} stale fields without profile_stale")
                had_copy = any(
                    key in earlier.body
                    and earlier.done < answer.sent
                    and answer.sent - earlier.done < TTL + STALE_TTL
                    for earlier in history
                )
                if had_copy and key not in answer.body:
                    problems.append(
                        f"{email} at {answer.sent - origin:.3f}s: {name}_error="
                        f"{answer.body[f'{name}_error']} and no stale copy of its fields "
                        f"(cached={answer.body.get('profile_cached')})"
                    )
    return problems


def totals(
    answers: list[Answer],
    chaos: ChaosUpstream,
    stripe: StripeChaos,
    disturber: Disturber,
    wall: float,
) -> str:
    """The summary the suite prints and keeps in tests/artifacts/faults.txt."""
    statuses = Counter(a.status for a in answers)
    latencies = sorted(a.elapsed for a in answers)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    stale = sum(1 for a in answers if a.body.get("profile_stale") is True)
    errors = Counter(
        f"{key}={value}" for a in answers for key, value in a.body.items() if key.endswith("_error")
    )
    faults = ", ".join(f"{kind}={chaos.counts[kind]}" for kind in sorted(chaos.counts))
    stripe_faults = ", ".join(f"{kind}={stripe.counts[kind]}" for kind in sorted(stripe.counts))
    lines = [
        "fault-injection totals",
        f"  requests:        {len(answers)} over {EMAILS} emails, concurrency {CONCURRENCY}, "
        f"{wall:.1f} s",
        f"  statuses:        {dict(sorted(statuses.items()))}",
        f"  5xx:             {server_errors}",
        f"  chaos upstream:  {chaos.requests} requests, {chaos.faults} faults injected ({faults})",
        f"  stripe upstream: {stripe.total_requests} requests, {stripe.faults} faults injected "
        f"({stripe_faults}), {stripe.hostile_bytes_sent / 2**20:.0f} MiB of hostile bodies sent",
        "  disturbances:    "
        + ", ".join(f"{action} @{at:.1f}s" for at, action in disturber.events),
        f"  stale answers:   {stale}",
        f"  connector errs:  {dict(sorted(errors.items()))}",
        f"  latency:         p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms, "
        f"worst {latencies[-1] * 1000:.0f} ms (limit {(DEADLINE + SLACK) * 1000:.0f} ms)",
    ]
    return "\n".join(lines)


async def test_proxy_answers_through_upstream_cache_and_database_faults(
    durable_redis: RedisProcess,
    optional_postgres: RestartablePostgres | None,
    accounts: PgSchema | None,
    cache_namespace: str,
) -> None:
    connectors: dict[str, dict[str, Any]] = {}
    async with (
        running_chaos() as healthy,
        running_chaos(CHAOS_MIX, seed=SEED, delay=3.0) as chaos,
        running_stripe_chaos(STRIPE_MIX, seed=SEED) as stripe,
    ):
        seed_stripe_customers(stripe)
        connectors["crm"] = {"type": "rest", "url": healthy.template, "select": "data[0]"}
        connectors["chaos"] = {
            "type": "rest",
            "url": chaos.template,
            "select": "data[0]",
            "timeout": 0.3,
            "circuit_reset": 0.5,
        }
        connectors["stripe"] = {
            "type": "stripe",
            "api_key": stripe.key,
            "api_base": stripe.url,
            "timeout": 0.5,
            "circuit_reset": 0.5,
            # The load's rate, not a Stripe account's: the test key's 25 calls/s would
            # turn every profile into a timeout.
            "rate_limit": 100_000,
            "endpoint_rate_limit": 100_000,
        }
        if accounts is not None:
            connectors["db"] = {
                "type": "postgres",
                "dsn": accounts.dsn,
                "query": "SELECT plan, seats FROM accounts WHERE email = $1",
                "timeout": 0.5,
                "circuit_reset": 0.5,
            }
        settings = settings_from(
            connectors,
            cache_url=durable_redis.url,
            server={"deadline": DEADLINE},
            cache={"namespace": cache_namespace, "ttl": TTL, "stale_ttl": STALE_TTL},
        )
        disturber = Disturber(durable_redis, optional_postgres, chaos, stripe)
        async with running_proxy(settings) as proxy:
            with frozen_heap():
                started = time.perf_counter()
                disturbing = asyncio.create_task(disturber.run())
                try:
                    answers = await send_load(proxy.url, proxy.session, disturber)
                    await asyncio.wait_for(disturbing, 30)
                finally:
                    disturbing.cancel()
                    if durable_redis.proc is None:
                        await asyncio.to_thread(durable_redis.start)
                wall = time.perf_counter() - started

    summary = totals(answers, chaos, stripe, disturber, wall)
    print("\n" + summary)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.txt").write_text(summary + "\n", encoding="utf-8")
    with (ARTIFACTS / "faults-answers.jsonl").open("wb") as out:
        for a in sorted(answers, key=lambda a: a.sent):
            record = {"email": a.email, "sent": a.sent - started, "done": a.done - started}
            out.write(orjson.dumps({**record, "status": a.status, "body": a.body}) + b"\n")

    assert len(answers) == REQUESTS
    assert chaos.faults > 0.2 * chaos.requests
    assert all(chaos.counts[kind] > 0 for kind in CHAOS_MIX)
    assert stripe.faults > 0.1 * stripe.total_requests
    assert all(stripe.counts[kind] > 0 for kind in STRIPE_MIX), stripe.counts
    assert stripe.decoy.total_requests == 0, "a redirect to another origin was followed"
    # Stripe failed while an earlier copy of its fields existed, and that copy was served.
    assert any("stripe_error" in a.body and "stripe_id" in a.body for a in answers)
    assert sum(a.body.get("profile_stale") is True for a in answers) > 0
    failures: list[str] = []
    errors = [(a.status, a.body) for a in answers if a.status != 200]
    if errors:
        failures.append(f"{len(errors)} answers were not 200: {errors[:5]}")
    slow = sorted(round(a.elapsed, 3) for a in answers if a.elapsed > DEADLINE + SLACK)
    if slow:
        failures.append(f"{len(slow)} answers over deadline + {SLACK}s: {slow[-10:]}")
    missing = [a.body for a in answers if a.body.get("crm_tier") != "gold"]
    if missing:
        failures.append(f"{len(missing)} answers without the healthy connector: {missing[:3]}")
    lost = stale_violations(answers, [name for name in SOURCES if name in connectors], started)
    if lost:
        failures.append(f"{len(lost)} answers lost a stale copy: {lost[:5]}")
    assert not failures, "\n".join(failures)


# -- single faults, one at a time ------------------------------------------------------


@pytest.mark.parametrize("fetched", ["before the outage", "during the outage"])
async def test_a_profile_survives_a_redis_outage_as_a_stale_copy(
    redis_process: RedisProcess, cache_namespace: str, fetched: str
) -> None:
    async with running_chaos() as upstream:
        connector = {"type": "rest", "url": upstream.template, "select": "data[0]", "retries": 0}
        settings = settings_from(
            {"crm": connector},
            cache_url=redis_process.url,
            cache={"namespace": cache_namespace, "ttl": 0.2, "near_ttl": 0.3},
        )
        async with running_proxy(settings) as proxy:
            if fetched == "during the outage":
                redis_process.stop()
            _, first = await proxy.profile("ada@example.com")
            redis_process.stop()
            await asyncio.sleep(0.6)  # past ttl and near_ttl
            upstream.set_weights({"http500": 1.0})
            status, body = await proxy.profile("ada@example.com")

    assert first["crm_tier"] == "gold"
    assert status == 200
    assert body["crm_error"] == "error"
    assert body.get("crm_tier") == "gold", body
    assert body["profile_stale"] is True


async def test_a_frozen_redis_does_not_stretch_the_deadline(
    redis_process: RedisProcess, cache_namespace: str
) -> None:
    # A Redis that accepts connections but never answers (paused, overloaded, a network
    # partition) costs each cache operation its full cache.timeout.
    async with (
        running_chaos() as healthy,
        running_chaos({"delay": 1.0}, delay=5.0) as stuck,
    ):
        settings = settings_from(
            {
                "crm": {"type": "rest", "url": healthy.template, "select": "data[0]"},
                "slow": {"type": "rest", "url": stuck.template, "select": "data[0]"},
            },
            cache_url=redis_process.url,
            server={"deadline": DEADLINE},
            cache={"namespace": cache_namespace, "timeout": 0.25},
        )
        async with running_proxy(settings) as proxy:
            await proxy.profile("warm@example.com")
            assert redis_process.proc is not None
            redis_process.proc.send_signal(signal.SIGSTOP)
            try:
                started = time.perf_counter()
                status, body = await proxy.profile("ada@example.com")
                elapsed = time.perf_counter() - started
            finally:
                redis_process.proc.send_signal(signal.SIGCONT)

    assert status == 200
    assert body["crm_tier"] == "gold"
    assert body["slow_error"] == "timeout"
    assert elapsed <= DEADLINE + SLACK, f"answered after {elapsed:.3f} s"


async def test_a_record_of_keys_sanitizing_alike_does_not_stall_the_loop(
    cache_namespace: str,
) -> None:
    # One CRM record of 60,000 keys that all sanitize to "a" ("a!", "a#", ...). Naive
    # renaming is quadratic: minutes on the event loop, every request waiting. Liveness
    # is asserted, not speed: /healthz keeps answering while the profile is built.
    async with running_chaos({"alike_keys": 1.0}) as hostile:
        connector = {"type": "rest", "url": hostile.template, "select": "data[0]"}
        settings = settings_from(
            {"crm": connector},
            server={"deadline": 3.0},
            cache={"namespace": cache_namespace},
        )
        async with running_proxy(settings) as proxy:
            waits: list[float] = []
            building = asyncio.create_task(proxy.profile("ada@example.com"))
            while not building.done():
                started = time.perf_counter()
                status, _ = await proxy.get("/healthz")
                waits.append(time.perf_counter() - started)
                assert status == 200
                await asyncio.sleep(0.005)
            status, body = await building

    assert hostile.counts["alike_keys"] == 1
    assert waits, "the profile was built before /healthz could be asked"
    assert max(waits) < HEALTHZ_LIVENESS, f"/healthz waited {max(waits):.3f} s"
    assert status == 200
    assert body["crm_truncated"] is True
    assert body["crm_a"] == 0
    assert body["crm_a_1000"] == 999
    assert sum(key.startswith("crm_a") for key in body) == 1000


# -- the fuzz test ---------------------------------------------------------------------


@dataclass
class ThreadedProxy:
    """The proxy and a healthy upstream served by an event loop in a thread of their own."""

    app: ThreadedApp
    upstream: ChaosUpstream


@pytest.fixture(scope="module")
def threaded_proxy() -> Iterator[ThreadedProxy]:
    """One proxy for every fuzz example."""
    upstream = ChaosUpstream()

    async def build() -> Settings:
        await upstream.start()
        return settings_from(
            {"crm": {"type": "rest", "url": upstream.template, "select": "data[0]"}}
        )

    proxy = ThreadedProxy(ThreadedApp(), upstream)
    proxy.app.start(build)
    try:
        yield proxy
    finally:
        proxy.app.stop(upstream.close)


ALLOWED = {200, 400, 401, 404, 405, 413, 414, 431, None}

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
param_names = st.sampled_from(["email", "api_token", "EMAIL", "api_token[]", "x", ""]) | texts
emails = (
    st.emails()
    | texts
    | st.sampled_from(
        [
            "a@b.co/../../admin",
            "x@y.com?admin=1",
            "x@y.com#frag",
            "a@b@c.com",
            "x%2F@y.com",
            "x\r\nInjected: 1@y.com",
            "ü@bücher.de",
            "'; DROP TABLE accounts; --@x.com",
            "a" * 300 + "@example.com",
        ]
    )
)
tokens = st.sampled_from([TOKEN, "", "wrong"]) | texts
header_names = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789!#$%&'*+.^_`|~"),
    min_size=1,
    max_size=40,
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=200)
raw_fragments = st.binary(max_size=300)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A GET /profile request: fuzzed query and headers, sometimes raw bytes in the target."""
    pairs: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)) < 8:
        pairs.append(("api_token", TOKEN if draw(st.integers(0, 9)) < 7 else draw(tokens)))
    if draw(st.integers(0, 9)) < 8:
        pairs.append(("email", draw(emails)))
    extras = draw(st.lists(st.tuples(param_names, texts | emails | tokens), max_size=4))
    pairs = extras + pairs if draw(st.booleans()) else pairs + extras
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    target = b"/profile?" + query.encode("ascii")
    if draw(st.integers(0, 4)) == 0:
        target += draw(raw_fragments)
    method = draw(st.sampled_from([b"GET"] * 6 + [b"HEAD", b"POST", b"PUT", b"OPTIONS"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("X-Big", "v" * draw(st.integers(8000, 20000))))
    lines = [method + b" " + target + b" " + version, b"Host: 127.0.0.1"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests())
def test_fuzzed_profile_requests_never_get_a_5xx(
    threaded_proxy: ThreadedProxy, request: bytes
) -> None:
    before = len(threaded_proxy.upstream.seen)
    status = status_of(threaded_proxy.app.exchange(request, resets_fail=True))
    event(f"status {status}")
    assert status in ALLOWED, (status, request[:300])
    for path, query in threaded_proxy.upstream.seen[before:]:
        assert path == "/contacts", (path, request[:300])
        assert [key for key, _ in query] == ["email"], (query, request[:300])
