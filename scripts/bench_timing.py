"""CPU time of the timing machine's stages on one ``moec bench`` point (issue 19, per layer).

    python scripts/bench_timing.py --model M --target T [--set K=V] --tokens N --strategy S
        [--layers N|all] [--allow-overflow] [--repeat N]
    python scripts/bench_timing.py --model qwen3-30b-a3b --target fsedp-4x4 \\
        --set dies_x=8 --set dies_y=8 --tokens 1024 --strategy fsedp-paired

Runs the ``moec bench`` point (:func:`moec.bench.run_bench`) once, in this process, keeping
every program, target and carry that :func:`~moec.backends.interp.timing.run_timing` receives (a
layer-by-layer run calls it once per part, with the carry of the parts before), then runs
``run_timing`` on all of them ``--repeat`` times with the garbage collector off and prints the
least process CPU time of the op-graph build, the SRAM accounting, the rest (event loop and the
timeline) and the whole, summed over the parts, plus a fingerprint of the timelines (starts,
ends, holds, peaks, energy) that two trees must share. Whole-process figures on a shared machine move by several tenths of a
second from run to run; this isolates the part the interpreter's timing code owns. For an A/B,
run it once per tree (``PYTHONPATH`` set to a ``moec`` package root, as ``bench_sim.py
--before`` lays one out).
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--layers", default="1", help="a number or 'all'")
    ap.add_argument("--allow-overflow", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    import moec.backends.interp.layered  # noqa: F401 - the modules, not the functions
    import moec.backends.interp.simulate  # noqa: F401
    import moec.backends.interp.timing as timing
    from moec.bench import run_bench
    from moec.options import parse_overrides

    # a layered run (``moec bench``'s default) calls run_timing once per part, with the carry
    # of the parts before: keep every call, with a copy of its carry as it was handed in
    mods: list[Any] = [sys.modules[f"moec.backends.interp.{m}"] for m in ("simulate", "layered")]
    seen: list[tuple[Any, Any, tuple[Any, ...], dict[str, Any]]] = []
    run_timing = timing.run_timing

    def keep(p: Any, t: Any, *a: Any, **k: Any) -> Any:
        seen.append((p, t, a, copy.deepcopy(k, {id(t): t})))
        return run_timing(p, t, *a, **k)

    for m in mods:
        m.run_timing = keep
    layers: int | str = int(args.layers) if args.layers.isdigit() else args.layers
    run_bench(
        args.model, args.target, [args.tokens], [args.strategy], layers=layers,
        overrides=parse_overrides(args.set), allow_overflow=args.allow_overflow,
    )  # fmt: skip
    for m in mods:
        m.run_timing = run_timing
    if not seen:
        print("bench_timing: the point ran no timing", file=sys.stderr)
        return 2

    spent: dict[str, float] = {}
    build, sram_peaks = timing.Builder.build, timing.sram_peaks

    def timed_build(self: Any) -> None:
        c = time.process_time()
        build(self)
        spent["build"] += time.process_time() - c

    def timed_sram(*a: Any) -> Any:
        c = time.process_time()
        out = sram_peaks(*a)
        spent["sram"] += time.process_time() - c
        return out

    timing.Builder.build = timed_build  # type: ignore[method-assign]
    timing.sram_peaks = timed_sram
    best: dict[str, float] = {}
    gc.disable()
    digest = hashlib.sha256()
    ops = 0
    for r in range(args.repeat):
        spent.update(build=0.0, sram=0.0, total=0.0)
        for p, t, a, k in seen:
            k = copy.deepcopy(k, {id(t): t})  # each repeat: the carry the run handed in
            c = time.process_time()
            tl = run_timing(p, t, *a, **k)
            spent["total"] += time.process_time() - c
            if r == 0:
                ops += len(tl.start)
                digest.update(repr(_fingerprint(tl)).encode())
            del tl
        spent["rest"] = spent["total"] - spent["build"] - spent["sram"]
        for key, v in spent.items():
            best[key] = min(best.get(key, float("inf")), v)
    timing.Builder.build, timing.sram_peaks = build, sram_peaks  # type: ignore[method-assign]
    fp = digest.hexdigest()[:16]
    print(
        f"ops {ops:,}  parts {len(seen)}  build {best['build']:.3f} s  sram {best['sram']:.3f} s  "
        f"rest {best['rest']:.3f} s  run_timing {best['total']:.3f} s  (best of "
        f"{args.repeat}, process CPU)  timeline {fp}"
    )
    return 0


def _fingerprint(tl: Any) -> tuple[Any, ...]:
    """What two trees' timelines must share: every op's times and holds, peaks and energy."""
    ledger = tl.energy
    # what each op held, as tuples (an older tree's form; a newer one keeps one id or -1)
    holds = [r if isinstance(r, tuple) else (r,) if r >= 0 else () for r in _plain(tl.res)]
    return (
        _plain(tl.start), _plain(tl.end), _plain(tl.kind), tl.die, holds, _plain(tl.layer), tl.island, tl.busy, tl.peak_sram,
        tl.peak_sram_slots, tl.peak_sram_activations, tl.peak_slot_bytes, tl.makespan,
        ledger.joules if ledger else None, ledger.by_op if ledger else None,
    )  # fmt: skip


def _plain(column: Any) -> list[Any]:
    """A per-op column as a list (a newer tree's layer-by-layer parts keep numpy arrays)."""
    return column.tolist() if hasattr(column, "tolist") else list(column)


if __name__ == "__main__":
    sys.exit(main())
