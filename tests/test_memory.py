"""Freed memory goes back to the system: glibc arenas limited, malloc_trim on a timer.

The allocator checks run in a fresh Python process each, so what this test process has
allocated before does not blur the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tileserver import memory
from tileserver.app import create_app
from tileserver.catalog.sqlite import SQLiteStore

pytestmark = pytest.mark.skipif(memory._libc() is None, reason="not glibc")


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=True,
    )


ARENAS = """
import sys, threading
from tileserver import memory
limited = memory.limit_arenas({count})
def work():
    kept = [bytearray(4096) for _ in range(2000)]  # malloc, not pymalloc: the thread's arena
    barrier.wait()
barrier = threading.Barrier(8)
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(limited)
memory._libc().malloc_stats()  # one 'Arena N:' block per arena, on stderr
"""


@pytest.mark.parametrize("count, most", [(2, 2), (None, os.cpu_count()), (0, 9)])
def test_threads_share_the_limited_arenas(count, most):
    """8 threads allocating at once: at most `count` arenas (None: one per CPU; 0: glibc's
    default, 8 per CPU, so here one per thread and the main one)."""
    done = run(ARENAS.format(count=count))
    arenas = done.stderr.count("Arena ")
    assert done.stdout.strip() == str(count != 0)
    if count != 0:
        assert 1 <= arenas <= most
    else:
        assert arenas > min(8, 8 * os.cpu_count()) // 2  # threads get arenas of their own


def test_malloc_arena_max_in_the_environment_wins():
    done = run(ARENAS.format(count=2), env={"MALLOC_ARENA_MAX": "4"})
    assert done.stdout.strip() == "False"
    assert done.stderr.count("Arena ") <= 4


TRIM = """
import threading
from tileserver import memory
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) // 1024
kept = []
def work():
    blocks = [bytearray(8192) for _ in range(40000)]  # ~320 MiB in 8 KiB blocks
    kept.extend(blocks[::64])  # a survivor every 64 blocks keeps the arena from shrinking
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
before = rss()
trimmed = memory.trim()
print(before, rss(), trimmed)
"""


def test_trim_hands_freed_memory_back():
    """4 threads free ~1.2 GiB in arena holes that their top never reaches: glibc keeps it
    (no MALLOC_TRIM_THRESHOLD can return it) until malloc_trim gives the free pages back."""
    before, after, trimmed = run(TRIM, env={"MALLOC_ARENA_MAX": "8"}).stdout.split()
    before, after = int(before), int(after)
    kept_mib = 4 * (40000 // 64) * 8192 / 2**20  # ~20 MiB survive
    assert before > 600, before  # the freed blocks are still counted
    assert trimmed == "True"
    assert after < before - 500
    assert after < 200 + kept_mib


def test_the_server_trims_on_its_timer(tmp_path, monkeypatch):
    calls: list[float] = []
    monkeypatch.setattr(memory, "trim", lambda: calls.append(time.monotonic()) or True)
    settings = make_settings(tmp_path, memory_trim_seconds=0.05)
    store = SQLiteStore(tmp_path / "catalog.db")
    with TestClient(create_app(settings, store=store)) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(0.5)
    stopped = len(calls)
    assert stopped >= 3
    time.sleep(0.2)
    assert len(calls) == stopped  # the timer ends with the app
    store.close()
