"""Tables and the per-patient Dice figure of a Dice-gain evaluation.

The figure is drawn with PIL (which torchvision already brings) instead of
matplotlib, so the toolkit needs no plotting dependency: a dot per patient
and arm, patients sorted by baseline Dice, a line from baseline to augmented
coloured by direction.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "baseline": (31, 119, 180),
    "augmented": (255, 127, 14),
    "up": (44, 160, 44),
    "down": (214, 39, 40),
    "grid": (220, 220, 220),
    "axis": (60, 60, 60),
}


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """Write dict rows (all with the same keys) as CSV; floats with 6 decimals."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})


def per_patient_plot(
    patients: Sequence[str],
    baseline: np.ndarray,
    augmented: np.ndarray,
    title: str = "Dice per test patient",
    labels: tuple[str, str] = ("baseline", "augmented"),
) -> np.ndarray:
    """An RGB uint8 image [H, W, 3] of per-patient Dice, baseline vs augmented (seed means).

    Args:
        patients: test patient ids, aligned with the arrays.
        baseline / augmented: Dice per patient in [0, 1].
        title: the figure's heading.
        labels: legend names of the two arms.
    """
    n = len(patients)
    if n == 0 or len(baseline) != n or len(augmented) != n:
        raise ValueError(f"need aligned per-patient arrays, got {n} patients, {len(baseline)} and "
                         f"{len(augmented)} values")
    order = np.argsort(np.asarray(baseline), kind="stable")
    left, right, top, bottom = 48, 16, 32, 64
    step = max(18, min(48, 720 // max(n, 1)))
    width = left + right + step * n
    height = 320
    plot_h = height - top - bottom
    image = Image.new("RGB", (max(width, 360), height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def y_of(value: float) -> float:
        return top + (1 - float(np.clip(value, 0, 1))) * plot_h

    # Axes and grid.
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=COLOURS["grid"])
        draw.text((4, y - 6), f"{tick:.2f}", fill=COLOURS["axis"], font=font)
    draw.line([(left, top), (left, top + plot_h)], fill=COLOURS["axis"])
    draw.text((left, 8), title, fill=COLOURS["axis"], font=font)

    # One column per patient: baseline dot, augmented dot, a line between them.
    r = 4
    # Drop the prefix all ids share ("phantom_", "case"), then keep what fits under a column.
    ids = [str(p) for p in patients]
    prefix = os.path.commonprefix(ids) if len(ids) > 1 else ""
    for col, i in enumerate(order):
        x = left + step * (col + 0.5)
        yb, ya = y_of(baseline[i]), y_of(augmented[i])
        draw.line([(x, yb), (x, ya)], fill=COLOURS["up" if augmented[i] >= baseline[i] else "down"], width=2)
        draw.ellipse([x - r, yb - r, x + r, yb + r], fill=COLOURS["baseline"])
        draw.ellipse([x - r, ya - r, x + r, ya + r], fill=COLOURS["augmented"])
        name = ids[i][len(prefix):][-8:] or ids[i][-8:]
        draw.text((x - 3 * len(name), top + plot_h + 4 + 12 * (col % 2)), name, fill=COLOURS["axis"], font=font)

    # Legend.
    y = height - 20
    for k, (label, colour) in enumerate(zip(labels, (COLOURS["baseline"], COLOURS["augmented"]))):
        x = left + 130 * k
        draw.ellipse([x, y, x + 2 * r, y + 2 * r], fill=colour)
        draw.text((x + 12, y - 2), label, fill=COLOURS["axis"], font=font)
    return np.asarray(image)


def save_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def gain_plot(rows: Sequence[dict], title: str) -> np.ndarray:
    """An RGB image of each row's Dice gain with its 95% CI (a dot and a whisker per generator), 0 marked.

    Rows need ``generator``, ``dice_gain``, ``ci_low`` and ``ci_high``; gains
    whose CI includes 0 are drawn grey.
    """
    if not rows:
        raise ValueError("gain_plot needs at least one row")
    labels = [str(r["generator"])[:48] for r in rows]
    left, right, top, row_h = max(150, 20 + 6 * max(len(t) for t in labels)), 24, 36, 22  # labels never cut short
    width, height = 490 + left, top + row_h * len(rows) + 40
    lo = min(min(r["ci_low"] for r in rows), 0.0)
    hi = max(max(r["ci_high"] for r in rows), 0.0)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def x_of(value: float) -> float:
        return left + (value - lo) / (hi - lo) * (width - left - right)

    draw.text((8, 8), title, fill=COLOURS["axis"], font=font)
    bottom = top + row_h * len(rows)
    draw.line([(x_of(0), top - 6), (x_of(0), bottom)], fill=COLOURS["axis"])
    for tick in np.linspace(lo + pad, hi - pad, 5):
        draw.line([(x_of(tick), bottom), (x_of(tick), bottom + 4)], fill=COLOURS["axis"])
        draw.text((x_of(tick) - 14, bottom + 8), f"{tick:+.3f}", fill=COLOURS["axis"], font=font)
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        colour = (150, 150, 150) if r["ci_low"] <= 0 <= r["ci_high"] else \
            COLOURS["up"] if r["dice_gain"] > 0 else COLOURS["down"]
        draw.text((8, y - 6), labels[i], fill=COLOURS["axis"], font=font)
        draw.line([(x_of(r["ci_low"]), y), (x_of(r["ci_high"]), y)], fill=colour, width=2)
        x = x_of(r["dice_gain"])
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    return np.asarray(image)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class _Axes:
    """A PIL canvas with linear x and y axes, ticks, a title and axis labels."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], title: str, x_label: str, y_label: str,
                 x_ticks: Sequence[float] | None = None, width: int = 640, height: int = 400,
                 legend_w: int = 150) -> None:
        self.left, self.right, self.top, self.bottom = 64, 16 + legend_w, 32, 48
        self.width, self.height = width, height
        x_lo, x_hi = min(xs), max(xs)
        y_lo, y_hi = min(*ys, 0.0), max(*ys, 0.0)
        xpad, ypad = 0.05 * (x_hi - x_lo or 1.0), 0.08 * (y_hi - y_lo or 1.0)
        self.x_lo, self.x_hi, self.y_lo, self.y_hi = x_lo - xpad, x_hi + xpad, y_lo - ypad, y_hi + ypad
        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()
        d, axis = self.draw, COLOURS["axis"]
        d.text((8, 8), title, fill=axis, font=self.font)
        x0, y0, x1, y1 = self.left, self.top, width - self.right, height - self.bottom
        d.rectangle([x0, y0, x1, y1], outline=axis)
        for tick in (x_ticks if x_ticks is not None else np.linspace(x_lo, x_hi, 5)):
            x = self.x(tick)
            d.line([(x, y1), (x, y1 + 4)], fill=axis)
            d.text((x - 10, y1 + 8), f"{tick:g}", fill=axis, font=self.font)
        for tick in np.linspace(y_lo, y_hi, 5):
            y = self.y(tick)
            d.line([(x0, y), (x1, y)], fill=COLOURS["grid"])
            d.text((4, y - 6), f"{tick:+.3f}", fill=axis, font=self.font)
        if y_lo <= 0 <= y_hi:
            d.line([(x0, self.y(0)), (x1, self.y(0))], fill=axis)
        d.text(((x0 + x1) / 2 - 3 * len(x_label), height - 18), x_label, fill=axis, font=self.font)
        d.text((8, 20), y_label, fill=axis, font=self.font)
        self.legend_x, self.legend_y = x1 + 10, y0

    def x(self, value: float) -> float:
        return self.left + (value - self.x_lo) / (self.x_hi - self.x_lo) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        return self.top + (self.y_hi - value) / (self.y_hi - self.y_lo) * (self.height - self.top - self.bottom)

    def legend(self, label: str, colour: tuple[int, int, int]) -> None:
        self.draw.rectangle([self.legend_x, self.legend_y + 2, self.legend_x + 8, self.legend_y + 10], fill=colour)
        self.draw.text((self.legend_x + 12, self.legend_y), label[:22], fill=COLOURS["axis"], font=self.font)
        self.legend_y += 16


def line_plot(series: dict[str, Sequence[tuple[float, float, float, float]]], title: str, x_label: str,
              y_label: str = "Dice gain") -> np.ndarray:
    """An RGB image of one line per series through (x, y) points with [low, high] error bars.

    Args:
        series: name -> [(x, y, low, high), ...]; e.g. per generator, gain vs training patients with its 95% CI.
    """
    points = [p for values in series.values() for p in values]
    if not points:
        raise ValueError("line_plot needs at least one point")
    xs = sorted({p[0] for p in points})
    axes = _Axes(xs, [v for p in points for v in p[1:]], title, x_label, y_label, x_ticks=xs)
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        values = sorted(values)
        # Offset each series a little along x so the error bars do not hide each other.
        shift = (i - (len(series) - 1) / 2) * 4
        pts = [(axes.x(x) + shift, axes.y(y)) for x, y, _, _ in values]
        if len(pts) > 1:
            axes.draw.line(pts, fill=colour, width=2)
        for (x, _), (_, _, low, high) in zip(pts, values):
            axes.draw.line([(x, axes.y(low)), (x, axes.y(high))], fill=colour, width=1)
            axes.draw.line([(x - 3, axes.y(low)), (x + 3, axes.y(low))], fill=colour)
            axes.draw.line([(x - 3, axes.y(high)), (x + 3, axes.y(high))], fill=colour)
        for x, y in pts:
            axes.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        axes.legend(name, colour)
    return np.asarray(axes.image)


def scatter_plot(points: Sequence[tuple[str, float, float]], title: str, x_label: str, y_label: str) -> np.ndarray:
    """An RGB image of labelled points (name, x, y), one colour per name."""
    if not points:
        raise ValueError("scatter_plot needs at least one point")
    axes = _Axes([p[1] for p in points], [p[2] for p in points], title, x_label, y_label)
    colours: dict[str, tuple[int, int, int]] = {}
    for name, x, y in points:
        if name not in colours:
            colours[name] = PALETTE[len(colours) % len(PALETTE)]
            axes.legend(name, colours[name])
        px, py = axes.x(x), axes.y(y)
        axes.draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colours[name])
    return np.asarray(axes.image)
