"""bench/soak.py, briefly: a real `serve --demo` under the mixed load gives no errors.

The soak runs as a subprocess for 20 s (8 clients, 1 worker) on a copy of the session's
demo catalog (`demo_dir`, built once per session), with an API key in that catalog, so
the server checks every request; no timing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "bench" / "soak.py"
DURATION = 20


@pytest.fixture(scope="module")
def soak_report(demo_dir, demo_store, tmp_path_factory) -> dict:
    """Run the soak once; its JSON report, with the exit status and output."""
    folder = tmp_path_factory.mktemp("soak")
    out = folder / "soak.json"
    command = [sys.executable, str(SOAK), "--duration", str(DURATION), "--clients", "8"]
    command += ["--workers", "1", "--rss-interval", "2", "--out", str(out)]
    command += ["--data-dir", str(folder / "data"), "--demo-from", str(demo_dir)]
    command += ["--with-key"]  # every request's key checked, as on a server on the internet
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=DURATION + 150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the soak and the server it started
        stdout, stderr = process.communicate()
        pytest.fail(f"soak did not finish:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert out.exists(), f"no report (exit {process.returncode}):\n{stderr[-3000:]}"
    report = json.loads(out.read_text())
    report["_run"] = {
        "exit": process.returncode,
        "seconds": time.monotonic() - started,
        "output": stdout[-3000:] + stderr[-3000:],
    }
    return report


def test_soak_has_no_errors(soak_report):
    assert soak_report["totals"]["errors"] == 0, soak_report["errors"]["first"]
    assert soak_report["passed"], (soak_report["problems"], soak_report["_run"]["output"])
    assert soak_report["_run"]["exit"] == 0, soak_report["_run"]["output"]
    assert soak_report["totals"]["requests"] > 100


def test_soak_server_logs_are_clean(soak_report):
    logs = soak_report["server"]["logs"]
    assert set(logs) == {"stderr", "stdout"}
    for name, log in logs.items():
        assert log["tracebacks"] == 0, (name, log["traceback_samples"])
        assert log["error_lines"] == 0, (name, log["error_samples"])
    assert not soak_report["server"]["died_during_run"]
    assert "demo product 'sentinel-2-l2a' ready" in Path(logs["stderr"]["path"]).read_text()


def test_soak_exercises_every_kind(soak_report):
    assert soak_report["kinds_unexercised"] == []
    for name, kind in soak_report["kinds"].items():
        assert kind["n"] >= 1, name
        assert kind["errors"] == 0, name
    # follow-ups and conditional requests really happened
    assert soak_report["kinds"]["tile_revalidate"]["statuses"].get("304", 0) >= 1
    assert soak_report["kinds"]["chip_file"]["statuses"].get("200", 0) >= 1
    assert soak_report["kinds"]["stac_next"]["statuses"].get("200", 0) >= 1
    assert soak_report["setup"]["parcels"] == 40
    assert len(soak_report["setup"]["searches"]) == 4


def test_soak_bad_requests_get_their_4xx(soak_report):
    probes = soak_report["probes"]
    assert len(probes) >= 20
    for name, probe in probes.items():
        assert probe["statuses"], f"probe {name} never sent"
        assert probe["ok"], (name, probe)
        assert all(400 <= int(status) < 500 for status in probe["statuses"]), (name, probe)
    assert soak_report["totals"]["expected_4xx_probes"] >= len(probes)
    for name in ("key_wrong", "key_wrong_in_query"):  # the keyed server refuses wrong keys
        assert set(probes[name]["statuses"]) == {"401"}, probes[name]


def test_soak_keys_are_checked_and_kept_out_of_the_report(soak_report):
    assert soak_report["config"]["api_key"] is True
    text = json.dumps(soak_report)
    assert "tsk_" not in text.replace("tsk_000000000000_not-a-key", "")
    assert "tsk_" not in Path(soak_report["server"]["logs"]["stderr"]["path"]).read_text()


def test_soak_samples_memory(soak_report):
    rss = soak_report["rss"]
    assert len(rss["samples"]) >= 5
    assert all(sample[1] > 50 for sample in rss["samples"])  # MiB of a live server
    assert "growth_pct" in rss
    assert rss["second_half"]["from_s"] == DURATION / 2 and "growth_pct" in rss["second_half"]
    assert rss["open_files"]["max"] > 0
    assert soak_report["machine"]["load_average_after"]


def test_soak_counts_server_errors_and_wrong_statuses():
    """The client's verdicts, on canned answers: 5xx, a probe answered 200, a timeout."""
    sys.path.insert(0, str(ROOT / "bench"))
    import soak

    answers = {
        "/boom": httpx.Response(500, json={"detail": "boom"}),
        "/fine": httpx.Response(200, content=b"\x89PNG", headers={"content-type": "image/png"}),
        "/empty": httpx.Response(200, content=b"", headers={"content-type": "image/png"}),
        "/nope": httpx.Response(404, json={"detail": "nope"}),
        "/notjson": httpx.Response(
            200, text="<html>", headers={"content-type": "application/geo+json"}
        ),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            raise httpx.ReadTimeout("slow", request=request)
        return answers[request.url.path]

    calls = [
        soak.Call("image_tile", "GET", "/boom", media="image/png"),
        soak.Call("image_tile", "GET", "/fine", media="image/png"),
        soak.Call("image_tile", "GET", "/empty", media="image/png"),
        soak.Call("bad_request", "GET", "/fine", expect=(400,), probe="p_ok_is_wrong"),
        soak.Call("bad_request", "GET", "/nope", expect=(404,), probe="p_404"),
        soak.Call("browse", "GET", "/slow"),
        soak.Call(
            "stac_search_get", "GET", "/notjson", media="application/geo+json", follow="stac"
        ),
    ]

    async def run() -> soak.Stats:
        stats = soak.Stats(started=time.monotonic())
        work = soak.Workload.__new__(soak.Workload)
        work.etags = []
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(transport=transport, base_url="http://soak") as client:
            for call in calls:
                await soak.send(client, call, stats, work)
        return stats

    stats = asyncio.run(run())
    assert stats.error_count == 5  # 500, empty 200, probe answered 200, timeout, not JSON
    assert stats.expected_4xx == 1
    problems = [e["problem"] for e in stats.errors]
    assert problems[0] == "server error"
    assert "0 bytes" in problems[1]
    assert problems[2].startswith("unexpected status")
    assert problems[3].startswith("timeout")
    assert problems[4].startswith("unreadable answer")
    assert stats.probes == {"p_ok_is_wrong": {"200": 1}, "p_404": {"404": 1}}


def test_soak_report_leaves_a_given_key_out():
    sys.path.insert(0, str(ROOT / "bench"))
    import soak

    argv = ["bench/soak.py", "--api-key", "tsk_a_b", "--api-key=tsk_c_d", "--duration", "9"]
    assert soak.redacted(argv) == [
        "bench/soak.py",
        "--api-key",
        "***",
        "--api-key=***",
        "--duration",
        "9",
    ]
