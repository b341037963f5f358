"""Pictures of a sweep: heatmaps of a metric over two axes, Pareto fronts of two metrics.

* **heatmap** (``--x`` and ``--y`` are axes): one cell per (x, y) value, coloured and labelled by
  the ``--color`` metric (default ``utilization_compute``); one panel per ``--facet`` value, one
  colour scale for all panels; a point that failed (e.g. does not fit SRAM) is a grey ``err``
  cell; ``--contour V`` outlines where the metric crosses ``V``. Every other axis must hold one
  value (filter with ``--where axis=value``), else the cell would mix points.
* **Pareto** (``--x`` and ``--y`` are metrics, e.g. ``latency_s`` and ``peak_sram_bytes_max``):
  every ok point as a dot, coloured by ``--color`` (a metric or an axis such as ``strategy``),
  with the front of the points no other point beats on both metrics drawn as a step line.
  Metrics named ``utilization*`` or ``speedup*`` or ending in ``cosine`` or ``agreement``
  (``accuracy_cosine``, ``accuracy_top1_agreement``) are better high; every other metric
  (latency, bytes, ``accuracy_max_rel_err``, ...) is better low. With a numeric ``--color``
  metric, points optimal on all three get a black ring (the latency / SRAM / accuracy front).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from moec.ir.errors import MoecError
from moec.ir.files import atomic_write
from moec.sweep.store import Row, open_results, with_speedups

HIGHER_IS_BETTER = ("utilization", "speedup")
HIGHER_IS_BETTER_SUFFIX = ("cosine", "agreement")
DEFAULT_METRIC = "utilization_compute"


class SweepPlotError(MoecError):
    """A plot that cannot be drawn: unknown column, mixed cells, matplotlib missing."""


def better_high(metric: str) -> bool:
    return metric.startswith(HIGHER_IS_BETTER) or metric.endswith(HIGHER_IS_BETTER_SUFFIX)


def _matches(value: Any, wanted: str) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return math.isclose(float(value), float(wanted))
        except ValueError:
            return False
    return str(value) == wanted or (value == "" and wanted == "none")


def select(rows: Sequence[Row], where: Mapping[str, str], columns: set[str]) -> list[Row]:
    """The rows whose ``column`` equals each ``where`` value (numbers compared as numbers)."""
    for key in where:
        if key not in columns:
            raise SweepPlotError(f"--where {key}: unknown column, expected one of {', '.join(sorted(columns))}")  # fmt: skip
    return [r for r in rows if all(_matches(r.get(k), v) for k, v in where.items())]


def _sort_key(v: Any) -> tuple[int, float, str]:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def _values(rows: Sequence[Row], col: str) -> list[Any]:
    return sorted({r.get(col) for r in rows}, key=_sort_key)


def _show(value: Any) -> str:
    """An axis value as the user wrote it (the exact program's empty pipeline is ``none``)."""
    return "none" if value == "" else str(value)


def _label(value: float, metric: str) -> str:
    if metric.startswith("utilization"):
        return f"{100 * value:.0f}%"
    if metric.endswith("_s"):
        return f"{value * 1e3:.3g}ms"
    if metric.endswith("bytes") or metric.endswith("bytes_max"):
        return f"{value / 2**20:.3g}Mi"
    return f"{value:.3g}"


def pareto_front(points: Sequence[tuple[float, ...]], high: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates (at least as good on every coordinate,
    better on one); ``high[i]`` says coordinate i is better high. Ties keep the first."""
    sign = [(-1.0 if h else 1.0) for h in high]
    keyed = [tuple(s * c for s, c in zip(sign, p, strict=True)) for p in points]
    front = []
    for i, p in enumerate(keyed):
        dominated = False
        for j, q in enumerate(keyed):
            if j == i:
                continue
            if all(a <= b for a, b in zip(q, p, strict=True)) and (q != p or j < i):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SweepPlotError(
            "moec sweep plot needs matplotlib, which is not installed (pip install 'moec[plot]')"
        ) from None
    return plt


def _save(fig: Any, plt: Any, path: str) -> None:
    buf = io.BytesIO()
    fmt = path.rsplit(".", 1)[-1] if "." in path else "png"
    fig.savefig(buf, format=fmt, dpi=110, metadata={"Software": None} if fmt == "png" else None)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _wrap(label: str, width: int) -> str:
    """``label`` on lines of at most about ``width`` characters, broken after commas."""
    lines: list[str] = []
    for part in label.split(","):
        piece = part if not lines else "," + part
        if lines and len(lines[-1]) + len(piece) <= width:
            lines[-1] += piece
        elif lines:
            lines[-1] += ","
            lines.append(part)
        else:
            lines.append(part)
    return "\n".join(lines)


def _suptitle(fig: Any, title: str) -> None:
    """The figure title, wrapped at commas to the figure's width (a long one was clipped)."""
    import textwrap

    chars = max(20, int(fig.get_figwidth() * 72 / 6))  # ~6 pt per character at 10 pt
    fig.suptitle("\n".join(textwrap.wrap(title, chars, break_on_hyphens=False)), fontsize=10)


def _panels(rows: Sequence[Row], facet: str | None) -> list[tuple[str, list[Row]]]:
    if facet is None:
        return [("", list(rows))]
    return [
        (f"{facet} = {_show(v)}", [r for r in rows if r.get(facet) == v])
        for v in _values(rows, facet)
    ]


def heatmap(
    rows: Sequence[Row], axes: Sequence[str], x: str, y: str, metric: str, facet: str | None,
    out: str, contour: float | None, title: str,
) -> None:  # fmt: skip
    """Draw the heatmap figure (see the module docstring)."""
    for col in axes:
        if col in (x, y, facet):
            continue
        vals = _values(rows, col)
        if len(vals) > 1:
            raise SweepPlotError(
                f"axis {col} has {len(vals)} values ({', '.join(map(_show, vals))}), which would "
                f"share a cell: give --facet {col} or --where {col}=VALUE"
            )
    ok = [r for r in rows if r.get("status") == "ok"]
    if ok and metric not in ok[0]:
        raise SweepPlotError(f"--color {metric}: not a column of these results")
    numbers = [float(r[metric]) for r in ok if r.get(metric) is not None]
    if not numbers:
        raise SweepPlotError(f"--color {metric}: no ok point has a value")
    vmin, vmax = min(numbers), max(numbers)
    if metric.startswith("utilization"):
        vmin, vmax = 0.0, max(1.0, vmax)
    plt = _pyplot()
    import numpy as np

    panels = _panels(rows, facet)
    xs, ys = _values(rows, x), _values(rows, y)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # Long tick labels (pass pipelines) overlapped the cells and each other: they are wrapped at
    # commas, the cells made as wide as the x labels, y labels drawn on the first column only.
    xticks = [_wrap(_show(v), 18) for v in xs]
    yticks = [_wrap(_show(v), 40) for v in ys]
    xlong = max(len(line) for t in xticks for line in t.split("\n"))
    ylong = max(len(line) for t in yticks for line in t.split("\n"))
    xlines = max(t.count("\n") + 1 for t in xticks)
    ylines = max(t.count("\n") + 1 for t in yticks)
    cell_w, cell_h = max(0.75, 0.06 * xlong), max(0.55, 0.17 * ylines)
    fig, grid = plt.subplots(
        nrows, ncols, squeeze=False, constrained_layout=True,
        figsize=(
            cell_w * len(xs) * ncols + 2.2 + 0.075 * ylong,
            (cell_h * len(ys) + 0.15 * xlines) * nrows + 1.6,
        ),
    )  # fmt: skip
    image = None
    for k, (name, sub) in enumerate(panels):
        ax = grid[k // ncols][k % ncols]
        z = np.full((len(ys), len(xs)), np.nan)
        failed = np.zeros_like(z, dtype=bool)
        for r in sub:
            i, j = ys.index(r.get(y)), xs.index(r.get(x))
            if r.get("status") == "ok" and r.get(metric) is not None:
                z[i, j] = float(r[metric])
            else:
                failed[i, j] = True
        image = ax.imshow(z, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(ys)):
            for j in range(len(xs)):
                if failed[i, j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.75"))
                    ax.text(j, i, "err", ha="center", va="center", fontsize=7, color="0.3")
                elif not np.isnan(z[i, j]):
                    bright = (z[i, j] - vmin) / ((vmax - vmin) or 1.0) > 0.6
                    ax.text(
                        j, i, _label(z[i, j], metric), ha="center", va="center", fontsize=7,
                        color="black" if bright else "white",
                    )  # fmt: skip
        if contour is not None and len(xs) > 1 and len(ys) > 1 and not np.isnan(z).all():
            filled = np.where(np.isnan(z), vmin, z)
            ax.contour(np.arange(len(xs)), np.arange(len(ys)), filled, levels=[contour],
                       colors="red", linewidths=1.5)  # fmt: skip
        ax.set_xticks(range(len(xs)), xticks, fontsize=8 if xlines > 1 else None)
        ax.set_xlabel(x)
        if k % ncols == 0:
            ax.set_yticks(range(len(ys)), yticks, fontsize=8 if ylines > 1 else None)
            ax.set_ylabel(y)
        else:
            ax.set_yticks(range(len(ys)), [])
        if name:
            ax.set_title(name, fontsize=9)
    for k in range(len(panels), nrows * ncols):
        grid[k // ncols][k % ncols].axis("off")
    bar = fig.colorbar(image, ax=grid, shrink=0.9)
    bar.set_label(metric + (f" (red: {contour:g})" if contour is not None else ""))
    _suptitle(fig, title)
    _save(fig, plt, out)


def _unit(metric: str, values: Sequence[float] = ()) -> tuple[float, str]:
    """Scale and unit a metric is plotted in (times below a millisecond in microseconds)."""
    if metric.endswith("_s"):
        if values and max(abs(v) for v in values) < 1e-3:
            return 1e6, " (us)"
        return 1e3, " (ms)"
    if metric.endswith("bytes") or metric.endswith("bytes_max"):
        return 1.0 / 2**20, " (MiB)"
    return 1.0, ""


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def pareto(
    rows: Sequence[Row], x: str, y: str, color: str | None, facet: str | None, out: str,
    title: str,
) -> None:  # fmt: skip
    """Draw the Pareto figure (see the module docstring)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    for col in (x, y):
        if not ok or col not in ok[0] or not isinstance(ok[0][col], int | float):
            raise SweepPlotError(f"--x/--y {col}: not a numeric metric of these results")
    plt = _pyplot()
    panels = _panels(ok, facet)
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(5.5 * ncols + 2, 4 * nrows), squeeze=False, constrained_layout=True
    )
    numeric = color is not None and all(
        isinstance(r.get(color), int | float) and not isinstance(r.get(color), bool) for r in ok
    )
    groups = _values(ok, color) if color is not None and not numeric else [None]
    palette = plt.get_cmap("tab20")
    (sx, ux), (sy, uy) = _unit(x, [float(r[x]) for r in ok]), _unit(y, [float(r[y]) for r in ok])
    handles: dict[str, Any] = {}
    colorbar = None
    sc_c, uc = _unit(color) if numeric and color is not None else (1.0, "")
    cvals = [float(r[color]) * sc_c for r in ok] if numeric and color is not None else [0.0]
    lo, hi = min(cvals), max(cvals)
    for k, (name, sub) in enumerate(panels):
        ax = grid[k // ncols][k % ncols]
        pts = [(float(r[x]) * sx, float(r[y]) * sy) for r in sub]
        front = sorted(pareto_front(pts, [better_high(x), better_high(y)]), key=lambda i: pts[i])
        if numeric and color is not None:
            sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, cmap="viridis",
                            c=[float(r[color]) * sc_c for r in sub], vmin=lo, vmax=hi)  # fmt: skip
            colorbar = sc
            triple = [(p[0], p[1], float(r[color])) for p, r in zip(pts, sub, strict=True)]
            best = pareto_front(triple, [better_high(x), better_high(y), better_high(color)])
            handles["front (3 metrics)"] = ax.scatter(
                [pts[i][0] for i in best], [pts[i][1] for i in best], s=60,
                facecolors="none", edgecolors="black",
            )  # fmt: skip
        else:
            for n, g in enumerate(groups):
                idx = [i for i, r in enumerate(sub) if color is None or r.get(color) == g]
                if not idx:
                    continue
                handles[_show(g) if g is not None else "points"] = ax.scatter(
                    [pts[i][0] for i in idx], [pts[i][1] for i in idx], s=26, alpha=0.85,
                    color=palette(n % 20), marker=MARKERS[n % len(MARKERS)],
                )  # fmt: skip
        (handles[f"Pareto front ({x}, {y})"],) = ax.step(
            [pts[i][0] for i in front], [pts[i][1] for i in front], where="post",
            color="red", linewidth=1.2,
        )  # fmt: skip
        if color is not None and not numeric:
            for i in front:
                ax.annotate(_show(sub[i].get(color)), pts[i], fontsize=6,
                            xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax.set_xlabel(x + ux + (" (higher is better)" if better_high(x) else ""))
        ax.set_ylabel(y + uy + (" (higher is better)" if better_high(y) else ""))
        ax.grid(alpha=0.3)
        ax.margins(x=0.1, y=0.08)  # room for the front's labels at the edges
        if name:
            ax.set_title(name, fontsize=9)
    for k in range(len(panels), nrows * ncols):
        grid[k // ncols][k % ncols].axis("off")
    if colorbar is not None:
        fig.colorbar(colorbar, ax=grid, label=f"{color}{uc}", shrink=0.8)
    # Below the panels, in as many columns as the labels allow: on the right, long labels (pass
    # pipelines) squeezed the axes into a third of the figure and ran over the title.
    longest = max((len(k) for k in handles), default=1)
    ncol = max(1, min(len(handles), int(fig.get_figwidth() * 72 / (6.5 * longest + 30))))
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=ncol,
               fontsize="small")  # fmt: skip
    _suptitle(fig, title)
    _save(fig, plt, out)


def stale_note(rows: Sequence[Row], journal: str) -> str:
    """One line saying how many of ``rows`` another moec computed (their ``fingerprint`` is not
    this process's, :mod:`moec.sweep.fingerprint`), or "" when none did."""
    from moec.sweep.fingerprint import code_fingerprint

    mine = code_fingerprint()
    others = sorted({str(r.get("fingerprint")) for r in rows if r.get("fingerprint") != mine})
    if not others:
        return ""
    n = sum(1 for r in rows if r.get("fingerprint") != mine)
    shown = ", ".join("none (older moec)" if f == "None" else f for f in others)
    return (
        f"{n} of the {len(rows)} rows drawn from {journal} were computed by another moec "
        f"(fingerprint {shown}; this one is {mine}): rerun 'moec sweep' to recompute them"
    )


def plot_results(
    folder: str, x: str, y: str, *, color: str | None, facet: str | None,
    where: Mapping[str, str], out: str, contour: float | None = None,
    on_stale: Callable[[str], None] | None = None,
) -> str:  # fmt: skip
    """Draw a heatmap (x and y are axes) or a Pareto front (x and y are metrics) of the
    results in ``folder`` to ``out``; returns which kind was drawn. ``on_stale(line)`` is told
    how many of the drawn rows another moec computed (they are drawn all the same)."""
    journal = open_results(folder)
    try:
        axes = journal.axis_columns()
        rows = with_speedups(journal.rows(), axes)
    finally:
        journal.close()
    if not rows:
        raise SweepPlotError("no points stored yet", folder)
    columns = {c for r in rows for c in r}
    for flag, col in (("--x", x), ("--y", y), ("--color", color), ("--facet", facet)):
        if col is not None and col not in columns:
            raise SweepPlotError(f"{flag} {col}: unknown column, expected one of {', '.join(sorted(columns))}")  # fmt: skip
    if facet is not None and facet not in axes:
        raise SweepPlotError(f"--facet {facet}: expected an axis ({', '.join(axes)})")
    rows = select(rows, where, columns)
    if not rows:
        raise SweepPlotError("--where: no point matches")
    if on_stale is not None:
        line = stale_note(rows, journal.path)
        if line:
            on_stale(line)
    fixed = [f"{k}={v}" for k, v in where.items()]
    for col in axes:
        vals = _values(rows, col)
        if len(vals) == 1 and col not in (x, y, facet) and col not in where:
            fixed.append(f"{col}={_show(vals[0])}")
    title = ", ".join(fixed)
    if x in axes and y in axes:
        heatmap(rows, axes, x, y, color or DEFAULT_METRIC, facet, out, contour, title)
        return "heatmap"
    if x in axes or y in axes:
        raise SweepPlotError(
            f"--x {x} --y {y}: expected two axes (heatmap) or two metrics (Pareto front)"
        )
    pareto(rows, x, y, color, facet, out, title)
    return "pareto"
