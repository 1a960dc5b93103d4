"""A PNG line chart of a time series, drawn with numpy and Pillow (no plotting library).

The geometry is fixed so that a test (or a curious reader) can find each point: the plot
area spans x from LEFT to width - RIGHT - 1 and y from TOP to height - BOTTOM - 1; a date
d of the dates from d0 to d1 is at x = LEFT + (d - d0) / (d1 - d0) * (x1 - LEFT) (the
middle when there is one date); a value v of the values from lo to hi (all series) is at
y = y1 - (v - lo) / (hi - lo) * (y1 - TOP) (hi = lo + 1 when all values are equal). Each
point is a MARKER x MARKER square in its series' colour (PALETTE, in order), points of
consecutive dates with values are joined by a line of that colour; a flagged date (above
max_cloud_fraction) is a hollow square. Axis labels, grid lines and the legend are black
and grey.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from io import BytesIO

from PIL import Image as PILImage
from PIL import ImageDraw

LEFT, RIGHT, TOP, BOTTOM = 72, 16, 28, 36
MARKER = 5
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
]
MIN_SIZE, MAX_SIZE = 200, 2000
BLACK, GREY, WHITE = (0, 0, 0), (200, 200, 200), (255, 255, 255)


def value_range(series: Sequence[Sequence[float | None]]) -> tuple[float, float]:
    """lo and hi of every finite value (0, 1 without any; hi = lo + 1 when all equal)."""
    values = [v for s in series for v in s if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def positions(
    dates: Sequence[date], values: Sequence[float | None], lo: float, hi: float, size
) -> list[tuple[float, float] | None]:
    """Where each (date, value) is drawn (the module's formula); None without a value."""
    width, height = size
    x1, y1 = width - RIGHT - 1, height - BOTTOM - 1
    days = [d.toordinal() for d in dates]
    first, last = min(days), max(days)
    out = []
    for day, value in zip(days, values, strict=True):
        if value is None or not math.isfinite(value):
            out.append(None)
            continue
        x = LEFT + (x1 - LEFT) * ((day - first) / (last - first) if last > first else 0.5)
        y = y1 - (y1 - TOP) * (value - lo) / (hi - lo)
        out.append((x, y))
    return out


def series_png(
    dates: Sequence[date],
    series: dict[str, Sequence[float | None]],
    flagged: Sequence[bool] = (),
    title: str = "",
    size: tuple[int, int] = (800, 400),
) -> bytes:
    """The chart of `series` (name -> one value per date) over `dates` as PNG bytes."""
    width, height = size
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise ValueError(f"a plot is {MIN_SIZE}..{MAX_SIZE} pixels wide and high")
    image = PILImage.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    x1, y1 = width - RIGHT - 1, height - BOTTOM - 1
    lo, hi = value_range(list(series.values()))
    for i in range(5):  # grid lines and value labels
        y = round(TOP + (y1 - TOP) * i / 4)
        draw.line((LEFT, y, x1, y), fill=GREY)
        label = f"{hi - (hi - lo) * i / 4:.4g}"
        draw.text((LEFT - 4 - draw.textlength(label), y - 5), label, fill=BLACK)
    draw.rectangle((LEFT, TOP, x1, y1), outline=BLACK)
    if dates:
        first, last = min(dates), max(dates)
        draw.text((LEFT, y1 + 6), str(first), fill=BLACK)
        if last != first:
            label = str(last)
            draw.text((x1 - draw.textlength(label), y1 + 6), label, fill=BLACK)
    draw.text((LEFT, 4), title[:120], fill=BLACK)
    legend_x = max(LEFT + draw.textlength(title[:120]) + 16, width // 2)
    flags = list(flagged) or [False] * len(dates)
    half = MARKER // 2
    for index, (name, values) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        points = positions(dates, values, lo, hi, size) if dates else []
        previous = None
        for point in points:
            if point is not None and previous is not None:
                draw.line((*previous, *point), fill=color, width=1)
            previous = point
        for point, flag in zip(points, flags, strict=True):
            if point is None:
                continue
            x, y = round(point[0]), round(point[1])
            box = (x - half, y - half, x + half, y + half)
            draw.rectangle(box, outline=color, fill=WHITE if flag else color)
        if legend_x + 120 < width:
            draw.rectangle((legend_x, 8, legend_x + 10, 16), fill=color)
            draw.text((legend_x + 14, 5), name[:40], fill=BLACK)
            legend_x += 24 + draw.textlength(name[:40])
    out = BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
