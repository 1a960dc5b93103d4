"""Where a tile's time goes: py-spy samples of a loaded tileserver, grouped by stage.

    python bench/profile_tiles.py --out DIR                      # this checkout
    python bench/profile_tiles.py --out DIR --source OTHER_TREE  # e.g. a git worktree of
                                                                 # an older revision

Uses the data and catalog of bench/vs_titiler.py in `--out` (made if missing). Starts
`uvicorn tileserver.main:app` from `--source` (1 worker, tile cache off, vs_titiler's GDAL
environment), drives it with 4 clients over the uncached PNG tile list, and records it
twice with py-spy (`--rate 200`): every thread's active samples (where CPU time goes), then
`--gil` (what holds the interpreter lock, which one worker's threads share). Samples are
put in the first stage whose frame they pass through, innermost first:

    encode      tileserver/render/pipeline.py encode, rio_tiler.utils.render, Pillow
    open        rasterio.open, Reader construction
    read        rio-tiler's tile/part/read (GDAL warp and decode included)
    render      tileserver/render/pipeline.py, scaling.py (levels, band math, scaling)
    catalog     tileserver/catalog (image and product lookups)
    http        everything else inside a request (uvicorn, starlette, FastAPI, our routes)

Needs py-spy (`pip install py-spy`) and the right to trace a child process (root here).
Prints a table and writes --json (default bench/profile_tiles.json, keyed by revision).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from vs_titiler import (  # noqa: E402
    Service,
    TileserverPaths,
    catalog_url,
    drive,
    ingest,
    make_data,
    make_tile_lists,
    single_image_id,
    tileserver_env,
)

# (stage, markers): a frame whose text holds a marker belongs to the stage
STAGES = [
    (
        "encode",
        ("encode_image (tileserver/", "encode (tileserver/", "render (rio_tiler/utils.py", "PIL/"),
    ),
    ("open", ("rasterio/__init__.py", "Reader.__init__", "__attrs_post_init__")),
    ("read", ("rio_tiler/reader.py", "rio_tiler/io/rasterio.py")),
    ("render", ("render/pipeline.py",)),
    ("catalog", ("tileserver/catalog/",)),
]


def stage_of(frames: list[str]) -> str:
    """The stage of one sample: the innermost frame that names one, else http."""
    for frame in reversed(frames):
        for stage, markers in STAGES:
            if any(marker in frame for marker in markers):
                return stage
    return "http"


def summarise(raw: Path) -> dict:
    """Share of samples per stage, and the 12 functions with most samples of their own."""
    stages: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        total += int(count)
        stages[stage_of(frames)] += int(count)
        own[frames[-1]] += int(count)
    share = {k: round(100 * v / total, 1) for k, v in stages.most_common()} if total else {}
    top = [[frame, round(100 * n / total, 1)] for frame, n in own.most_common(12)]
    return {"samples": total, "stages_pct": share, "top_self_pct": top}


def revision(source: Path) -> str:
    """The source tree's git revision (or its path)."""
    result = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or str(source)


def profile(service: Service, paths: list[str], seconds: int, gil: bool, out: Path) -> dict:
    """py-spy on the loaded server for `seconds`, 4 clients cycling over `paths`."""
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            drive(service.url, paths, 4)

    driver = threading.Thread(target=load)
    driver.start()
    raw = out / f"pyspy-{'gil' if gil else 'all'}.txt"
    command = ["py-spy", "record", "--pid", str(service.process.pid), "--rate", "200"]
    command += ["--duration", str(seconds), "--format", "raw", "--output", str(raw)]
    command += ["--nonblocking"] + (["--gil"] if gil else [])
    try:
        subprocess.run(command, check=True, capture_output=True)
    finally:
        stop.set()
        driver.join()
    return summarise(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="vs_titiler's data folder")
    parser.add_argument("--source", type=Path, default=ROOT, help="tileserver tree to run")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "profile_tiles.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ingest(args.out, make_data(args.out))
    lists = make_tile_lists(100)
    ts = TileserverPaths(single_image_id(catalog_url(args.out)))
    paths = [ts.single(tile, "png") for tile in lists.single[("png", 4)]]
    env = tileserver_env(args.out, cached=False)  # vs_titiler's GDAL_ENV, tile cache off
    env.update(PYTHONPATH=str(args.source), TILESERVER_CATALOG_URL=catalog_url(args.out))
    command = [sys.executable, "-m", "uvicorn", "tileserver.main:app", "--host", "127.0.0.1"]
    command += ["--port", "{port}", "--log-level", "warning", "--no-access-log"]
    rev = revision(args.source)
    with (
        tempfile.TemporaryDirectory() as tmp,
        Service(f"profile-{rev}", command, env, args.source, args.out / "logs") as service,
    ):
        drive(service.url, paths[:20], 1)  # warm-up
        result = {
            "source": str(args.source),
            "seconds": args.seconds,
            "all_threads": profile(service, paths, args.seconds, False, Path(tmp)),
            "gil": profile(service, paths, args.seconds, True, Path(tmp)),
        }
    print(f"revision {rev}")
    for kind in ("all_threads", "gil"):
        figures = result[kind]
        stages = "  ".join(f"{k} {v}%" for k, v in figures["stages_pct"].items())
        print(f"  {kind:<12} {figures['samples']:>6} samples  {stages}")
        for frame, pct in figures["top_self_pct"][:8]:
            print(f"      {pct:5.1f}%  {frame}")
    saved = json.loads(args.json.read_text()) if args.json.exists() else {}
    saved[rev] = result
    args.json.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
