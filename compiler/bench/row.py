"""One bench row as a typed record: the ``moec bench --json`` schema, declared once.

:func:`moec.bench.run_point` fills a :class:`BenchRow` and hands out :meth:`BenchRow.to_json`, the
plain dict the table, the JSON output, the sweep journal and the scripts read (``Row``). Optional
parts appear only when present, in this order, so the JSON is what it always was. A serving
row (``--iterations``) carries a :class:`Serving` record: the JSON then shows its per-iteration
means as ``latency_s``/``bound_s`` and the single iteration's as ``first_iteration_*``.

A new figure is a field with a default (``None``: absent) and one line in ``to_json`` at the
place it should appear; a group of figures is a small frozen dataclass with its own ``to_json``.
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
class Energy:
    """The MoE layers' energy in one iteration: their ops' dynamic energy plus static power over
    ``latency_s`` (the interpreter's energy ledger), per part (:data:`moec.ir.energy.PARTS`)."""

    breakdown_j: dict[str, float]
    latency_s: float
    tokens: int

    def to_json(self) -> Row:
        """``energy_j``, ``energy_per_token_j`` (over the batch), ``edp`` (J s), the breakdown."""
        energy = sum(self.breakdown_j.values())
        return {
            "energy_j": energy,
            "energy_per_token_j": energy / self.tokens if self.tokens > 0 else None,
            "edp": energy * self.latency_s,
            "energy_breakdown_j": dict(self.breakdown_j),
        }


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
class Serving:
    """The figures of a serving row: ``iterations`` run in one simulation
    (:func:`moec.serve.serving_row`). ``latency_s`` and ``bound_s`` are per-iteration means over
    the run; the row's JSON shows them in place of the single iteration's."""

    latency_s: float
    bound_s: float
    iterations: int
    tokens_per_s: float
    iteration_latency_p50_s: float
    iteration_latency_p99_s: float
    token_latency_p50_s: float
    token_latency_p99_s: float
    deferred_pairs: int
    deferred_pairs_final: int
    max_delay_iterations: int
    max_delay_s: float
    dram_bytes_per_token: float
    #: how far the run went past a die's SRAM (only with ``allow_overflow``)
    sram_over_bytes: int | None = None
    #: the residency rewrite's statistics (its own keys), when the run kept slices resident
    residency: dict[str, Any] | None = None
    #: continuous batching over the run's iteration times, one entry per arrival rate
    arrivals: list[dict[str, Any]] | None = None
    #: joules of the whole run (every iteration, dense islands included), and per token served
    energy_j: float | None = None
    energy_per_token_j: float | None = None

    #: the serving metrics the row carries, in JSON order (after ``iterations``)
    METRICS = (
        "tokens_per_s", "iteration_latency_p50_s", "iteration_latency_p99_s",
        "token_latency_p50_s", "token_latency_p99_s", "deferred_pairs", "deferred_pairs_final",
        "max_delay_iterations", "max_delay_s", "dram_bytes_per_token",
    )  # fmt: skip

    def to_json(self) -> Row:
        """The serving keys of the row, after its first iteration's figures."""
        row: Row = {"iterations": self.iterations}
        if self.sram_over_bytes is not None:
            row["sram_over_bytes"] = self.sram_over_bytes
        row.update({k: getattr(self, k) for k in self.METRICS})
        if self.energy_j is not None:
            row["serving_energy_j"] = self.energy_j
            row["serving_energy_per_token_j"] = self.energy_per_token_j
        if self.residency is not None:
            row.update(self.residency)
            row["bound_excludes_residency"] = True
        if self.arrivals is not None:
            row["arrivals"] = self.arrivals
        return row


def over_bound(latency_s: float, bound_s: float) -> float | None:
    """``latency_over_bound``: how far a latency is above its analytic bound (six decimals)."""
    return round(latency_s / bound_s, 6) if bound_s > 0 else None


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
    #: the MoE layers' latency and analytic bound of one iteration (a serving row's first)
    latency_s: float
    bound_s: float
    bound_dram_s: float
    bound_compute_s: float
    peak_sram_bytes_max: int
    dram_bytes: int
    link_bytes: int
    utilization: Utilization
    energy: Energy | None = None
    #: (token, expert) pairs token buffering defers to the next iteration, excluded from the bound
    bound_deferred_pairs: int | None = None
    serving: Serving | None = None
    #: how far the run (the larger of the single and the serving run) went past a die's SRAM,
    #: only with ``allow_overflow``
    sram_over_bytes: int | None = None
    overrides: dict[str, int | float | str] | None = None
    accuracy: Accuracy | None = None
    #: scalar figures the interpreter and the expansions report (``extra`` of the run report)
    extra: dict[str, int | float | str | bool] | None = None

    def to_json(self) -> Row:
        """The row as the ``--json`` dict (``speedup_vs_ep`` is filled in over a whole run)."""
        latency_s, bound_s = self.latency_s, self.bound_s
        if self.serving is not None:
            latency_s, bound_s = self.serving.latency_s, self.serving.bound_s
        row: Row = {
            "model": self.model,
            "target": self.target,
            "tokens": self.tokens,
            "strategy": self.strategy,
            "passes": self.passes,
            "layers": self.layers,
            "latency_s": latency_s,
            "bound_s": bound_s,
            "bound_dram_s": self.bound_dram_s,
            "bound_compute_s": self.bound_compute_s,
            "latency_over_bound": over_bound(latency_s, bound_s),
            "speedup_vs_ep": None,
            "peak_sram_bytes_max": self.peak_sram_bytes_max,
            "dram_bytes": self.dram_bytes,
            "link_bytes": self.link_bytes,
            "utilization": self.utilization.to_json(),
        }
        if self.energy is not None:
            row.update(self.energy.to_json())
        if self.bound_deferred_pairs is not None:
            row["bound_excludes_deferred"] = True
            row["bound_deferred_pairs"] = self.bound_deferred_pairs
        if self.serving is not None:
            row["first_iteration_latency_s"] = self.latency_s
            row["first_iteration_bound_s"] = self.bound_s
            row.update(self.serving.to_json())
        if self.sram_over_bytes is not None:  # a serving row's stays where the serving block put it
            row["sram_over_bytes"] = self.sram_over_bytes
        if self.overrides is not None:
            row["overrides"] = dict(self.overrides)
        if self.accuracy is not None:
            row["accuracy"] = self.accuracy.to_json()
        if self.extra:
            row["extra"] = dict(self.extra)
        return row
