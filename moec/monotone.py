"""Monotonicity of a schedule in the hardware: more of a resource should not make it slower.

For one (model, target, tokens, strategy) point, :func:`check_point` runs the bench point on the
target as given and with more of each resource, and returns every comparison:

* **SRAM**: the per-die SRAM stepped up through :data:`SRAM_STEPS` MiB from the target's own;
  each step must not increase the latency at all (a lowering that cuts slices by what fits must
  not get slower when more fits);
* **DRAM** and **D2D** bandwidth: the target's total DRAM GB/s and its link GB/s times each of
  :data:`BANDWIDTH_FACTORS`; the latency may rise by at most :data:`BANDWIDTH_TOLERANCE` (a
  faster channel can reorder contended loads; a larger rise is a scheduling defect).

A point that does not fit at the smaller resource (``n/f``) is skipped; one that fits there but
not with more of it is a violation. The strategy ``auto`` is the search (:func:`auto_latency`).
``scripts/monotonicity.py`` runs the paper grid and prints
every violation; ``tests/test_monotonicity.py`` runs a subset (the whole grid under ``slow``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moec.bench import run_bench
from moec.compiler.bench.spec import load_bench_model, truncate
from moec.ir.errors import MoecError
from moec.ir.stream import TargetRef
from moec.ir.target import MIB, load_target

#: SRAM per die (MiB) compared after the target's own, ascending.
SRAM_STEPS = (24, 32, 64)
#: Multiples of the target's DRAM and D2D bandwidth compared against the target as given.
BANDWIDTH_FACTORS = (1.5, 2.0)
#: How much more bandwidth may raise the latency (relative).
BANDWIDTH_TOLERANCE = 0.01


@dataclass(frozen=True)
class Comparison:
    """Latency with less (``before``) and more (``after``) of ``resource`` at one point."""

    model: str
    target: str
    tokens: int
    strategy: str
    resource: str  # "sram", "dram" or "d2d"
    less: str  # the resource setting, e.g. "16 MiB"
    more: str
    before_s: float | None  # None: does not fit
    after_s: float | None

    @property
    def rise(self) -> float:
        """Relative latency change from less to more (positive: slower with more)."""
        if self.before_s is None or self.after_s is None:
            return 0.0
        return self.after_s / self.before_s - 1.0

    @property
    def allowed(self) -> float:
        return 0.0 if self.resource == "sram" else BANDWIDTH_TOLERANCE

    @property
    def violated(self) -> bool:
        if self.before_s is None:
            return False
        if self.after_s is None:
            return True  # fitted with less, not with more
        return self.rise > self.allowed + 1e-9

    def line(self) -> str:
        ms = lambda s: "n/f" if s is None else f"{s * 1e3:.3f} ms"  # noqa: E731
        return (
            f"{self.model} {self.target} {self.tokens} tokens {self.strategy}: {self.resource} "
            f"{self.less} -> {self.more}: {ms(self.before_s)} -> {ms(self.after_s)} "
            f"({self.rise * 100:+.2f}%)"
        )


def auto_latency(
    model: str, target: str, tokens: int, overrides: dict[str, float]
) -> float | None:  # fmt: skip
    """``--strategy auto``'s latency at a bench point: the search (default budget) on the bench's
    default routing of one MoE layer, its winner's measured latency (None: nothing fits)."""
    from moec.auto import default_routing, search

    module = truncate(load_bench_model(model).module, 1)
    ref = TargetRef(target, tuple(sorted(overrides.items())))
    try:
        routing = default_routing(module, ref, tokens=tokens)
        return search(module, ref, routing, tokens=tokens).winner.measured_s
    except MoecError:
        return None


def _latency(
    model: str, target: str, tokens: int, strategies: Sequence[str], overrides: dict[str, float]
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for s in strategies:
        if s == "auto":
            out[s] = auto_latency(model, target, tokens, overrides)
            continue
        try:
            rows = run_bench(model, target, [tokens], [s], overrides=overrides)
            out[s] = float(rows[0]["latency_s"])
        except MoecError:
            out[s] = None
    return out


def check_point(
    model: str, target: str, tokens: int, strategies: Sequence[str],
    resources: Sequence[str] = ("sram", "dram", "d2d"),
) -> list[Comparison]:  # fmt: skip
    """Every comparison of ``resources`` at (``model``, ``target``, ``tokens``) for each
    strategy (module docstring)."""
    t = load_target(target, {})
    sram = t.dies[0].sram_bytes / MIB
    base = _latency(model, target, tokens, strategies, {})
    out: list[Comparison] = []

    def add(resource: str, less: str, more: str, a: dict, b: dict) -> None:
        for s in strategies:
            out.append(Comparison(model, target, tokens, s, resource, less, more, a[s], b[s]))

    if "sram" in resources:
        prev, prev_mib = base, sram
        for mib in (m for m in SRAM_STEPS if m > sram):
            cur = _latency(model, target, tokens, strategies, {"sram_mib_per_die": mib})
            add("sram", f"{prev_mib:g} MiB", f"{mib:g} MiB", prev, cur)
            prev, prev_mib = cur, mib
    for resource, key, value in (
        ("dram", "ddr_gbps_total", t.total_dram_gbps()),
        ("d2d", "d2d_gbps", t.links[0].gbps if t.links else 0.0),
    ):
        if resource not in resources or value <= 0:
            continue
        for f in BANDWIDTH_FACTORS:
            cur = _latency(model, target, tokens, strategies, {key: value * f})
            add(resource, f"{value:g} GB/s", f"{value * f:g} GB/s", base, cur)
    return out
