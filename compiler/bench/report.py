"""How bench rows are shown: speedup over EP, the terminal table, JSON, a bar chart.

A row is a plain dict (the ``--json`` schema, declared by :class:`~moec.compiler.bench.row.BenchRow`)::

    {"model", "target", "tokens", "strategy", "latency_s", "bound_s", "speedup_vs_ep",
     "peak_sram_bytes_max", "dram_bytes", "link_bytes",
     "utilization": {"compute", "dram", "links"}, "passes", ...}

A point that failed (``moec bench`` keeps going) is a row with the point's coordinates, its
one-line ``"error"``, ``latency_s`` and ``speedup_vs_ep`` null and no other metrics. Plus, for
models with weights, ``"accuracy": {"max_rel_err", "mean_rel_err", "cosine",
"top1_agreement"}``; the table and the Markdown get the :data:`ACCURACY_COLUMNS` when any row
has it (``-`` in the rows that do not).

so the design-space sweep and the tests read the same thing the user sees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from moec.compiler.bench.row import Row
from moec.ir.errors import MoecError
from moec.ir.files import atomic_write


def _point(row: Row) -> tuple[Any, ...]:
    return (row["model"], row["target"], row["tokens"], row.get("passes", ""))


def add_speedups(rows: list[Row]) -> list[Row]:
    """Set ``speedup_vs_ep`` = EP latency / latency for rows whose point has an ``ep`` row
    (same model, target, tokens and passes); ``None`` otherwise. Returns ``rows``."""
    ran = [r for r in rows if not r.get("error")]
    ep = {_point(r): r["latency_s"] for r in ran if r["strategy"] == "ep"}
    for r in rows:
        base = ep.get(_point(r))
        lat = r.get("latency_s")
        r["speedup_vs_ep"] = (
            round(base / lat, 6) if base is not None and lat is not None and lat > 0 else None
        )
    return rows


def rows_json(rows: Sequence[Row]) -> str:
    """The ``--json`` document: ``{"rows": [...]}``, keys sorted, one line."""
    return json.dumps({"rows": list(rows)}, sort_keys=True)


def _si(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def joules(j: float | None) -> str:
    """Joules with an SI prefix: ``1.23 mJ``, ``456 uJ``, ``7.8 nJ``; ``-`` when unknown."""
    if j is None:
        return "-"
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(j) >= scale:
            return f"{j / scale:.3g} {prefix}J"
    return f"{j * 1e12:.3g} pJ"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


COLUMNS = (
    "model", "target", "tokens", "strategy", "latency", "bound", "lat/bound", "vs ep",
    "compute", "dram", "links", "peak SRAM", "DRAM bytes", "link bytes", "energy",
    "energy/token",
)  # fmt: skip


#: Extra columns when rows carry ``accuracy``.
ACCURACY_COLUMNS = ("max err", "mean err", "cosine", "top-1")


def columns(rows: Sequence[Row]) -> tuple[str, ...]:
    """:data:`COLUMNS`, plus :data:`ACCURACY_COLUMNS` when any row has accuracy fields."""
    return COLUMNS + (ACCURACY_COLUMNS if any(r.get("accuracy") for r in rows) else ())


def accuracy_cells(row: Row) -> list[str]:
    """The :data:`ACCURACY_COLUMNS` cells of one row (``-`` when it has none)."""
    acc = row.get("accuracy")
    if not acc:
        return ["-"] * len(ACCURACY_COLUMNS)
    top1 = acc.get("top1_agreement")
    return [
        f"{acc['max_rel_err']:.2e}", f"{acc['mean_rel_err']:.2e}", f"{acc['cosine']:.6f}",
        f"{top1:.4f}" if top1 is not None else "-",
    ]  # fmt: skip


def table_cells(row: Row, accuracy: bool = False) -> list[str]:
    """The terminal cells of one row, in :data:`COLUMNS` order (then the accuracy cells).

    A failed point (a row with ``error``) shows ``failed`` under latency and ``-`` elsewhere."""
    if row.get("error"):
        n = len(COLUMNS) + (len(ACCURACY_COLUMNS) if accuracy else 0)
        return [
            row["model"], row["target"], str(row["tokens"]),
            row["strategy"] + (f" [{row['passes']}]" if row.get("passes") else ""), "failed",
        ] + ["-"] * (n - 5)  # fmt: skip
    u = row["utilization"]
    speed = row.get("speedup_vs_ep")
    ratio = row["latency_s"] / row["bound_s"] if row["bound_s"] > 0 else float("inf")
    return [
        row["model"], row["target"], str(row["tokens"]),
        row["strategy"] + (f" [{row['passes']}]" if row.get("passes") else ""),
        _si(row["latency_s"]), _si(row["bound_s"]), f"{ratio:.2f}",
        f"{speed:.2f}x" if speed is not None else "-",
        _pct(u["compute"]), _pct(u["dram"]), _pct(u["links"]),
        _bytes(row["peak_sram_bytes_max"]) + ("!" if row.get("sram_over_bytes") else ""),
        _bytes(row["dram_bytes"]), _bytes(row["link_bytes"]),
        joules(row.get("energy_j")), joules(row.get("energy_per_token_j")),
    ] + (accuracy_cells(row) if accuracy else [])  # fmt: skip


def render_table(rows: Sequence[Row], title: str = "moec bench") -> Any:
    """A rich :class:`~rich.table.Table` of the rows (print it with a rich Console)."""
    from rich.markup import escape
    from rich.table import Table

    over = any(r.get("sram_over_bytes") for r in rows)
    caption = "!: the run exceeded a die's SRAM (--allow-overflow)" if over else None
    table = Table(title=title, header_style="bold", caption=caption)
    cols = columns(rows)
    accuracy = len(cols) > len(COLUMNS)
    for col in cols:
        left = col in ("model", "target", "strategy")
        table.add_column(col, justify="left" if left else "right", no_wrap=left)
    last = None
    for r in rows:
        point = (r["model"], r["target"], r["tokens"])
        if last is not None and point != last:
            table.add_section()
        last = point
        # escaped: a pass pipeline's "[...]" label is text, not rich markup
        table.add_row(*(escape(c) for c in table_cells(r, accuracy)))
    return table


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub-flavoured Markdown table (for ``docs/results.md``)."""
    cols = columns(rows)
    accuracy = len(cols) > len(COLUMNS)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(table_cells(r, accuracy)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class PlotError(MoecError):
    """``--plot`` was asked for but cannot be drawn (matplotlib missing)."""


def write_plot(rows: Sequence[Row], path: str) -> None:
    """A grouped bar chart: one panel per (model, target), bars of latency per token count and
    strategy, written atomically to ``path`` (format from its extension)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(
            "--plot needs matplotlib, which is not installed (pip install 'moec[plot]')"
        ) from None
    import io

    rows = [r for r in rows if not r.get("error")]  # failed points have no latency to draw
    panels = list(dict.fromkeys((r["model"], r["target"]) for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 3 * max(1, len(panels)) + 0.6), squeeze=False,
        constrained_layout=True,
    )  # fmt: skip
    width = 0.8 / max(1, len(strategies))
    colors = plt.get_cmap("tab10")
    for ax, (model, target) in zip(axes[:, 0], panels, strict=True):
        sub = [r for r in rows if (r["model"], r["target"]) == (model, target)]
        tokens = sorted({r["tokens"] for r in sub})
        # each panel in its own unit: a tiny model's microseconds would read 0.00 in ms
        scale, unit = (1e3, "ms") if max(r["latency_s"] for r in sub) >= 1e-3 else (1e6, "us")
        for i, s in enumerate(strategies):
            lat = {r["tokens"]: r["latency_s"] * scale for r in sub if r["strategy"] == s}
            xs = [t + (i - (len(strategies) - 1) / 2) * width for t in range(len(tokens))]
            ax.bar(xs, [lat.get(t, 0.0) for t in tokens], width, label=s, color=colors(i % 10))
        ax.set_xticks(range(len(tokens)), [str(t) for t in tokens])
        ax.set_title(f"{model} on {target}")
        ax.set_xlabel("tokens per iteration")
        ax.set_ylabel(f"latency ({unit})")
    # one legend for all panels, outside them, so it never covers a bar
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 5),
               fontsize="small")  # fmt: skip
    buf = io.BytesIO()
    fmt = path.rsplit(".", 1)[-1] if "." in path else "png"
    # A fixed creation date keeps the file's bytes deterministic.
    fig.savefig(buf, format=fmt, metadata={"Software": None} if fmt == "png" else None)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
