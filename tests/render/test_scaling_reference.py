"""Differential test: tileserver's scaling against the Descartes Labs client's own functions.

Thousands of seeded random band sets and requests go, as JSON in one subprocess call, to
`scaling_reference_driver.py` run by a separate environment holding the client
(`descarteslabs`, with `setuptools<81`); `.ci/run` builds it and names its python in
TILESERVER_TEST_DL_PYTHON. Without that variable the test is skipped, saying so (in CI,
where CI=true, it fails).

Bands go to both sides as tileserver stores them (its Band model's defaults applied); the
driver gives band ranges in the band's data units and builds steps with the client's own
step model (whose ranges are floats). Where the shipped client crashes or slips (its upcast
table, its list + tuple join), the driver mends it and tileserver must agree with the
mended answer; test_scaling.py names each slip in a small test of its own.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tileserver.catalog.models import Band
from tileserver.scaling_rules import (
    ScalingError,
    multiproduct_scaling_parameters,
    scaling_parameters,
)

DRIVER = Path(__file__).with_name("scaling_reference_driver.py")
CASES = 10000
SEED = 18

TYPES = ("Byte", "UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64")
NAMES = ("red", "green", "blue", "nir", "swir", "alpha", "cls", "gen")
LEVELS = ("default", "toa", "toa_reflectance", "surface", "DN", "radiance")
MODES = ("raw", "auto", "display", "physical")


def _pick_range(rng: random.Random, data_type: str) -> list:
    if data_type.startswith("Float"):
        lo = rng.choice([0.0, -1.0, 0.5, -100.0])
        return [lo, lo + rng.choice([1.0, 100.0, 333.5, 10000.0])]
    lo = rng.choice([0, 0, -100, 1]) if data_type.startswith("Int") else rng.choice([0, 0, 1])
    return [lo, lo + rng.choice([1, 255, 4000, 10000, 65535 - lo if lo >= 0 else 30000])]


def _step(rng: random.Random) -> dict:
    step: dict[str, Any] = {"function": rng.choice(["linear"] * 6 + ["dlsr"])}
    if rng.random() < 0.6:
        step["data_type"] = rng.choice(TYPES)
    if rng.random() < 0.6:
        step["data_range"] = _pick_range(rng, step.get("data_type", "Float64"))
        if rng.random() < 0.3:
            step["data_range"] = [float(v) for v in step["data_range"]]
    if rng.random() < 0.3:
        step["display_range"] = [0.0, rng.choice([0.3, 1.0, 2000.0])]
    if rng.random() < 0.4:
        step["physical_range"] = [0.0, rng.choice([1.0, 100.0])]
    return step


def _levels(rng: random.Random) -> dict | None:
    if rng.random() < 0.5:
        return None
    names = rng.sample(LEVELS, rng.randint(1, 4))
    levels: dict[str, Any] = {}
    for name in names:
        roll = rng.random()
        if roll < 0.55 or len(names) == 1:
            levels[name] = [_step(rng) for _ in range(rng.choice([0, 1, 1, 2]))]
        elif roll < 0.9:
            levels[name] = rng.choice([n for n in names if n != name])  # may chain or loop
        else:
            levels[name] = "missing_level"
    return levels


def _band(rng: random.Random, name: str) -> dict:
    band_type = {"alpha": "mask", "cls": "class", "gen": "generic"}.get(name, "spectral")
    if band_type == "spectral" and rng.random() < 0.1:
        band_type = "microwave"
    record: dict[str, Any] = {"name": name, "type": band_type}
    if rng.random() < 0.85:
        record["data_type"] = rng.choice(TYPES)
    data_type = record.get("data_type", "UInt16")
    if band_type == "mask":
        record["data_range"] = [0, 1]
        return record
    if rng.random() < 0.8:
        record["data_range"] = _pick_range(rng, data_type)
    if rng.random() < 0.6:
        lo, hi = record.get("data_range", [0, 10000])
        record["display_range"] = [lo, lo + (hi - lo) // 2 if isinstance(hi, int) else hi / 2]
    if rng.random() < 0.6:
        record["physical_range"] = rng.choice([[0.0, 1.0], [-1.0, 1.0], [0.0, 333.0]])
    levels = _levels(rng)
    if levels is not None and band_type != "class":
        record["processing_levels"] = levels
    return record


def _item(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return f"{rng.choice([0, 2, 29, 50, 57, 98, 100, 12.5])}%"
    if roll < 0.75:
        return rng.choice([0, 1, 100, 255, 4000, 10000, 65535, -5, 70000])
    return rng.choice([0.0, 0.5, 1.0, 255.99, 2.5])


def _entry(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.2:
        return None
    if roll < 0.45:
        return rng.choice(MODES)
    if roll < 0.48:
        return rng.choice(["mode", 7, [1, 2, 3]])  # invalid
    return [_item(rng) for _ in range(rng.choice([0, 2, 2, 4, 4, 4]))]


def _scaling(rng: random.Random, names: list[str]) -> Any:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.35:
        return rng.choice(MODES)
    if roll < 0.65:
        extra = rng.random() < 0.1
        return [_entry(rng) for _ in range(len(names) + (rng.choice([-1, 1]) if extra else 0))]
    mapping = {n: _entry(rng) for n in names if rng.random() < 0.6}
    for n in rng.sample(NAMES, 2):
        if n not in names and rng.random() < 0.5:
            mapping[n] = _entry(rng)  # a key naming a band not requested
    if rng.random() < 0.6:
        mapping["default_"] = _entry(rng)
    return mapping


def make_case(rng: random.Random) -> dict:
    names = rng.sample(NAMES, rng.randint(1, 4))
    first = {n: _band(rng, n) for n in names}
    products = {"p0": first}
    for i in range(1, rng.choice([1] * 7 + [2, 2, 3])):
        other = {}
        for n in names:
            roll = rng.random()
            if roll < 0.03:
                continue  # the requested band is missing from this product
            other[n] = json.loads(json.dumps(first[n])) if roll < 0.7 else _band(rng, n)
        products[f"p{i}"] = other
    data_type = None
    if rng.random() < 0.35:
        data_type = rng.choice([*TYPES, "Int8"])
    level = None
    if rng.random() < 0.5:
        level = rng.choice([*LEVELS, "nosuch"])
    return {
        "products": products,
        "bands": names,
        "processing_level": level,
        "scaling": _scaling(rng, names),
        "data_type": data_type,
    }


def stored(case: dict) -> tuple[dict[str, list[Band]] | None, str | None]:
    """The case's products as tileserver stores them, or the band model's refusal."""
    try:
        return {
            pid: [Band.model_validate(rec) for rec in bands.values()]
            for pid, bands in case["products"].items()
        }, None
    except ValueError as exc:
        return None, f"band model: {exc}"


def tileserver_answer(case: dict, products: dict[str, list[Band]] | None, refusal: str | None):
    if products is None:
        return {"error": refusal}
    try:
        if len(products) == 1:
            bands = {b.name: b for b in products["p0"]}
            scales, data_type = scaling_parameters(
                [bands[n] for n in case["bands"]],
                case["scaling"],
                case["data_type"],
                case["processing_level"],
            )
        else:
            scales, data_type = multiproduct_scaling_parameters(
                products,
                case["bands"],
                case["scaling"],
                case["data_type"],
                case["processing_level"],
            )
    except ScalingError as exc:
        return {"error": str(exc)}
    return {"ok": [[list(s) if s is not None else None for s in scales], data_type]}


def for_reference(products: dict[str, list[Band]] | None, case: dict) -> dict:
    """The case with band records as tileserver stores them (defaults filled in)."""
    if products is None:
        return case
    dumped = {
        pid: {b.name: b.model_dump(mode="json", exclude_none=True) for b in bands}
        for pid, bands in products.items()
    }
    return {**case, "products": dumped}


def same(ours: dict, theirs: dict, count: int) -> bool:
    """Agreement: both refuse (a client crash counts as its intended refusal), or the same
    output type and, band for band, the same scale (None where it gives no list)."""
    if "ok" not in ours or "ok" not in theirs:
        return ("ok" in ours) == ("ok" in theirs)
    scales, data_type = theirs["ok"]
    if scales is None:
        scales = [None] * count
    return ours["ok"] == [scales, data_type]


def reference_answers(python: str, cases: list[dict]) -> dict:
    done = subprocess.run(
        [python, str(DRIVER)],
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"the reference driver failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def compare(python: str, cases: int = CASES, seed: int = SEED) -> dict:
    """Run the cases on both sides; counts, and the first disagreements for the message."""
    rng = random.Random(seed)
    generated = [make_case(rng) for _ in range(cases)]
    models = [stored(c) for c in generated]
    sent = [for_reference(m, c) for (m, _), c in zip(models, generated, strict=True)]
    answers = reference_answers(python, sent)
    counts: Counter[str] = Counter()
    examples = []
    for case, (products, refusal), as_is, mended in zip(
        generated, models, answers["as_is"], answers["mended"], strict=True
    ):
        ours = tileserver_answer(case, products, refusal)
        count = len(case["bands"])
        agree = same(ours, mended, count)
        counts["agree" if agree else "disagree"] += 1
        counts["client gives scales"] += "ok" in mended
        counts["agree with the client as shipped"] += same(ours, as_is, count)
        if as_is != mended:
            counts["client slip mended"] += 1
        if "crash" in mended:
            counts["client crash taken as a refusal"] += 1
        if not agree and len(examples) < 8:
            examples.append({"case": case, "tileserver": ours, "client": mended})
    return {"counts": counts, "examples": examples}


@pytest.fixture(scope="module")
def reference_python() -> str:
    python = os.environ.get("TILESERVER_TEST_DL_PYTHON")
    if not python and os.environ.get("CI") == "true":
        pytest.fail("TILESERVER_TEST_DL_PYTHON is unset in CI: .ci/run should set it")
    if not python:
        pytest.skip(
            "TILESERVER_TEST_DL_PYTHON is unset: no python with the descarteslabs client "
            "to compare against (.ci/run creates one)"
        )
    if not Path(python).exists():
        pytest.fail(f"TILESERVER_TEST_DL_PYTHON names no file: {python}")
    return python


def test_scaling_agrees_with_the_reference_client_case_for_case(reference_python):
    result = compare(reference_python)
    counts = result["counts"]
    assert counts["agree"] == CASES, (
        f"{counts['disagree']} of {CASES} cases disagree ({dict(counts)}); first ones:\n"
        + "\n".join(json.dumps(e) for e in result["examples"])
    )
    # the generator reaches every kind of answer, so agreement is not agreement on refusals
    assert counts["client gives scales"] > CASES // 3
    assert counts["client slip mended"] > 0
    assert counts["client crash taken as a refusal"] > 0


if __name__ == "__main__":  # the agreement figures: python -m tests.render.test_scaling_reference
    figures = compare(sys.argv[1] if len(sys.argv) > 1 else os.environ["TILESERVER_TEST_DL_PYTHON"])
    print(json.dumps(dict(figures["counts"]), indent=1))
    for example in figures["examples"][:3]:
        print(json.dumps(example))
