"""Whole-model latency of ``--strategy auto`` with per-layer choice against every single strategy.

    python scripts/per_layer_auto.py --model qwen3-30b-a3b --target fsedp-3x3 --tokens 64 \\
        --zipf 0.6,1.0,1.6,1.2                 # four MoE layers, each its own Zipf exponent
    python scripts/per_layer_auto.py --model models/tiny_moe_lm.onnx --target fsedp-4x4 \\
        --trace lm64.json                      # the trained LM's dumped routing (2 layers)

The model's first N MoE layers run on one routing: with ``--zipf z0,z1,...`` layer i is layer i
of ``synth:zipf=zi,seed=S`` (so the layers differ in skew and hot experts), with ``--trace`` a
recorded trace (its tokens). The six fixed strategies (ep, hydra, eplb, tp, fsedp,
fsedp-paired) are lowered for that routing (Hydra and EPLB calibrate on it, as ``moec compile
--routing`` does) and timed by the interpreter on the whole model (the MoE layers' spans, as
``moec bench`` measures them); ``auto`` searches on the same routing (:func:`moec.auto.search`,
default budget) and its winner, a single strategy or a per-layer program, is timed the same
way. Prints one Markdown row per run: every fixed strategy's latency, the best of them, auto's
best single candidate, auto's winner, its per-layer choice and the merged per-layer program's
latency (``-``: every layer chose the same; else its time, or why it was not run).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moec.auto import measure, search
from moec.compile import load_model
from moec.compiler.bench.spec import truncate
from moec.compiler.lower import lower, parse_strategy
from moec.ir.errors import MoecError
from moec.ir.routing import RoutingTrace, load_trace
from moec.ir.routing_synth import synth_layers
from moec.ir.stream import TargetRef
from moec.ir.target import load_target

FIXED = ("ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired")


def routing_of(
    module: Any, target: str, tokens: int, zipfs: list[float], seed: int
) -> RoutingTrace:
    """Layer i of ``synth:zipf=zipfs[i],seed=seed`` for each of the module's first layers."""
    shapes = [(op.layer.num_experts, op.layer.top_k) for op in module.moe_ops()]
    dies = load_target(target, {}).num_dies
    layers = [
        synth_layers(shapes, tokens, zipf=z, seed=seed, num_dies=dies, model=module.name).layers[i]
        for i, z in enumerate(zipfs)
    ]
    provenance = {"source": "synth", "distribution": "zipf", "zipf": zipfs, "seed": seed}
    return RoutingTrace(module.name, dies, layers, provenance)


def row(model: str, target: str, trace: RoutingTrace, module: Any, budget: int | None) -> str:
    ref = TargetRef(target, ())
    tgt = load_target(target, {})
    fixed: dict[str, float | None] = {}
    for s in FIXED:
        name, opts = parse_strategy(s)
        try:
            fixed[s] = measure(lower(module, ref, name, opts, trace), tgt, trace)[0]
        except MoecError:
            fixed[s] = None
    found = search(module, ref, trace, **({} if budget is None else {"budget": budget}))
    singles = [
        t for t in found.trials
        if t.status == "measured" and t.measured_s is not None
        and not t.strategy.startswith("per-layer")
    ]  # fmt: skip
    single = min(singles, key=lambda t: (t.measured_s, found.trials.index(t)))
    ok = {s: v for s, v in fixed.items() if v is not None}
    best = min(ok, key=lambda s: (ok[s], FIXED.index(s)))
    w = found.winner
    assert w.measured_s is not None and single.measured_s is not None
    choice = ", ".join(f"{c.layer} `{c.strategy}`" for c in found.layers)
    mixed = next((t for t in found.trials if t.strategy.startswith("per-layer")), None)
    merged = "-" if mixed is None else (
        f"{mixed.measured_s * 1e3:.4g}" if mixed.measured_s is not None else mixed.status
    )  # fmt: skip
    cells = " | ".join("n/f" if v is None else f"{v * 1e3:.4g}" for v in fixed.values())
    skew = trace.provenance.get("zipf", "recorded")
    return (
        f"| {model} | {target} | {trace.tokens} | {len(trace.layers)} | {skew} | {cells} | {best} "
        f"| {single.measured_s * 1e3:.4g} (`{single.strategy}`) | {w.measured_s * 1e3:.4g} "
        f"| {w.measured_s / ok[best]:.3f} | {w.measured_s / single.measured_s:.3f} | {choice} "
        f"| {merged} |"
    )


HEADER = (
    "| model | target | tokens | layers | zipf | "
    + " | ".join(f"{s} ms" for s in FIXED)
    + " | best fixed | auto's best single ms | auto ms | auto / best fixed "
    "| auto / best single | per-layer choice | per-layer program ms |\n|"
    + "---|"
    * (len(FIXED) + 12)
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", default="fsedp-2x2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--zipf", default="", help="one exponent per MoE layer: z0,z1,...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", default="", help="a recorded routing trace instead of --zipf")
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--no-header", action="store_true")
    args = ap.parse_args(argv)
    module, _, name = load_model(args.model)
    if args.trace:
        trace = load_trace(args.trace)
        module = truncate(module, len(trace.layers))
    else:
        zipfs = [float(z) for z in args.zipf.split(",")]
        module = truncate(module, len(zipfs))
        trace = routing_of(module, args.target, args.tokens, zipfs, args.seed)
    if not args.no_header:
        print(HEADER)
    print(row(name, args.target, trace, module, args.budget), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
