"""Run every benchmark of the proxy and print one table: each figure, its target, its baseline.

    .venv/bin/python bench/run.py            # the full run (about 3 minutes)
    .venv/bin/python bench/run.py --quick    # shorter runs, fewer requests (about 1 minute)

Every server is a separate process on 127.0.0.1: the proxy is ``python -m aggregator serve``
with a generated config, the baselines and upstreams come from ``bench/servers.py``. Load
comes from ``wrk`` when it is installed (else from ``bench/loadgen.py``, a separate Python
process: the output says which). With two or more cores and ``taskset``, servers under test
run on core 0 and the load generator and upstreams on core 1, baseline and proxy alike.
Redis is ``$REDIS_URL`` or redis://127.0.0.1:6379/0, under a namespace of its own.
Targets are checked as ratios to baselines measured in the same run, never as absolute times
across machines (the latency targets from the issue are shown beside their figures).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import instructions
import orjson
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
TOKEN = "bench-token-" + uuid.uuid4().hex[:12]
SLOWEST_UPSTREAM_MS = 80.0
FANOUT_DELAYS = "0.02,0.05,0.08"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPU_TARGET = 1.10


@dataclass
class Row:
    """One line of the result table."""

    bench: str
    measure: str
    result: str
    target: str = ""
    baseline: str = ""
    ratio: str = ""
    met: bool | None = None


@dataclass
class Profile:
    """Parameters that --quick shortens."""

    cached_seconds: float
    warm_seconds: float
    cold_requests: int
    memory_requests: int
    memory_emails: int
    profile_seconds: float
    rounds: int
    round_seconds: float


FULL = Profile(10.0, 2.0, 2000, 100_000, 50_000, 8.0, 10, 3.0)
QUICK = Profile(3.0, 1.0, 500, 20_000, 15_000, 3.0, 4, 2.0)


class Bench:
    """Starts and stops the processes of one run; knows where load comes from."""

    def __init__(self, pin: bool, work: Path) -> None:
        self.work = work
        self.pin = pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
        self.wrk = shutil.which("wrk")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.namespace = "bench-" + uuid.uuid4().hex[:10]
        self.redis_ok = self._redis_ping()
        self._files = 0

    # -- processes ----------------------------------------------------------------------

    def _cores(self, core: int | None) -> list[str]:
        return ["taskset", "-c", str(core)] if self.pin and core is not None else []

    def spawn(self, cmd: Sequence[str], core: int | None, *, stdout_pipe: bool = False) -> Any:
        """Start a process (on one core when pinning); stderr goes to a log file."""
        self._files += 1
        log = (self.work / f"proc{self._files}.log").open("wb")
        proc = subprocess.Popen(
            [*self._cores(core), *cmd],
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGINT, then SIGKILL if it lingers."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        """Stop everything this run started."""
        for proc in list(reversed(self.procs)):
            self.stop(proc)

    def start_script(
        self, *args: str, core: int | None = 1, wrap: Sequence[str] = ()
    ) -> tuple[Any, list[int]]:
        """Run bench/servers.py with ``args``; its process and the ports it listens on."""
        proc = self.spawn([*wrap, PY, str(HERE / "servers.py"), *args], core, stdout_pipe=True)
        line = proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"servers.py {args[0]} did not start (see {self.work})")
        return proc, [int(p) for p in line.split()[1].split(",")]

    def write_config(
        self,
        upstream_ports: Sequence[int],
        cache_url: str,
        server: dict[str, Any] | None = None,
        **cache: Any,
    ) -> Path:
        """A proxy config: one rest connector per upstream port; ``server`` adds settings
        (with ``access_log`` on, lines are written at INFO to the process's log file)."""
        connectors = {
            f"src{i}": {
                "type": "rest",
                "url": f"http://127.0.0.1:{port}/contacts?email={{email}}",
                "select": "data[0]",
                "timeout": 2.0,
            }
            for i, port in enumerate(upstream_ports)
        }
        document = {
            "server": {
                "host": "127.0.0.1",
                "port": 8080,
                "deadline": 3.0,
                "drain_timeout": 1,
                **(server or {}),
            },
            "auth": {"api_tokens": [TOKEN]},
            "cache": {"url": cache_url, "namespace": self.namespace, **cache},
            "logging": {"level": "INFO" if (server or {}).get("access_log") else "WARNING"},
            "connectors": connectors,
        }
        self._files += 1
        path = self.work / f"config{self._files}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def start_proxy(
        self,
        config: Path,
        core: int | None = 0,
        wrap: Sequence[str] = (),
        args: Sequence[str] = (),
        start_timeout: float = 20.0,
    ) -> tuple[Any, int]:
        """``python -m aggregator serve`` on a free port; waits until /healthz answers."""
        port = free_port()
        cmd = [*wrap, PY, "-m", "aggregator", "serve", "--config", str(config), "--port", str(port)]
        proc = self.spawn([*cmd, *args], core)
        wait_healthy(proc, port, start_timeout)
        return proc, port

    # -- load ---------------------------------------------------------------------------

    @property
    def loader(self) -> str:
        """Which tool drives the throughput runs."""
        return "wrk 1 thread" if self.wrk else "bench/loadgen.py (Python; wrk not found)"

    def throughput(
        self, port: int, paths: Sequence[str], seconds: float, *, threads: int = 1
    ) -> dict[str, float]:
        """Closed-loop load at 50 connections for ``seconds``: rps, p50_ms, p99_ms, errors.

        ``threads`` > 1: wrk's threads, not pinned (for the runs whose server uses every core).
        """
        if self.wrk is None:
            urls = [f"http://127.0.0.1:{port}{p}" for p in paths]
            res = self.loadgen(urls, 50, seconds=seconds)
            bad = sum(v for k, v in res["statuses"].items() if k != "200") + sum(
                res["errors"].values()
            )
            return {
                "requests": res["requests"],
                "rps": res["rps"],
                "p50_ms": res["p50_ms"],
                "p99_ms": res["p99_ms"],
                "errors": bad,
            }
        paths_file = self.write_lines(paths)
        cmd = [
            *(self._cores(1) if threads == 1 else []),
            self.wrk,
            f"-t{threads}",
            "-c50",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "-s",
            str(HERE / "paths.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(paths_file),
        ]
        out = subprocess.run(cmd, capture_output=True, check=True, text=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
        res = orjson.loads(line.removeprefix("WRKJSON "))
        errors = sum(v for k, v in res.items() if k.startswith("errors_"))
        return {
            "requests": res["requests"],
            "rps": res["requests"] / (res["duration_us"] / 1e6),
            "p50_ms": res["p50_us"] / 1000,
            "p99_ms": res["p99_us"] / 1000,
            "errors": errors,
        }

    def loadgen(
        self,
        jobs: Sequence[str],
        concurrency: int,
        *,
        seconds: float = 0.0,
        parallel: bool = False,
        distinct: str | None = None,
    ) -> dict[str, Any]:
        """Run bench/loadgen.py on core 1 over ``jobs`` (tab-separated URLs per job)."""
        cmd = [
            *self._cores(1),
            PY,
            str(HERE / "loadgen.py"),
            str(self.write_lines(jobs)),
            "--concurrency",
            str(concurrency),
        ]
        if seconds:
            cmd += ["--seconds", str(seconds)]
        if parallel:
            cmd.append("--parallel")
        if distinct:
            cmd += ["--distinct", distinct]
        out = subprocess.run(cmd, capture_output=True, check=True, text=True, cwd=ROOT).stdout
        result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
        return result

    def write_lines(self, lines: Sequence[str]) -> Path:
        """A temp file holding ``lines``."""
        self._files += 1
        path = self.work / f"lines{self._files}.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- redis --------------------------------------------------------------------------

    def _redis_ping(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=1)
            ok = bool(client.ping())
            client.close()
            return ok
        except (redis.RedisError, OSError):
            return False

    def redis_cleanup(self) -> None:
        """Delete every key this run wrote."""
        if not self.redis_ok:
            return
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        keys = list(client.scan_iter(f"{self.namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


# -- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """A plain GET (status, body), for warming and checks."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    """Poll /healthz until it answers; fail if the process dies or ``timeout`` s pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode}")
        try:
            if http_get(f"http://127.0.0.1:{port}/healthz", 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the proxy did not become healthy in {timeout:g} s")


def profile_path(email: str) -> str:
    """The request path Groove would send for ``email``."""
    return "/profile?" + urlencode({"email": email, "api_token": TOKEN})


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every figure."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_ms(value: float) -> str:
    """Milliseconds, with sensible precision."""
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def machine() -> list[str]:
    """nproc, CPU model, Python, kernel."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"nproc {os.cpu_count()}, CPU {model}",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Linux {platform.release()}",
    ]


# -- the benchmarks -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (and its live child processes) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (gunicorn's workers under their arbiter)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(x) for x in (task / "children").read_text().split()]
    return found


@dataclass
class Measured:
    """Load runs against one server: throughput and CPU per request of each run."""

    runs: list[dict[str, float]]

    def median(self, key: str) -> float:
        """The median of ``key`` over the runs."""
        return statistics.median(run[key] for run in self.runs)

    def paired(self, baseline: Measured, key: str) -> float:
        """The median over rounds of this run's ``key`` divided by the baseline's run of the
        same round (runs next to each other share the machine's passing load)."""
        pairs = zip(self.runs, baseline.runs, strict=True)
        return statistics.median(run[key] / base[key] for run, base in pairs)

    def spread(self, key: str, fmt: str) -> str:
        """``min-max`` of ``key`` over the runs, formatted."""
        values = [run[key] for run in self.runs]
        return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def measure(
    bench: Bench, pid: int, port: int, paths: Sequence[str], seconds: float
) -> dict[str, float]:
    """One load run: throughput, latency and CPU microseconds per request of process ``pid``."""
    before = cpu_seconds(pid)
    result = bench.throughput(port, paths, seconds)
    used = cpu_seconds(pid) - before
    result["cpu_us"] = 1e6 * used / max(result["requests"], 1)
    return result


def bench_cached(bench: Bench, conf: Profile) -> list[Row]:
    """1. Cached hits at 50 connections: CPU per request and throughput of the proxy (memory
    cache, Redis cache, memory cache with the access log) against a bare aiohttp handler
    answering the same bytes, in interleaved rounds on the same core."""
    upstream, ports = bench.start_script("upstreams", "0,0,0")
    emails = [f"cached-{i}@example.com" for i in range(100)]
    paths = [profile_path(e) for e in emails]
    body = b""
    caches: list[tuple[str, str, dict[str, Any]]] = [("memory", "memory://", {})]
    if bench.redis_ok:
        caches.append(("redis", bench.redis_url, {}))
    caches.append(("memory + access log", "memory://", {"access_log": True}))
    servers: dict[str, tuple[Any, int]] = {}
    for kind, url, server in caches:
        config = bench.write_config(ports, url, server=server)
        servers[kind] = bench.start_proxy(config)
        for path in paths:
            status, body = http_get(f"http://127.0.0.1:{servers[kind][1]}{path}")
            if status != 200:
                raise RuntimeError(f"warming the {kind} proxy: HTTP {status}")
    body_file = bench.work / "body.json"
    body_file.write_bytes(body)
    bare, (bare_port,) = bench.start_script("bare", str(body_file), core=0)
    control, (control_port,) = bench.start_script("bare", str(body_file), core=0)
    # A second, identical bare server measured like the others: how far two runs of the
    # very same code drift apart on this machine (the resolution of every ratio above).
    servers = {"bare": (bare, bare_port), **servers, "bare, second copy": (control, control_port)}
    for _, port in servers.values():
        bench.throughput(port, paths, conf.warm_seconds)
    measured: dict[str, Measured] = {kind: Measured([]) for kind in servers}
    for _ in range(conf.rounds):
        for kind, (proc, port) in servers.items():
            measured[kind].runs.append(measure(bench, proc.pid, port, paths, conf.round_seconds))
    for proc, _ in servers.values():
        bench.stop(proc)
    bench.stop(upstream)
    return cached_rows(measured, len(body), conf.rounds)


def cached_rows(measured: dict[str, Measured], size: int, rounds: int) -> list[Row]:
    """Benchmark 1's rows: CPU per request (the headline), throughput, latency."""
    bare = measured.pop("bare")
    bare_cpu, bare_rps = bare.median("cpu_us"), bare.median("rps")
    spread = f"median of {rounds} runs"
    rows = [
        Row(
            "1 cached hit",
            f"bare aiohttp, {size} B JSON: CPU per request",
            f"{bare_cpu:.1f} us ({bare.spread('cpu_us', '.1f')})",
            "baseline",
            spread,
        ),
        Row(
            "1 cached hit",
            "bare aiohttp: throughput, p50 / p99",
            f"{bare_rps:,.0f} req/s ({bare.spread('rps', ',.0f')})",
            "baseline",
            f"{fmt_ms(bare.median('p50_ms'))} / {fmt_ms(bare.median('p99_ms'))}",
        ),
    ]
    for kind, runs in measured.items():
        cpu, rps = runs.median("cpu_us"), runs.median("rps")
        errors = sum(run["errors"] for run in runs.runs)
        flagged = f" ({errors:.0f} errors!)" if errors else ""
        headline = kind in ("memory", "redis")
        other = "noise of this machine (A/A)" if kind.startswith("bare") else "info"
        rows += [
            Row(
                "1 cached hit",
                f"{kind}: CPU per request{flagged}",
                f"{cpu:.1f} us ({runs.spread('cpu_us', '.1f')})",
                f"<= {CPU_TARGET:.2f}x bare" if headline else other,
                f"{bare_cpu:.1f} us",
                f"{cpu / bare_cpu:.2f}x (by round {runs.paired(bare, 'cpu_us'):.2f}x)",
                cpu <= CPU_TARGET * bare_cpu and not errors if headline else None,
            ),
            Row(
                "1 cached hit",
                f"{kind}: throughput",
                f"{rps:,.0f} req/s ({runs.spread('rps', ',.0f')})",
                "info",
                f"{bare_rps:,.0f} req/s",
                f"{rps / bare_rps:.2f}x",
            ),
            Row(
                "1 cached hit",
                f"{kind}: p50 / p99",
                f"{fmt_ms(runs.median('p50_ms'))} / {fmt_ms(runs.median('p99_ms'))}",
                "p99 < 5 ms" if headline else "",
                f"{fmt_ms(bare.median('p50_ms'))} / {fmt_ms(bare.median('p99_ms'))}",
                "",
                runs.median("p99_ms") < 5.0 if headline else None,
            ),
        ]
    if "memory" in measured and "redis" in measured:
        memory, redis = measured["memory"].median("cpu_us"), measured["redis"].median("cpu_us")
        rows.append(
            Row(
                "1 cached hit",
                "redis vs memory: CPU per request",
                f"{redis:.1f} us vs {memory:.1f} us",
                "within 3%",
                "",
                f"{redis / memory:.2f}x",
                abs(redis / memory - 1) <= 0.03,
            )
        )
    else:
        rows.append(Row("1 cached hit", "redis cache", "skipped: no Redis reachable"))
    return rows


def bench_instructions(bench: Bench) -> list[Row]:
    """7. Instructions per cached hit under callgrind: bare, memory cache, Redis cache."""
    if not instructions.callgrind_available():
        return [Row("7 instructions", "cached hit", "skipped: valgrind not installed")]
    upstream, ports = bench.start_script("upstreams", "0,0,0")
    paths = [profile_path(f"counted-{i}@example.com") for i in range(100)]
    caches: list[tuple[str, str, dict[str, Any]]] = [("memory", "memory://", {})]
    if bench.redis_ok:
        caches.append(("redis", bench.redis_url, {"near_ttl": instructions.SLOWDOWN * 1.0}))
    totals: dict[str, int] = {}
    body = b""

    def count(name: str, proc: Any, port: int) -> None:
        nonlocal body
        base = f"http://127.0.0.1:{port}"
        for path in paths:
            status, body = http_get(base + path, timeout=60)
            if status != 200:
                raise RuntimeError(f"warming {name} under valgrind: HTTP {status}")
        bench.loadgen(instructions.job_lines(base, paths, 500), 10)
        out = bench.work / f"callgrind.{name}"
        jobs = instructions.job_lines(base, paths)
        totals[name] = instructions.counted(proc.pid, out, lambda: bench.loadgen(jobs, 10))
        bench.stop(proc)

    for kind, url, cache in caches:
        wrap = instructions.valgrind_prefix(bench.work, kind)
        config = bench.write_config(ports, url, **cache)
        count(kind, *bench.start_proxy(config, wrap=wrap, start_timeout=300))
    bench.stop(upstream)
    body_file = bench.work / "counted-body.json"
    body_file.write_bytes(body)
    wrap = instructions.valgrind_prefix(bench.work, "bare")
    bare, (bare_port,) = bench.start_script("bare", str(body_file), core=0, wrap=wrap)
    wait_healthy(bare, bare_port, 300)
    count("bare", bare, bare_port)
    per = instructions.per_request(totals)
    rows = [
        Row(
            "7 instructions",
            f"bare aiohttp: per request ({instructions.REQUESTS} hits)",
            f"{per['bare']:,.1f} k",
            "baseline",
        )
    ]
    for kind, *_ in caches:
        ratio = per[kind] / per["bare"]
        rows.append(
            Row(
                "7 instructions",
                f"{kind} cache: per request",
                f"{per[kind]:,.1f} k",
                f"<= {CPU_TARGET:.2f}x bare",
                f"{per['bare']:,.1f} k",
                f"{ratio:.2f}x",
                ratio <= CPU_TARGET,
            )
        )
    return rows


def bench_workers(bench: Bench, conf: Profile) -> list[Row]:
    """6. Cached hits with ``serve --workers 1`` and ``--workers 2``, nothing pinned.

    Every process (the workers, wrk with 2 threads, the upstream) floats over all cores,
    so with 2 cores the load generator takes a share the workers cannot use.
    """
    upstream, ports = bench.start_script("upstreams", "0,0,0", core=None)
    emails = [f"workers-{i}@example.com" for i in range(100)]
    paths = [profile_path(e) for e in emails]
    caches = [("memory", "memory://")]
    if bench.redis_ok:
        caches.append(("redis", bench.redis_url))
    results: dict[tuple[str, int], dict[str, float]] = {}
    for kind, url in caches:
        for workers in (1, 2):
            config = bench.write_config(ports, url)
            proxy, port = bench.start_proxy(config, core=None, args=["--workers", str(workers)])
            for path in paths:  # warms Redis; each worker warms its own memory cache below
                http_get(f"http://127.0.0.1:{port}{path}")
            bench.throughput(port, paths, conf.warm_seconds, threads=2)
            before = cpu_seconds(proxy.pid)  # the workers and their parent
            result = bench.throughput(port, paths, conf.cached_seconds, threads=2)
            result["cpu_us"] = 1e6 * (cpu_seconds(proxy.pid) - before) / max(result["requests"], 1)
            results[kind, workers] = result
            bench.stop(proxy)
    bench.stop(upstream)
    rows = []
    for kind, _ in caches:
        one, two = results[kind, 1], results[kind, 2]
        for workers, res in ((1, one), (2, two)):
            errors = f" ({res['errors']:.0f} errors!)" if res["errors"] else ""
            rows.append(
                Row(
                    "6 workers",
                    f"{kind} cache, --workers {workers}: throughput{errors}",
                    f"{res['rps']:,.0f} req/s",
                    "info" if workers == 1 else "> 1 worker",
                    "" if workers == 1 else f"{one['rps']:,.0f} req/s",
                    "" if workers == 1 else f"{res['rps'] / one['rps']:.2f}x",
                    None if workers == 1 else res["rps"] > one["rps"] and not res["errors"],
                )
            )
            rows.append(
                Row(
                    "6 workers",
                    f"{kind} cache, --workers {workers}: p50 / p99, CPU per request",
                    f"{fmt_ms(res['p50_ms'])} / {fmt_ms(res['p99_ms'])}, {res['cpu_us']:.1f} us",
                )
            )
    return rows


def bench_cold(bench: Bench, conf: Profile, ports: list[int], proxy_port: int) -> list[Row]:
    """2. Cold fan-out over upstreams answering after 20/50/80 ms, 50 concurrent."""
    run = uuid.uuid4().hex[:6]
    n = conf.cold_requests

    def emails(tag: str, count: int) -> list[str]:
        return [f"{tag}-{run}-{i}@example.com" for i in range(count)]

    warm = [f"http://127.0.0.1:{proxy_port}{profile_path(e)}" for e in emails("warm", 100)]
    bench.loadgen(warm, 50)
    cold = bench.loadgen(
        [f"http://127.0.0.1:{proxy_port}{profile_path(e)}" for e in emails("cold", n)], 50
    )

    def chain(email: str) -> str:
        quoted = quote(email, safe="")
        return "\t".join(f"http://127.0.0.1:{p}/contacts?email={quoted}" for p in ports)

    light = bench.loadgen(
        [f"http://127.0.0.1:{proxy_port}{profile_path(e)}" for e in emails("light", n // 4)], 10
    )
    sequential = bench.loadgen([chain(e) for e in emails("seq", n)], 50)
    parallel = bench.loadgen([chain(e) for e in emails("par", n)], 50, parallel=True)
    bad = n - cold["statuses"].get("200", 0)
    over50 = cold["p50_ms"] - SLOWEST_UPSTREAM_MS
    over99 = cold["p99_ms"] - SLOWEST_UPSTREAM_MS
    floor50 = parallel["p50_ms"] - SLOWEST_UPSTREAM_MS
    floor99 = parallel["p99_ms"] - SLOWEST_UPSTREAM_MS
    speedup = sequential["p50_ms"] / cold["p50_ms"]
    delays = [float(d) * 1000 for d in FANOUT_DELAYS.split(",")]
    ideal = sum(delays) / max(delays)
    note = f" ({bad} non-200!)" if bad else ""
    return [
        Row(
            "2 cold fan-out",
            f"p50 - 80 ms, {n} distinct emails{note}",
            fmt_ms(over50),
            "< 2 ms",
            f"direct parallel calls: {fmt_ms(floor50)}",
            f"{over50 - floor50:+.2f} ms vs direct",
            over50 < 2.0 and not bad,
        ),
        Row(
            "2 cold fan-out",
            "p99 - 80 ms",
            fmt_ms(over99),
            "< 10 ms",
            f"direct parallel calls: {fmt_ms(floor99)}",
            f"{over99 - floor99:+.2f} ms vs direct",
            over99 < 10.0,
        ),
        Row(
            "2 cold fan-out",
            "p50 / p99 - 80 ms at 10 concurrent (info)",
            f"{fmt_ms(light['p50_ms'] - SLOWEST_UPSTREAM_MS)} / "
            f"{fmt_ms(light['p99_ms'] - SLOWEST_UPSTREAM_MS)}",
            "",
            "",
            "",
        ),
        Row(
            "2 cold fan-out",
            "p50 latency vs sequential calls",
            fmt_ms(cold["p50_ms"]),
            ">= 2.5x faster",
            f"sequential: {fmt_ms(sequential['p50_ms'])}",
            f"{speedup:.2f}x (ideal {sum(delays):.0f}/{max(delays):.0f} = {ideal:.2f}x)",
            speedup >= 2.5,
        ),
    ]


def upstream_calls(ports: Sequence[int], email: str) -> list[int]:
    """How many times each upstream was asked for ``email``."""
    counts = []
    for port in ports:
        _, body = http_get(f"http://127.0.0.1:{port}/calls?email={quote(email, safe='')}")
        counts.append(int(orjson.loads(body)["calls"]))
    return counts


def stampede_row(
    bench: Bench, label: str, ports: list[int], proxy_ports: Sequence[int], tag: str
) -> Row:
    """500 concurrent requests for one cold email over the given proxies."""
    email = f"stampede-{tag}-{uuid.uuid4().hex[:6]}@example.com"
    path = profile_path(email)
    jobs = [f"http://127.0.0.1:{proxy_ports[i % len(proxy_ports)]}{path}" for i in range(500)]
    res = bench.loadgen(jobs, 500, distinct="profile_fetched_at")
    counts = upstream_calls(ports, email)
    ok = res["statuses"].get("200", 0)
    return Row(
        "3 stampede",
        f"{label}: calls per connector",
        " / ".join(map(str, counts)),
        "1 each",
        "naive: 500 each",
        f"{ok}/500 HTTP 200, {res['distinct']} distinct fetch",
        all(c == 1 for c in counts) and ok == 500,
    )


def bench_stampede(bench: Bench, ports: list[int], memory_port: int) -> list[Row]:
    """3. Stampede: one process (memory, Redis) and two processes sharing Redis."""
    rows = [stampede_row(bench, "1 process, memory cache", ports, [memory_port], "mem")]
    if not bench.redis_ok:
        rows.append(Row("3 stampede", "Redis", f"skipped: no Redis at {bench.redis_url}"))
        return rows
    config = bench.write_config(ports, bench.redis_url)
    first, port_a = bench.start_proxy(config)
    second, port_b = bench.start_proxy(config)
    for port in (port_a, port_b):
        bench.loadgen([f"http://127.0.0.1:{port}{profile_path('warm-st@example.com')}"], 1)
    rows.append(stampede_row(bench, "1 process, Redis cache", ports, [port_a], "one"))
    rows.append(stampede_row(bench, "2 processes, shared Redis", ports, [port_a, port_b], "two"))
    bench.stop(second)
    bench.stop(first)
    return rows


def bench_memory(bench: Bench, conf: Profile) -> list[Row]:
    """4. RSS over many requests and distinct emails, memory cache at its default bound."""
    upstream, ports = bench.start_script("upstreams", "0")
    proxy, port = bench.start_proxy(bench.write_config(ports, "memory://"))
    rng = random.Random(5)
    emails = [f"mem-{i}@example.com" for i in range(conf.memory_emails)]
    order: list[str] = []
    while len(order) < conf.memory_requests:
        shuffled = emails[:]
        rng.shuffle(shuffled)
        order += shuffled
    order = order[: conf.memory_requests]
    samples = [(0, rss_mb(proxy.pid))]
    chunk = conf.memory_requests // 5
    statuses: Counter[str] = Counter()
    for start in range(0, conf.memory_requests, chunk):
        part = order[start : start + chunk]
        res = bench.loadgen([f"http://127.0.0.1:{port}{profile_path(e)}" for e in part], 50)
        statuses.update(res["statuses"])
        samples.append((start + len(part), rss_mb(proxy.pid)))
    bench.stop(proxy)
    bench.stop(upstream)
    final = samples[-1][1]
    # warm-up: until the LRU is full (default bound 10,000), with some margin
    warm_index = next(
        (i for i, (done, _) in enumerate(samples) if done >= 12_000), len(samples) - 1
    )
    after_warm = samples[warm_index][1]
    growth = final - after_warm
    trail = " -> ".join(f"{mb:.0f}" for _, mb in samples)
    bad = conf.memory_requests - statuses.get("200", 0)
    note = f", {bad} non-200!" if bad else ""
    return [
        Row(
            "4 memory",
            f"RSS after {conf.memory_requests:,} req / {conf.memory_emails:,} emails{note}",
            f"{final:.0f} MB",
            "< 150 MB",
            f"idle after start: {samples[0][1]:.0f} MB",
            f"{final / samples[0][1]:.2f}x idle",
            final < 150 and not bad,
        ),
        Row(
            "4 memory",
            f"RSS every {chunk:,} req (MB)",
            trail,
            "flat after warm-up",
            f"after {samples[warm_index][0]:,} req: {after_warm:.0f} MB",
            f"{growth:+.1f} MB since",
            growth <= max(5.0, 0.05 * after_warm),
        ),
    ]


def bench_profile(bench: Bench, conf: Profile, cold: bool = False) -> list[str]:
    """5. py-spy over the proxy under load (cached hits, or cold fan-out): the top frames."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        return ["py-spy not installed (.venv/bin/pip install py-spy): no profile"]
    upstream, ports = bench.start_script("upstreams", FANOUT_DELAYS if cold else "0,0,0")
    out = bench.work / f"profile-{'cold' if cold else 'cached'}.txt"
    # py-spy starts the proxy itself: attaching to a running process is refused here
    wrap = [pyspy, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(out), "--"]
    spy, port = bench.start_proxy(bench.write_config(ports, "memory://"), wrap=wrap)
    if cold:
        run = uuid.uuid4().hex[:6]
        urls = [
            f"http://127.0.0.1:{port}{profile_path(f'prof-{run}-{i}@example.com')}"
            for i in range(conf.cold_requests)
        ]
        bench.loadgen(urls, 50)
    else:
        paths = [profile_path(f"cached-{i}@example.com") for i in range(100)]
        for path in paths:
            http_get(f"http://127.0.0.1:{port}{path}")
        bench.throughput(port, paths, conf.profile_seconds)
    bench.stop(spy)
    bench.stop(upstream)
    if not out.exists():
        return ["py-spy wrote no profile (ptrace not permitted?)"]
    return summarize_profile(out.read_text())


def summarize_profile(raw: str, top: int = 12) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    engine = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "importlib" in stack:  # start-up, not serving
            continue
        count = int(count_text)
        total += count
        if any(
            ("aggregator/" in f or "connectors/" in f)
            and "cli.py" not in f
            and "__main__.py" not in f
            for f in stack.split(";")
        ):
            engine += count
        frames = [short_frame(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples of the server's Python stacks (250 Hz, non-blocking)"]
    lines += ["(run_app self time = the uvloop loop and C code called from it)"]
    lines += [
        f"{100 * engine / total:.1f}% of samples are inside the proxy's own code "
        "(aggregator/, connectors/); the rest is aiohttp, uvloop and the socket",
        "",
        "self:",
    ]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive:"]
    shared = [(f, c) for f, c in inclusive.most_common() if c < 0.99 * total]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in shared[:top]]
    return lines


def short_frame(frame: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py:12)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


# -- output ---------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """A Markdown table of the rows."""
    head = ["benchmark", "measure", "result", "target", "baseline (same run)", "ratio", "met"]
    body = [
        [
            r.bench,
            r.measure,
            r.result,
            r.target,
            r.baseline,
            r.ratio,
            "" if r.met is None else ("yes" if r.met else "NO"),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A temp directory for configs, path lists and logs."""
    with tempfile.TemporaryDirectory(prefix="aggregator-bench-") as path:
        yield Path(path)


def main() -> int:
    """Run the benchmarks and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer requests")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--only",
        default="1,2,3,4,5,6,7",
        help="comma-separated benchmark numbers to run (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved load runs per server in benchmark 1 (default 10, --quick 4)",
    )
    args = parser.parse_args()
    conf = QUICK if args.quick else FULL
    if args.rounds:
        conf = dataclasses.replace(conf, rounds=args.rounds)
    only = {int(x) for x in args.only.split(",")}
    with workspace() as work:
        bench = Bench(pin=not args.no_pin, work=work)
        print("# aggregator benchmarks" + (" (--quick)" if args.quick else ""))
        for text in machine():
            print(f"- {text}")
        print(f"- load: {bench.loader}; latency runs: bench/loadgen.py")
        pinning = "proxy/bare on core 0, load + upstreams on core 1 (taskset)"
        print(f"- pinning: {pinning if bench.pin else 'none'}")
        cache = bench.redis_url.split("@")[-1] if bench.redis_ok else "unreachable"
        print(f"- redis: {cache}")
        print(f"- load average before the run: {load_average()}")
        print(flush=True)
        rows: list[Row] = []
        profile: list[str] = []
        started = time.monotonic()
        try:
            if 1 in only:
                rows += bench_cached(bench, conf)
            if only & {2, 3}:
                upstream, ports = bench.start_script("upstreams", FANOUT_DELAYS)
                proxy, port = bench.start_proxy(bench.write_config(ports, "memory://"))
                if 2 in only:
                    rows += bench_cold(bench, conf, ports, port)
                if 3 in only:
                    rows += bench_stampede(bench, ports, port)
                bench.stop(proxy)
                bench.stop(upstream)
            if 4 in only:
                rows += bench_memory(bench, conf)
            if 5 in only:
                profile = ["### cached hits (memory cache, 50 connections)", ""]
                profile += bench_profile(bench, conf)
                profile += ["", "### cold fan-out (20/50/80 ms upstreams, 50 concurrent)", ""]
                profile += bench_profile(bench, conf, cold=True)
            if 6 in only:
                rows += bench_workers(bench, conf)
            if 7 in only:
                rows += bench_instructions(bench)
        finally:
            bench.stop_all()
            bench.redis_cleanup()
        print(f"- load average after the run: {load_average()}\n")
        print(table(rows))
        met = [r.met for r in rows if r.met is not None]
        print(f"\n{sum(met)}/{len(met)} targets met in {time.monotonic() - started:.0f} s")
        if profile:
            print("\n## profiles (py-spy, Python frames)\n")
            print("\n".join(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
