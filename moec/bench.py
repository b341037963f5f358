"""The bench driver (the API behind ``moec bench``): compile and run every (model, target, tokens, strategy, passes) point.

:func:`run_bench` is what ``moec bench`` and the design-space sweep call. Per point it lowers the
model's first ``layers`` MoE layers (frontend output cached per process) with the strategy, for a
routing trace that every strategy of the point shares (synthetic Zipf by default, so shape-only
presets run at real scale), runs the interpreter timing-only on that trace, and measures the MoE
layers only:

* ``latency_s``: the sum of the MoE layers' spans (first to last instruction of the layer; the
  dense islands, identical for every strategy, are excluded);
* ``utilization``: busy time of the compute units, DRAM channels and links within the MoE layers
  over ``latency_s``, averaged over the dies, channels and link directions;
* ``dram_bytes`` / ``link_bytes``: bytes the MoE layers move (a DRAM load crossing links counts
  on each link it crosses);
* ``peak_sram_bytes_max``: the largest per-die SRAM peak (slots and activations);
* ``energy_j``: the MoE layers' ops' energy (:mod:`moec.ir.cost.energy`) plus static power over
  ``latency_s``, split in ``energy_breakdown_j``; ``energy_per_token_j`` (over the iteration's
  tokens) and ``edp`` (``energy_j x latency_s``);
* ``bound_s``: :func:`moec.compiler.bench.spec.iteration_bound` for the work the iteration
  actually does: the routing after runtime rules (pairs dropped by ``caee-prune`` or
  ``skip-second`` are not work), minus the experts token buffering defers to the next iteration
  (``fsedp`` with ``slack``: recomputed from that routing with the expansion's own
  :func:`~moec.backends.interp.expand.fsedp.deferred_experts`; rows that defer experts carry
  ``"bound_excludes_deferred": true`` and ``bound_deferred_pairs``, which equals the
  interpreter's ``extra.deferred_pairs``), with each expert's bytes and FLOPs at its own
  precision when the layer has a precision plan (``assign-precision``).

**Serving** (``iterations > 1`` or ``residency``): the row also runs the iterations in one
simulation (:func:`moec.serve.serving_row`): ``latency_s`` and ``bound_s``
become per-iteration means over the run, and the row gains ``iterations``, ``tokens_per_s``,
latency percentiles and ``deferred_pairs_final``.

**Accuracy** (``accuracy=True``, or ``None``: whenever the model has real weights). Per row, the
model is compiled for the row's target, strategy and pass pipeline with seeded inputs (seed
:data:`ACCURACY_SEED`) of the row's token count (:func:`moec.compiler.bench.spec.accuracy_dims`),
the interpreter runs its numerics, and the outputs are compared with ONNX Runtime on the
original model (:mod:`moec.approx`): the row gets ``"accuracy": {"max_rel_err",
"mean_rel_err", "cosine", "top1_agreement"}`` (worst over the graph outputs; top-1 is None when
no output has a class axis). It is the whole model's accuracy, every MoE layer compiled with the
pipeline, whatever ``layers`` is (timing is per simulated layer, accuracy is of the model); the
routing is the model's own router on those inputs, not the timing trace; popularity-aware
strategies place from their own defaults there (placement changes only the order of
accumulation, and what runtime rules see). Shape-only models have no weights: their rows carry
no ``accuracy`` key.

Each point compiles its own program: the frontend's graph IR is cached per process (and per
``--passes`` pipeline) and lowering one to four layers takes milliseconds, while the program is
specific to the token count and, for popularity-aware strategies, to the expert loads, so there is
nothing worth sharing between points. The 64-run 2x2 grid takes about 10 s on this machine.

Popularity-aware strategies (those with a ``calibration`` option: ``hydra``, ``eplb``) decide
their placement at compile time from expert loads. ``calibration="sample"`` (the default) gives
them a separate calibration trace of the same synthetic distribution (same Zipf exponent and
seed, so the same hot experts, with :data:`CALIBRATION_TOKENS` tokens), as a deployment would
profile it; ``calibration="same"`` lets them see the very batch they run (an oracle); a path
names a trace file. Drawn from the same generators, the sample's first rows are the batch itself
(a quarter of the sample at 1024 tokens): the batch is cut from it rather than drawn again.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from moec.backends.interp import simulate
from moec.backends.interp.simulate import gc_paused
from moec.backends.interp.summary import layer_parts, moe_summary
from moec.backends.interp.timing import Timeline
from moec.compiler.bench.report import add_speedups
from moec.compiler.bench.row import Accuracy, BenchRow, Energy, Row, Utilization
from moec.compiler.bench.spec import (
    BenchError,
    accuracy_dims,
    canonical_model,
    iteration_bound,
    load_bench_model,
    parse_layers,
    read_bench_model,
    truncate,
)
from moec.compiler.lower import STRATEGIES, parse_strategy
from moec.compiler.lower import _load_strategies as load_strategies
from moec.compiler.lower.slots import check_tokens_fit
from moec.fsedp_slices import lower_run
from moec.ir.errors import MoecError
from moec.ir.graph import Module
from moec.ir.routing import LayerRouting, RoutingTrace, save_trace
from moec.ir.routing_seq import load_sequence
from moec.ir.routing_synth import SynthSpec, first_tokens, parse_routing_spec
from moec.ir.stream import Program, TargetRef
from moec.ir.stream.params import FSEDPParams, strategy_params
from moec.ir.target import Target, load_target

if TYPE_CHECKING:
    from moec.check import Reference

#: Tokens of the calibration sample given to popularity-aware strategies by default.
CALIBRATION_TOKENS = 4096
DEFAULT_ROUTING = "synth:zipf=1.0,seed=0"
#: Seed of the accuracy inputs of every row.
ACCURACY_SEED = 0

Overrides = Sequence[tuple[str, int | float | str]]


def known_strategies() -> list[str]:
    """Every registered lowering strategy, sorted."""
    load_strategies()
    return sorted(STRATEGIES)


def moe_metrics(tl: Timeline) -> dict[str, Any]:
    """Latency, utilization and bytes of the MoE layers of a timing run (see module doc): each
    layer's ops summed (:func:`~moec.backends.interp.summary.layer_parts`, or the parts a
    layer-by-layer run kept), then the layers in the order they first run."""
    parts = tl.summary.parts if tl.summary is not None else layer_parts(tl)
    return moe_summary(parts, tl.target, tl.energy is not None)


class _Workloads:
    """Routing and calibration traces, and truncated modules, made once per run."""

    def __init__(self, routing: str | RoutingTrace, calibration: str, tmp: str) -> None:
        self.routing, self.calibration, self.tmp = routing, calibration, tmp
        self.spec = parse_routing_spec(routing) if isinstance(routing, str) else routing
        self._traces: dict[tuple[Any, ...], RoutingTrace] = {}
        self._calib: dict[tuple[Any, ...], str | None] = {}
        self._modules: dict[tuple[str, int, str], Module] = {}
        self._references: dict[tuple[str, int], Reference] = {}

    def reference(self, model: str, tokens: int) -> Reference:
        """Seeded inputs of ``tokens`` tokens and ORT's outputs on the original ``model``."""
        key = (model, tokens)
        if key not in self._references:
            from moec.check import reference_run  # imports onnxruntime

            spec = model if model.endswith(".onnx") else canonical_model(model)
            dims = accuracy_dims(load_bench_model(model).module, tokens, model)
            self._references[key] = reference_run(spec, seed=ACCURACY_SEED, dims=dims)
        return self._references[key]

    def module(self, model: str, layers: int, passes: str) -> Module:
        key = (model, layers, passes)
        if key not in self._modules:
            if passes.strip():
                from moec.compiler.passes import parse_pipeline

                base = truncate(read_bench_model(model).module, layers)
                self._modules[key] = parse_pipeline(passes).run(base)
            else:
                self._modules[key] = truncate(load_bench_model(model).module, layers)
        return self._modules[key]

    def trace(self, model: str, layers: int, tokens: int | None, num_dies: int) -> RoutingTrace:
        key = (model, layers, tokens, num_dies)
        if key in self._traces:
            return self._traces[key]
        bm = load_bench_model(model)
        shapes = bm.layer_shapes()[:layers]
        if isinstance(self.spec, SynthSpec):
            if tokens is None:
                raise BenchError("--tokens: give the tokens per iteration for a synthetic routing")
            trace = self.spec.make(shapes, tokens, num_dies, model=bm.name)
        else:
            trace = (
                self.spec if isinstance(self.spec, RoutingTrace) else load_sequence(self.spec)[0]
            )
            where = self.spec if isinstance(self.spec, str) else "--routing"
            if len(trace.layers) < layers:
                raise BenchError(
                    f"the routing trace has {len(trace.layers)} MoE layers, --layers asks for "
                    f"{layers}",
                    where,
                )
            trace = trace.head(layers)
            if tokens is not None and trace.tokens != tokens:
                raise BenchError(
                    f"--tokens {tokens}: the routing trace has {trace.tokens} tokens per layer",
                    where,
                )
            if trace.num_dies != num_dies:
                trace = trace.rehome(num_dies)
        self._traces[key] = trace
        return trace

    def calibration_file(
        self, model: str, layers: int, num_dies: int, tokens: int | None = None
    ) -> str | None:
        """Path of the calibration trace for popularity-aware strategies (None: use the batch).
        A synthetic batch of ``tokens`` tokens not drawn yet is the calibration's first rows
        (:func:`~moec.ir.routing_synth.first_tokens`): kept for :meth:`trace`."""
        if self.calibration == "same":
            return None
        if self.calibration != "sample":
            return self.calibration
        key = (model, layers, num_dies)
        if key not in self._calib:
            if not isinstance(self.spec, SynthSpec):
                self._calib[key] = None  # a recorded trace calibrates on itself
            else:
                bm = load_bench_model(model)
                trace = self.spec.make(
                    bm.layer_shapes()[:layers], CALIBRATION_TOKENS, num_dies, model=bm.name
                )
                path = os.path.join(self.tmp, f"calib{len(self._calib)}.npz")
                save_trace(trace, path, compress=False)  # a scratch file: deflate is 0.7 s
                self._calib[key] = path
                batch = (model, layers, tokens, num_dies)
                if tokens is not None and tokens <= trace.tokens and batch not in self._traces:
                    self._traces[batch] = first_tokens(trace, tokens, self.spec.home)
        return self._calib[key]


def has_weights(model: str) -> bool:
    """Whether every MoE layer of ``model`` has real weights (accuracy can be measured)."""
    return all(layer.weights_present for layer in load_bench_model(model).layers)


def row_accuracy(
    work: _Workloads, model: str, target: str, overrides: Overrides, tokens: int,
    strategy: str, passes: str,
) -> Accuracy:  # fmt: skip
    """The accuracy fields of one row (see the module docstring)."""
    from moec.approx import approx_run, summarize

    ref = work.reference(model, tokens)
    run = approx_run(ref, passes, target=target, overrides=overrides, strategy=strategy)
    got = sorted({m.tokens for m in run.program.layers})
    if got != [tokens]:
        raise BenchError(
            f"accuracy inputs of {tokens} tokens give {', '.join(map(str, got))} tokens per MoE "
            "layer (use --no-accuracy)",
            model,
        )
    # six significant digits: readable JSON, and an error of 1e-7 still shows
    worst = {
        k: (float(f"{v:.6g}") if v is not None else None) for k, v in summarize(run.outputs).items()
    }
    return Accuracy(**worst)  # type: ignore[arg-type]


def deferred_by_layer(program: Program, routings: Sequence[LayerRouting]) -> list[list[int]]:
    """Per MoE layer of ``program``, the experts token buffering defers for ``routings`` (the
    routing the expansion saw): the ``fsedp`` expansion's own selection, for its ``slack``."""
    from moec.backends.interp.expand.fsedp import deferred_experts

    out: list[list[int]] = []
    for m, r in zip(program.layers, routings, strict=False):
        policy = program.policy(m.name)
        params = strategy_params(policy, m) if policy is not None else None
        slack = params.slack if isinstance(params, FSEDPParams) else 0.0
        if slack <= 0:
            out.append([])
            continue
        ids = np.asarray(r.ids)
        load = np.bincount(ids[ids >= 0], minlength=r.num_experts).astype(np.int64).tolist()
        out.append(deferred_experts(load, r.tokens, float(slack)))
    return out


# The collector stays off until the run's objects are gone (the function's frame, inside the
# pause): switched back on while the expanded program and its timeline were alive, its next
# collection rescanned them all (about a tenth of a whole-model run).
@gc_paused()
def run_point(
    work: _Workloads,
    model: str,
    target: str,
    overrides: Overrides,
    tgt: Target,
    tokens: int | None,
    strategy: str,
    layers: int,
    passes: str,
    accuracy: bool = False,
    iterations: int = 1,
    residency: str | None = None,
    arrivals: str | None = None,
    allow_overflow: bool = False,
) -> Row:
    """One (model, target, tokens, strategy, passes) point: compile, run, measure (and, with
    ``accuracy``, measure what the pipeline costs in accuracy). A run past a die's SRAM fails
    unless ``allow_overflow``; then the row carries ``sram_over_bytes``."""
    bm = load_bench_model(model)
    if tokens is not None:  # an impossible batch fails here, before its trace is drawn
        check_tokens_fit(bm.layers[:layers], tgt, tokens, bm.name)
    module = work.module(model, layers, passes)
    name, options = parse_strategy(strategy)
    load_strategies()
    known = STRATEGIES.get(name)
    if known is not None and "calibration" in known.options and "calibration" not in options:
        path = work.calibration_file(model, layers, tgt.num_dies, tokens)  # before the batch
        if path is not None:
            options["calibration"] = path
    trace = work.trace(model, layers, tokens, tgt.num_dies)
    program, result = lower_run(
        module, TargetRef(target, tuple(overrides)), name, options, trace, run=True
    )  # fmt: skip
    if result is None:  # else the slice choice's measurement was this very run
        result = simulate(
            program, target=tgt, routings=trace, verify=False, allow_overflow=allow_overflow,
            layered=True,
        )  # fmt: skip
    metrics = moe_metrics(result.timeline)
    precision = program.layers[0].dtype if program.layers else "fp16"
    deferred = deferred_by_layer(program, result.routings)
    plans = [
        list(pol.precision) if (pol := program.policy(m.name)) is not None else []
        for m in program.layers
    ]
    bound = iteration_bound(tgt, bm.layers[:layers], result.routings, precision, deferred, plans)
    deferred_pairs = None
    if any(deferred):
        deferred_pairs = int(
            sum(
                np.isin(np.asarray(r.ids), d).sum()
                for r, d in zip(result.routings, deferred, strict=False)
                if d
            )
        )
    serving = None
    if iterations > 1 or residency or arrivals:  # serving: N iterations in one simulation
        from moec.serve import routing_sequence, serving_row

        seq = routing_sequence(
            work.spec, bm.layer_shapes()[:layers], trace.tokens, tgt.num_dies, iterations, bm.name
        )

        def bound_of(rs: list[LayerRouting]) -> float:
            d = deferred_by_layer(program, rs)
            return iteration_bound(tgt, bm.layers[:layers], rs, precision, d, plans).bound_s

        serving = serving_row(
            program, tgt, seq, iterations, residency, bound_of, arrivals, allow_overflow
        )
    sram_over = None
    if "sram_over_bytes" in result.report.extra:  # only with allow_overflow
        sram_over = int(result.report.extra["sram_over_bytes"])
        if serving is not None and serving.sram_over_bytes is not None:
            sram_over = max(sram_over, serving.sram_over_bytes)
    extra = {
        k: v for k, v in {**result.report.extra, **result.extra}.items()
        if isinstance(v, int | float | str | bool)
    }  # fmt: skip
    util = metrics["utilization"]
    return BenchRow(
        model=bm.name,
        target=tgt.name if not overrides else target,
        tokens=trace.tokens,
        strategy=strategy,
        passes=passes,
        layers=layers,
        latency_s=metrics["latency_s"],
        bound_s=bound.bound_s,
        bound_dram_s=bound.dram_s,
        bound_compute_s=bound.compute_s,
        peak_sram_bytes_max=int(max(result.report.peak_sram_bytes, default=0)),
        dram_bytes=metrics["dram_bytes"],
        link_bytes=metrics["link_bytes"],
        utilization=Utilization(util["compute"], util["dram"], util["links"]),
        energy=Energy(metrics["energy_breakdown_j"], metrics["latency_s"], trace.tokens),
        bound_deferred_pairs=deferred_pairs,
        serving=serving,
        sram_over_bytes=sram_over,
        overrides={k: v for k, v in overrides} if overrides else None,
        accuracy=(
            row_accuracy(work, model, target, overrides, trace.tokens, strategy, passes)
            if accuracy
            else None
        ),
        extra=extra or None,
    ).to_json()


def run_bench(
    models: str | Sequence[str],
    targets: str | Sequence[str],
    tokens: Sequence[int | None],
    strategies: Sequence[str],
    *,
    routing: str | RoutingTrace = DEFAULT_ROUTING,
    calibration: str = "sample",
    layers: int | str | None = 1,
    passes: Sequence[str] = ("",),
    overrides: Overrides | Mapping[str, int | float | str] = (),
    accuracy: bool | None = False,
    on_row: Callable[[Row], None] | None = None,
    keep_going: bool = False,
    iterations: int = 1,
    residency: str | None = None,
    arrivals: str | None = None,
    allow_overflow: bool = False,
) -> list[Row]:
    """Run every (model, target, tokens, strategy, passes) point; rows in that nesting order,
    with ``speedup_vs_ep`` filled in where the point has an ``ep`` row. ``tokens`` may be
    ``[None]`` with a recorded trace (its own token count). ``on_row`` sees each row as it is
    made (progress bars). ``accuracy``: measure each row's accuracy where the model has weights
    (True: and at least one model of the run must have them; None: where they exist, silently;
    False: never). ``keep_going``: a point that fails becomes a row with its one-line ``error``
    (and no metrics) instead of ending the run; if every point fails, the first error is raised.
    ``allow_overflow``: a point past a die's SRAM still gives a row, with ``sram_over_bytes``
    (``--allow-overflow``); otherwise it fails like any schedule that does not fit."""
    model_list = [models] if isinstance(models, str) else list(models)
    target_list = [targets] if isinstance(targets, str) else list(targets)
    ovr = tuple(overrides.items()) if isinstance(overrides, Mapping) else tuple(overrides)
    if accuracy is True and not any(has_weights(m) for m in model_list):
        raise BenchError(
            "--accuracy: every model of the run is shape-only (no weights), nothing to measure",
            ", ".join(model_list),
        )
    rows: list[Row] = []
    failures: list[MoecError] = []
    with tempfile.TemporaryDirectory(prefix="moec-bench-") as tmp:
        work = _Workloads(routing, calibration, tmp)
        for model in model_list:
            n = parse_layers(layers, len(load_bench_model(model).layers))
            measure = accuracy is not False and has_weights(model)
            for target in target_list:
                tgt = load_target(target, dict(ovr))
                for T in tokens:
                    for pipeline in passes:
                        for s in strategies:
                            try:
                                row = run_point(
                                    work,
                                    model,
                                    target,
                                    ovr,
                                    tgt,
                                    T,
                                    s,
                                    n,
                                    pipeline,
                                    measure,
                                    iterations,
                                    residency,
                                    arrivals,
                                    allow_overflow,
                                )
                            except MoecError as err:
                                if not keep_going:
                                    raise
                                failures.append(err)
                                row = failed_row(model, target, T, s, pipeline, n, err)
                            rows.append(row)
                            if on_row is not None:
                                on_row(row)
    if failures and len(failures) == len(rows):
        raise failures[0]
    return add_speedups(rows)


def failed_row(
    model: str, target: str, tokens: int | None, strategy: str, passes: str, layers: int,
    err: MoecError,
) -> Row:  # fmt: skip
    """The row of a point that could not run: its coordinates and the one-line ``error``."""
    return {
        "model": model, "target": target, "tokens": tokens, "strategy": strategy,
        "passes": passes, "layers": layers, "error": err.one_line(), "latency_s": None,
        "speedup_vs_ep": None,
    }  # fmt: skip


def timed(fn: Callable[[], list[Row]]) -> tuple[list[Row], float]:
    """``fn()`` and its wall time in seconds."""
    start = time.perf_counter()
    rows = fn()
    return rows, time.perf_counter() - start
