"""Run the Descartes Labs client's scaling functions over cases read as JSON from stdin.

Run by the reference virtual environment's python (tests/render/test_scaling_reference.py),
never imported by the suite: tileserver's environment does not have the client installed.

Input: {"cases": [{"products": {id: {band name: band record}}, "bands": [...],
"processing_level", "scaling", "data_type"}, ...]}. Output, one per case, twice: as the
client ships ("as_is") and with its two evident slips mended ("mended", see `mend`):
{"ok": [scales or None, data_type]} | {"error": text} | {"crash": "ExceptionName: text"}.
"""

from __future__ import annotations

import json
import sys
import warnings
from types import SimpleNamespace

warnings.simplefilter("ignore")  # its import warns about pkg_resources and missing credentials

from descarteslabs.catalog import ProcessingStepAttribute  # noqa: E402
from descarteslabs.core.catalog import scaling as reference  # noqa: E402

BAND_FIELDS = ("type", "data_type", "data_range", "display_range", "physical_range")
STEP_FIELDS = ("function", "data_type", "data_range", "display_range", "physical_range")
FLOAT_TYPES = ("Float32", "Float64")


def band_range(value, data_type):
    """A band range as the client's band model holds it: a tuple, in the band's data units
    (whole numbers of an integer type as ints, as the catalog's JSON carries them)."""
    if value is None:
        return None
    if data_type not in FLOAT_TYPES:
        return tuple(int(v) if float(v).is_integer() else v for v in value)
    return tuple(float(v) for v in value)


def level(value):
    """A processing level: an alias name, or steps built with the client's own step model."""
    if isinstance(value, str):
        return value
    return [
        ProcessingStepAttribute(**{k: v for k, v in step.items() if k in STEP_FIELDS})
        for step in value
    ]


def band(record):
    data_type = record.get("data_type")
    fields = {f: record.get(f) for f in BAND_FIELDS}
    for name in ("data_range", "display_range", "physical_range"):
        fields[name] = band_range(record.get(name), data_type or "UInt16")
    levels = record.get("processing_levels")
    fields["processing_levels"] = (
        {k: level(v) for k, v in levels.items()} if levels is not None else None
    )
    return SimpleNamespace(**fields)


def mend():
    """Mend the client's two slips, to see what it evidently intends.

    1. Its upcast table spells ("Float64") for UInt32 and Float32, a string and not a
       tuple, so a common type with them is found by letters ('F') or not at all.
    2. It joins a range given as a tuple with a default given as a list (physical mode with
       a physical_range and no data_range), which raises TypeError.
    """
    reference.valid_data_type_casts["UInt32"] = ("Float64",)
    reference.valid_data_type_casts["Float32"] = ("Float64",)
    shipped = reference.properties_for_band

    def as_tuples(name, band_object, processing_level):
        props = shipped(name, band_object, processing_level)
        for key in ("data_range", "display_range", "physical_range"):
            if props[key] is not None:
                props[key] = tuple(props[key])
        return props

    reference.properties_for_band = as_tuples


def run(case):
    products = {
        pid: {name: band(rec) for name, rec in bands.items()}
        for pid, bands in case["products"].items()
    }
    args = (case["bands"], case.get("processing_level"), case.get("scaling"), case.get("data_type"))
    try:
        if len(products) == 1:
            scales, data_type = reference.scaling_parameters(next(iter(products.values())), *args)
        else:
            scales, data_type = reference.multiproduct_scaling_parameters(products, *args)
    except ValueError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # the client's own slips: reported, classified by the test
        return {"crash": f"{type(exc).__name__}: {exc}"}
    if scales is not None:
        scales = [list(s) if s is not None else None for s in scales]
    return {"ok": [scales, data_type]}


def main():
    cases = json.load(sys.stdin)["cases"]
    as_is = [run(c) for c in cases]
    mend()
    mended = [run(c) for c in cases]
    json.dump({"as_is": as_is, "mended": mended}, sys.stdout)


if __name__ == "__main__":
    main()
