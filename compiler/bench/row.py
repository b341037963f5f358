"""One bench row as a typed record: the ``moec bench --json`` schema, declared once.

:func:`moec.bench.run_point` fills a :class:`BenchRow` and hands out :meth:`BenchRow.to_json`, the
plain dict the table, the JSON output, the sweep journal and the scripts read (``Row``). Optional
parts appear only when present, in this order, so the JSON is what it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class Utilization:
    """Busy fraction of the compute units, DRAM channels and links within the MoE layers."""

    compute: float
    dram: float
    links: float

    def to_json(self) -> dict[str, float]:
        return {"compute": self.compute, "dram": self.dram, "links": self.links}


@dataclass(frozen=True)
class Accuracy:
    """The worst error of the row's program against ONNX Runtime on the original model."""

    max_rel_err: float
    mean_rel_err: float
    cosine: float
    top1_agreement: float | None

    def to_json(self) -> dict[str, float | None]:
        return {
            "max_rel_err": self.max_rel_err, "mean_rel_err": self.mean_rel_err,
            "cosine": self.cosine, "top1_agreement": self.top1_agreement,
        }  # fmt: skip


@dataclass(frozen=True)
class BenchRow:
    """One (model, target, tokens, strategy, passes) point of a bench run (``moec.bench``'s
    module docstring says how each figure is measured)."""

    model: str
    target: str
    tokens: int
    strategy: str
    passes: str
    layers: int
    latency_s: float
    bound_s: float
    bound_dram_s: float
    bound_compute_s: float
    latency_over_bound: float | None
    peak_sram_bytes_max: int
    dram_bytes: int
    link_bytes: int
    utilization: Utilization
    #: (token, expert) pairs token buffering defers to the next iteration, excluded from the bound
    bound_deferred_pairs: int | None = None
    overrides: dict[str, int | float | str] | None = None
    accuracy: Accuracy | None = None
    #: scalar figures the interpreter and the expansions report (``extra`` of the run report)
    extra: dict[str, int | float | str | bool] | None = None

    def to_json(self) -> Row:
        """The row as the ``--json`` dict (``speedup_vs_ep`` is filled in over a whole run)."""
        row: Row = {
            "model": self.model,
            "target": self.target,
            "tokens": self.tokens,
            "strategy": self.strategy,
            "passes": self.passes,
            "layers": self.layers,
            "latency_s": self.latency_s,
            "bound_s": self.bound_s,
            "bound_dram_s": self.bound_dram_s,
            "bound_compute_s": self.bound_compute_s,
            "latency_over_bound": self.latency_over_bound,
            "speedup_vs_ep": None,
            "peak_sram_bytes_max": self.peak_sram_bytes_max,
            "dram_bytes": self.dram_bytes,
            "link_bytes": self.link_bytes,
            "utilization": self.utilization.to_json(),
        }
        if self.bound_deferred_pairs is not None:
            row["bound_excludes_deferred"] = True
            row["bound_deferred_pairs"] = self.bound_deferred_pairs
        if self.overrides is not None:
            row["overrides"] = dict(self.overrides)
        if self.accuracy is not None:
            row["accuracy"] = self.accuracy.to_json()
        if self.extra:
            row["extra"] = dict(self.extra)
        return row
