"""Loading a large parcel file: wall time and peak memory of `tileserver parcels load`.

Writes N rectangular fields (UTM 33N, 100 m apart, four crops) to a GeoPackage, then loads
it into each catalog named, each in a fresh process, and prints its wall time and peak RSS.
A load holds one batch (catalog.parcels.BATCH features) in memory, so peak RSS should not
grow with N; compare two sizes, or another checkout with `--pythonpath`.

    python bench/parcels_load.py 300000 sqlite:///tmp/p.db postgresql://USER@HOST/DB
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_fields(path: Path, n: int) -> None:
    """n fields on a square grid, ids 1..n, crops cycling wheat/maize/rye/oats."""
    import numpy
    import pyogrio.raw
    import shapely

    side = int(numpy.ceil(numpy.sqrt(n)))
    i = numpy.arange(n)
    x0, y0 = 500000 + (i % side) * 100.0, 5700000 + (i // side) * 100.0
    boxes = shapely.box(x0 + 3, y0 + 3, x0 + 97, y0 + 90)
    crops = numpy.array(["wheat", "maize", "rye", "oats"], dtype=object)[i % 4]
    pyogrio.raw.write(
        path,
        numpy.array(shapely.to_wkb(boxes), dtype=object),
        [i + 1, crops, numpy.full(n, 2024)],
        ["pid", "cropname", "year"],
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:32633",
    )


def load(path: Path, catalog: str, pythonpath: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (kB) of one `parcels load` in a child process."""
    code = (
        "import resource, sys; from tileserver.cli import cli\n"
        "try:\n    cli(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    args = [sys.executable, "-c", code, "parcels", "load", str(path), "--aoi", "bench",
            "--year", "2024", "--catalog", catalog, "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": pythonpath}
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, int(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int)
    parser.add_argument("catalogs", nargs="+")
    parser.add_argument("--pythonpath", default=str(Path(__file__).parents[1]))
    parser.add_argument("--write", help=argparse.SUPPRESS)  # the child writing the file
    options = parser.parse_args()
    if options.write:
        write_fields(Path(options.write), options.count)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fields.gpkg"
        # in a child: Linux's peak RSS of a process counts its parent's at the fork, so this
        # process stays small and the loads' numbers are their own
        writer = [sys.executable, __file__, str(options.count), "-", "--write", str(path)]
        subprocess.run(writer, check=True)
        for catalog in options.catalogs:
            seconds, rss = load(path, catalog, options.pythonpath)
            rate = options.count / seconds
            print(f"{catalog.split(':')[0]:10} {options.count:>9} parcels {seconds:7.1f} s "
                  f"({rate:,.0f}/s)  peak RSS {rss / 1024:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
