"""Process CPU of one ``moec bench`` point split by stage (issue 19: where a whole model's time goes).

    python scripts/bench_stages.py --model M --target T --tokens N --strategy S [--layers N|all]
    python scripts/bench_stages.py --model deepseek-v3 --target npu8-hbm --tokens 1024 \\
        --strategy 'fsedp-paired{slices=10}' --layers all

Runs the point once in this process (:func:`moec.bench.run_bench`, ``allow_overflow``) with a
process-CPU timer around each stage's function and prints the total and each stage's seconds
and calls: the lowering (with FSE-DP's slice choice, which itself runs the scheduler and the
timing machine on the first layer), the FSE-DP scheduler (``fsedp.schedule``) and the units it
is given (``fsedp._units``), the timing machine (``run_timing``), and the layered run's per-part
bookkeeping (``walk_part``, ``layer_parts``, ``charge_deferred``, ``splice``). Stages nest
(the lowering's scheduler runs are counted in both), so the lines do not add up to the total;
what is left of the total is the rest (routing trace, the report, the collector between parts).
Give ``--strategy 'fsedp{slices=N}'`` to leave the slice choice out.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

#: (module, function, label) of each timed stage
STAGES = (
    ("moec.bench", "lower_run", "lowering (with the slice choice)"),
    ("moec.backends.interp.expand.fsedp", "schedule", "FSE-DP scheduler"),
    ("moec.fsedp_slices", "measure_run", "slice choice: timings"),
    ("moec.backends.interp.expand.fsedp", "_units", "FSE-DP units"),
    ("moec.backends.interp.layered", "run_timing", "timing machine (layered run)"),
    ("moec.backends.interp.simulate", "run_timing", "timing machine (whole run)"),
    ("moec.backends.interp.opgraph.Builder", "build", "timing: op-graph build"),
    ("moec.backends.interp.timing", "run_events", "timing: event loop"),
    ("moec.backends.interp.timing", "sram_peaks", "timing: SRAM peaks"),
    ("moec.backends.interp.layered", "walk_part", "layered: walk_part (self-contained?)"),
    ("moec.backends.interp.layered", "layer_parts", "layered: layer_parts"),
    ("moec.backends.interp.layered", "charge_deferred", "layered: charge_deferred"),
    ("moec.backends.interp.layered", "splice", "layered: splice"),
    ("moec.backends.interp.simulate", "expand_runtime", "expansion (per layer)"),
    ("moec.backends.interp.expand.ep", "order_work", "expansion: EP-style load order"),
    ("moec.bench._Workloads", "trace", "routing trace"),
    ("moec.bench._Workloads", "calibration_file", "calibration trace (drawn, saved)"),
    ("moec.compiler.lower.hydra", "_load_cached", "calibration trace (read back)"),
)


def _owner(path: str) -> Any:
    """The module ``path`` names, or a class in it (``package.module.Class``)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--layers", default="all", help="a number or 'all'")
    args = ap.parse_args(argv)

    from moec.bench import run_bench

    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                seconds[label] += time.process_time() - start
                calls[label] += 1

        return wrapper

    for module, name, label in STAGES:
        owner = _owner(module)
        if hasattr(owner, name):
            setattr(owner, name, timed(getattr(owner, name), label))
    layers: int | str = int(args.layers) if args.layers.isdigit() else args.layers
    start = time.process_time()
    run_bench(
        args.model, args.target, [args.tokens], [args.strategy], layers=layers,
        allow_overflow=True,
    )  # fmt: skip
    total = time.process_time() - start
    print(f"{args.model} {args.target} {args.tokens} {args.strategy}: {total:.2f} s CPU")
    for label, s in sorted(seconds.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {label:36s} {s:7.2f} s  {100 * s / total:5.1f}%  ({calls[label]} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
