"""Serving runs: the API behind ``moec run --iterations N`` and ``moec bench --iterations N``.

The routing of a serving run is a sequence (:mod:`moec.ir.routing_seq`): a ``synth:...`` spec
(``drift=``/``burst=`` add temporal structure) makes one of N iterations for the program's
layers; a trace file of version 2 gives its own iterations (it must have at least N); a
version-1 file has one iteration and cannot drive N > 1. A program with weights and no
``--routing`` runs numerics on N batches of seeded inputs (seeds ``seed``, ``seed + 1``, ...).
The simulation itself is :func:`moec.backends.interp.serving.simulate_iterations`.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from moec.backends.interp import render
from moec.backends.interp.batching import continuous_batching, parse_arrivals
from moec.backends.interp.numerics import load_weights, seeded_inputs
from moec.backends.interp.residency import POLICIES, residency_rewrite
from moec.backends.interp.serving import ServingResult, simulate_iterations
from moec.compiler.bench.row import Serving
from moec.ir.errors import TraceError
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.routing_seq import RoutingSequence, load_sequence, spec_sequence
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import Program
from moec.ir.target import Target


def routing_sequence(
    spec: str | SynthSpec | RoutingSequence | RoutingTrace,
    shapes: list[tuple[int, int]],
    tokens: int | None,
    num_dies: int,
    iterations: int,
    model: str,
) -> RoutingSequence:
    """The first ``iterations`` iterations of a routing spec, file or sequence, for layers
    ``shapes`` (a file's sequence is cut to that many layers and re-homed to ``num_dies``)."""
    parsed = parse_routing_spec(spec) if isinstance(spec, str) else spec
    where = spec if isinstance(spec, str) else "--routing"
    if isinstance(parsed, SynthSpec):
        if tokens is None:
            raise TraceError("give the tokens per iteration for a synthetic routing", where)
        return spec_sequence(parsed, shapes, tokens, num_dies, iterations, model=model)
    if isinstance(parsed, RoutingTrace):
        seq = RoutingSequence([parsed])
    else:
        seq = parsed if isinstance(parsed, RoutingSequence) else load_sequence(parsed)
    if len(seq) < iterations:
        raise TraceError(
            f"the routing has {len(seq)} iterations, --iterations asks for {iterations}", where
        )
    seq = seq.head(iterations)
    if len(seq[0].layers) < len(shapes):
        raise TraceError(
            f"the routing has {len(seq[0].layers)} MoE layers, the run needs {len(shapes)}", where
        )
    seq = seq.layers_head(len(shapes))
    if seq.num_dies != num_dies:
        seq = seq.rehome(num_dies)
    return seq


def run_serving(
    program: Program,
    tgt: Target,
    *,
    iterations: int,
    routing: str | None,
    seed: int,
    base: str,
    residency: str | None = None,
    arrivals: str | None = None,
    allow_overflow: bool = False,
) -> ServingResult:
    """``moec run --iterations``: numerics on seeded inputs when the program has weights and no
    routing is given, else timing on the routing (default ``synth:zipf=1.0,seed=<seed>``).
    ``allow_overflow``: run a schedule past a die's SRAM (``--allow-overflow``)."""
    tokens = {m.tokens for m in program.layers}
    T = tokens.pop() if len(tokens) == 1 else None
    rewrite = residency_rewrite(program, tgt, residency) if residency else None
    if program.weights is not None and routing is None:
        weights = load_weights(program, base)
        inputs = [seeded_inputs(weights, T or 1, seed + i) for i in range(iterations)]
        result = simulate_iterations(
            program, iterations=iterations, target=tgt, inputs=inputs, base_dir=base,
            rewrite=rewrite, allow_overflow=allow_overflow,
        )  # fmt: skip
    else:
        spec = routing or f"synth:zipf=1.0,seed={seed}"
        shapes = [(m.experts, m.top_k) for m in program.layers]
        seq = routing_sequence(spec, shapes, T, tgt.num_dies, iterations, program.name)
        result = simulate_iterations(
            program, iterations=iterations, target=tgt, routings=seq, base_dir=base,
            rewrite=rewrite, allow_overflow=allow_overflow,
        )  # fmt: skip
    if rewrite is not None:
        result.extra.update(rewrite.stats())
    if arrivals:
        result.extra["arrivals"] = arrivals_of(result, arrivals)
    return result


def serving_row(
    program: Program,
    tgt: Target,
    seq: RoutingSequence,
    iterations: int,
    residency: str | None,
    bound: Callable[[list[LayerRouting]], float],
    arrivals: str | None = None,
    allow_overflow: bool = False,
) -> Serving:
    """The serving figures of a bench row: ``iterations`` of ``program`` on ``seq``
    (``allow_overflow``: past a die's SRAM, with ``sram_over_bytes`` in the row).

    They replace the row's single-iteration ``latency_s`` by the mean iteration latency
    (makespan / iterations, dense islands included) and ``bound_s`` by the mean over the
    iterations of ``bound`` (one iteration's analytic bound for that iteration's routing after
    rules, deferred experts excluded), so ``tokens_per_s = tokens / latency_s <= tokens /
    bound_s`` (iterations are separated by the program's barriers, and each one's work includes
    its own non-deferred pairs). The first iteration's figures stay as
    ``first_iteration_latency_s`` / ``first_iteration_bound_s``. With residency the bound counts
    loads that are not made: the row says ``bound_excludes_residency``."""
    rewrite = residency_rewrite(program, tgt, residency) if residency else None
    result = simulate_iterations(
        program, iterations=iterations, target=tgt, routings=seq, verify=False, rewrite=rewrite,
        allow_overflow=allow_overflow,
    )  # fmt: skip
    metrics = result.metrics.to_dict()
    bounds = [bound(rs) for rs in result.routings]
    return Serving(
        latency_s=result.metrics.makespan_s / iterations,
        bound_s=float(np.mean(bounds)) if bounds else 0.0,
        iterations=iterations,
        **{k: metrics[k] for k in Serving.METRICS},
        sram_over_bytes=(
            int(result.report.extra["sram_over_bytes"])
            if "sram_over_bytes" in result.report.extra
            else None
        ),
        residency=rewrite.stats() if rewrite is not None else None,
        arrivals=arrivals_of(result, arrivals) if arrivals else None,
        **_run_energy(result.report.energy_j, metrics["tokens_per_s"], result.metrics.makespan_s),
    )


def _run_energy(energy_j: float, tokens_per_s: float, makespan_s: float) -> dict[str, float]:
    """The whole serving run's joules and joules per token served (none without an energy
    ledger: a run with no energy charged)."""
    tokens = tokens_per_s * makespan_s
    if energy_j <= 0 or tokens <= 0:
        return {}
    return {"energy_j": energy_j, "energy_per_token_j": energy_j / tokens}


def arrivals_of(result: ServingResult, spec: str) -> list[dict[str, Any]]:
    """Continuous batching with Poisson arrivals over the run's iteration times
    (:mod:`moec.backends.interp.batching`), one entry per rate."""
    m = result.metrics
    return continuous_batching(
        m.iteration_latency_s.tolist(), m.tokens, parse_arrivals(spec), m.iterations
    )


def serving_doc(result: ServingResult) -> dict[str, Any]:
    """The JSON form: the run's report without per-layer spans (there are N x layers of them),
    and ``serving``, the metrics."""
    doc = result.report.to_dict()
    doc.pop("layers", None)
    doc.pop("islands", None)
    doc["serving"] = result.metrics.to_dict()
    doc["serving"].update(result.extra)
    return doc


def render_serving(result: ServingResult) -> str:
    """A table of the serving metrics, then the run's resources (no per-layer table)."""
    buf = io.StringIO()
    con = Console(file=buf, width=110, force_terminal=False, color_system=None)
    t = Table(
        title=f"serving: {result.metrics.iterations} iterations x {result.metrics.tokens} tokens"
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in {**result.metrics.to_dict(), **result.extra}.items():
        if k in ("iterations", "tokens") or isinstance(v, list):
            continue
        t.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    con.print(t)
    for a in result.extra.get("arrivals", []):
        con.print(
            f"poisson {a['rate']:g} req/s x {a['length']} tokens: "
            f"{a['throughput_tokens_per_s']:.4g} tokens/s, TTFT p99 {a['ttft_p99_s']:.4g} s, "
            f"TPOT p99 {a['tpot_p99_s']:.4g} s, occupancy {100 * a['slot_occupancy']:.1f}%"
        )
    quiet = dataclasses.replace(result.report, layers=[], islands=[])
    return buf.getvalue() + render(quiet)


def serving_json(result: ServingResult) -> str:
    return json.dumps(serving_doc(result), indent=2, default=_plain) + "\n"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


__all__ = [
    "POLICIES", "render_serving", "routing_sequence", "run_serving", "serving_doc",
    "serving_json", "serving_row",
]  # fmt: skip
