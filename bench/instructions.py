"""Benchmark 7: instructions per cached hit, counted by valgrind's callgrind.

CPU time on a shared (virtual) machine moves by several percent from run to run; the
number of instructions a process executes for the same requests does not. Each server
(bare aiohttp, the proxy with the memory cache, the proxy with Redis) starts under
``valgrind --tool=callgrind`` uninstrumented, is warmed, then instrumented for exactly
``REQUESTS`` cached hits sent by ``bench/loadgen.py`` (10 connections), dumped, and
uninstrumented again. Instructions per request = the collected total / ``REQUESTS``.

Under valgrind a process runs about 50 times slower, so the Redis configuration's near
copies (1 s) expire about 50 times more often per request than at full speed; its
``near_ttl`` is scaled by ``SLOWDOWN`` to keep the share of hits that read Redis the same.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REQUESTS = 2000
SLOWDOWN = 50
_TOTAL = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)


def callgrind_available() -> bool:
    """True when valgrind and callgrind_control are installed."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def valgrind_prefix(out_dir: Path, name: str) -> list[str]:
    """The command prefix starting a process under callgrind, not instrumented until asked
    (start-up then runs only a few times slower)."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir / f'callgrind.{name}'}",
    ]


def counted(pid: int, out_file: Path, drive: Callable[[], Any]) -> int:
    """Instructions process ``pid`` executed while ``drive()`` ran."""
    _control("--instr=on", pid)
    drive()
    _control("--dump", pid)
    _control("--instr=off", pid)
    time.sleep(0.5)
    dumps = sorted(out_file.parent.glob(out_file.name + "*"))
    total = 0
    for dump in dumps:
        match = _TOTAL.search(dump.read_text(errors="replace"))
        if match:
            total += int(match.group(1))
    return total


def _control(option: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120
    )


def per_request(totals: dict[str, int], requests: int = REQUESTS) -> dict[str, float]:
    """Thousands of instructions per request, per server."""
    return {name: total / requests / 1000 for name, total in totals.items()}


def job_lines(base: str, paths: Sequence[str], requests: int = REQUESTS) -> list[str]:
    """``requests`` URLs cycling over ``paths``."""
    return [base + paths[i % len(paths)] for i in range(requests)]
