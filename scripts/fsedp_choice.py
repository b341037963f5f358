"""What FSE-DP's slice choice did on one ``moec bench`` point: counts bounded, predicted, measured.

    python scripts/fsedp_choice.py --model qwen3-30b-a3b --target fsedp-4x4 \\
        --set dies_x=8 --set dies_y=8 --tokens 1024 --strategy fsedp-r5 [--layers all]

Lowers the point as ``moec bench`` does (its default synthetic routing, the first ``--layers``
MoE layers) and runs :func:`moec.fsedp_slices.choose_slices` once, then prints, per count that
fits (finest first): its hard lower bound
(:func:`~moec.backends.interp.expand.fsedp.iteration_bound`), the scheduler's prediction and
the interpreter's measurement where the search made them, each as a ratio to the winner's
measurement (``> x`` for a timing stopped once above the fastest measured before it, x that
fastest), the bound the search pruned on after predicting (``prediction x (1 - error)``,
:func:`~moec.fsedp_slices.estimate_error`) and ``measured / predicted``; then how many counts
were predicted and timed (run to the end, or stopped), and the CPU time of the choice. A
count is timed exactly when its bound is not above the winner's measurement, so the table
shows how much tighter a bound would have to be to skip a timing. ``--rounds R`` then makes
the choice R more times each way, alternating (the kernels already loaded): every timing run
to its end (:data:`~moec.fsedp_slices.STOP_LOSERS` False) and losers stopped, and prints the
CPU seconds of each: a same-process A/B of stopping. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from moec import fsedp_slices
from moec.bench import DEFAULT_ROUTING, _Workloads
from moec.compiler.bench.spec import load_bench_model
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower import parse_strategy
from moec.fsedp_slices import choose_slices, estimate_error
from moec.ir.stream import TargetRef
from moec.ir.target import load_target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--layers", default="1", help="a number, or all")
    ap.add_argument(
        "--rounds", type=int, default=0, metavar="R",
        help="then make the choice R times more each way, alternating: every timing to its "
        "end, and stopping those that cannot win; print the CPU seconds of each",
    )  # fmt: skip
    args = ap.parse_args(argv)
    pairs = tuple(tuple(kv.split("=", 1)) for kv in args.set)
    if any(len(p) != 2 for p in pairs):
        print("fsedp_choice: --set takes KEY=VALUE", file=sys.stderr)
        return 2
    if args.rounds < 0:
        print(f"fsedp_choice: --rounds {args.rounds}: not a count of rounds", file=sys.stderr)
        return 2
    ref = TargetRef(args.target, pairs)  # type: ignore[arg-type]
    tgt = load_target(args.target, dict(pairs))  # type: ignore[arg-type]
    bm = load_bench_model(args.model)
    layers = len(bm.layers) if args.layers == "all" else int(args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        work = _Workloads(DEFAULT_ROUTING, "sample", tmp)
        module = work.module(args.model, layers, "")
        trace = work.trace(args.model, layers, args.tokens, tgt.num_dies)
        name, options = parse_strategy(args.strategy)
        base = lower_strategy(module, ref, name, options, trace)
        t0 = time.process_time()
        choice = choose_slices(module, ref, name, options, trace, base)
        cpu = time.process_time() - t0
        rounds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for stop in (False, True):
                fsedp_slices.STOP_LOSERS = stop
                t0 = time.process_time()
                choose_slices(module, ref, name, options, trace, base)
                rounds[stop].append(time.process_time() - t0)
        fsedp_slices.STOP_LOSERS = True
    if choice is None:
        print("no count of the ladder fits, or the routing is not this program's")
        return 0
    error = estimate_error(base, tgt)
    win = choice.measured[choice.count]
    print(f"{args.strategy}: chose {choice.count} slices, {1e3 * win:.4f} ms (error {error:.3%})")
    print(" count  hard/win  pred/win  pruned-on/win  meas/win  meas/pred")
    for c in sorted(choice.bound, reverse=True):
        hard, p, m = choice.bound[c], choice.predicted.get(c), choice.measured.get(c)
        cells = [f"{c:6d}", f"{hard / win:8.4f}"]
        cells.append(f"{p / win:8.4f}" if p is not None else " " * 8)
        cells.append(f"{max(hard, p * (1 - error)) / win:13.4f}" if p is not None else " " * 13)
        above = choice.stopped.get(c)  # timed only until it could not win
        if m is not None:
            cells.append(f"{m / win:8.4f}")
        else:
            cells.append(f"> {above / win:6.4f}" if above is not None else " " * 8)
        cells.append(f"{m / p:9.4f}" if m is not None and p is not None else "")
        print("  ".join(cells))
    print(
        f"{len(choice.bound)} counts fit, {len(choice.predicted)} predicted, "
        f"{len(choice.measured) + len(choice.stopped)} timed ({len(choice.stopped)} stopped "
        f"once above the fastest so far); the choice took {cpu:.2f} s CPU"
    )
    if args.rounds:
        for stop, what in ((False, "every timing to its end"), (True, "losers stopped")):
            cpus = ", ".join(f"{t:.2f}" for t in rounds[stop])
            print(f"{what}: {cpus} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
