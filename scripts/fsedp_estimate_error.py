"""The FSE-DP scheduler's estimate against the interpreter, per variant, on every slice count.

    python scripts/fsedp_estimate_error.py                       # the default points below
    python scripts/fsedp_estimate_error.py --point qwen3-30b-a3b:fsedp-4x4:1024:dies_x=8,dies_y=8

FSE-DP's slice choice (``moec/fsedp_slices.py``) skips a count whose prediction ``p`` has
``p * (1 - ESTIMATE_ERROR)`` above the fastest measurement: sound exactly when no count measures
more than ``ESTIMATE_ERROR`` *below* its prediction. Only that side matters (an estimate below
the measurement makes the skip more conservative, not less). For each point (model, target,
tokens, target overrides) and each FSE-DP variant, this lowers every count the choice would
consider (:func:`moec.fsedp_slices.candidates` that fit), predicts its first MoE layer
(:func:`~moec.backends.interp.expand.fsedp.predicted_schedule`) and times it
(:func:`moec.fsedp_slices.measure`), and prints each count's ``measured / predicted - 1`` and,
per variant, the lowest and highest over all points (a negative lowest is how far a
measurement fell below its prediction). Nothing is asserted; it is slow (every count is timed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moec.backends.interp.expand.fsedp import predicted_schedule
from moec.bench import DEFAULT_ROUTING, _Workloads
from moec.compiler.bench.spec import load_bench_model
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower import parse_strategy
from moec.fsedp_slices import ESTIMATE_ERROR, candidates, measure
from moec.ir.errors import ScheduleError
from moec.ir.stream import TargetRef
from moec.ir.target import load_target

VARIANTS = ("fsedp-naive", "fsedp", "fsedp-paired", "fsedp-r5", "fsedp-buf")
POINTS = (
    "phi3.5-moe:fsedp-2x2:256:",
    "yuan2-m32:fsedp-3x3:64:",
    "deepseek-moe-16b:fsedp-3x3:1024:",
    "qwen3-30b-a3b:fsedp-4x4:1024:",
    "qwen3-30b-a3b:fsedp-4x4:1024:dies_x=8,dies_y=8",
)


def survey(point: str, variant: str, tmp: str) -> list[dict[str, Any]]:
    """Every fitting count of ``variant`` at ``point``: predicted and measured seconds."""
    model, target, tokens, sets = point.split(":")
    pairs = [kv.split("=", 1) for kv in sets.split(",") if kv]
    ref = TargetRef(target, tuple((k, v) for k, v in pairs))
    tgt = load_target(target, dict(pairs))
    work = _Workloads(DEFAULT_ROUTING, "sample", tmp)
    module = work.module(model, 1, "")
    trace = work.trace(model, 1, int(tokens), tgt.num_dies)
    name, options = parse_strategy(variant)
    ffn = load_bench_model(model).layers[0].ffn
    out: list[dict[str, Any]] = []
    for c in candidates(ffn):
        try:
            p = lower_strategy(module, ref, name, {**options, "slices": str(c)}, trace)
            pred = predicted_schedule(p, tgt, p.layers[0].name, trace.layers[0]).estimate_s
        except ScheduleError:
            break  # coarser slices fit even less
        t = measure(p, tgt, trace)
        if t is not None:
            out.append({"point": point, "variant": variant, "slices": c, "pred": pred, "meas": t})
    return out


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--point", action="append", help="model:target:tokens:key=value,...")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    points = args.point or list(POINTS)
    worst: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for point in points:
            for variant in args.variants.split(","):
                rows = survey(point, variant, tmp)
                cells = [f"{r['slices']}: {100 * (r['meas'] / r['pred'] - 1):+.2f}%" for r in rows]
                print(f"{point} {variant}: " + ", ".join(cells), flush=True)
                for r in rows:
                    e = r["meas"] / r["pred"] - 1
                    lo, hi = worst.get(variant, (e, e))
                    worst[variant] = (min(lo, e), max(hi, e))
    print(f"\nper variant, measured / predicted - 1 (the skip assumes >= {-ESTIMATE_ERROR:+.1%}):")
    for variant, (lo, hi) in worst.items():
        print(f"  {variant:14s} lowest {100 * lo:+.2f}%  highest {100 * hi:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
