"""CPU time of the FSE-DP scheduler alone on one ``moec bench`` point (issue 19).

    python scripts/bench_fsedp_sched.py --model M --target T [--set K=V] --tokens N \\
        --strategy S [--repeat N] [--compiled auto|on|off]
    python scripts/bench_fsedp_sched.py --model qwen3-30b-a3b --target fsedp-4x4 \\
        --set dies_x=8 --set dies_y=8 --tokens 1024 --strategy fsedp-paired

Runs the point once (:func:`moec.bench.run_bench`, one layer), keeping every scheduling
problem the FSE-DP expander hands :func:`~moec.backends.interp.expand.fsedp_sched.schedule`
(the iteration's, and the catch-up's with token buffering), then schedules them again
``--repeat`` times on an idle copy of the interpreter's resources, with the garbage collector
off, and prints the least process CPU time and a fingerprint of the schedules (every die's
instructions, every trip's path, the estimate, peak slots, pass-throughs) that two trees must
share. For an A/B, run it once per tree (``PYTHONPATH`` set to a ``moec`` package root, as
``bench_sim.py --before`` lays one out).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import time
from typing import Any


def fingerprint(s: Any) -> str:
    """A digest of everything a schedule holds."""
    h = hashlib.sha256()
    for d in sorted(s.streams):
        h.update(repr(d).encode())
        for i in s.streams[d]:
            h.update(repr(i).encode())
    for part in (s.paths, s.estimate_s, sorted(s.peak_slots.items()), s.pass_throughs):
        h.update(repr(part).encode())
    return h.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tokens", type=int, required=True)
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--compiled", choices=("auto", "on", "off"), default="auto",
        help="the scheduler's compiled kernel (fsedp_compiled.COMPILED) for the timed schedules",
    )  # fmt: skip
    args = ap.parse_args(argv)

    import moec.backends.interp.expand.fsedp as fsedp
    from moec.backends.interp.expand import fsedp_sched
    from moec.bench import run_bench
    from moec.options import parse_overrides

    problems: list[Any] = []
    schedule = fsedp.schedule

    def keep(p: Any, streams: bool = True) -> Any:
        problems.append(p)  # scheduled again below with its streams, whatever it was asked for
        return schedule(p, streams)

    fsedp.schedule = keep
    run_bench(
        args.model, args.target, [args.tokens], [args.strategy], layers=1,
        overrides=parse_overrides(args.set), allow_overflow=True,
    )  # fmt: skip
    fsedp.schedule = schedule
    if args.compiled != "auto":  # a tree without the kernel has no switch: always the reference
        try:
            from moec.backends.interp.expand import fsedp_compiled
        except ImportError:
            fsedp_compiled = None
        if fsedp_compiled is not None:
            fsedp_compiled.COMPILED = args.compiled == "on"
            if fsedp_compiled.COMPILED:
                fsedp_sched.schedule(problems[0], False)  # the kernel loaded before the clock
    best, prints = float("inf"), []
    gc.disable()
    for _ in range(args.repeat):
        for p in problems:  # the machine the problem was scheduled on, idle again
            p.machine.free_at = [0.0] * len(p.machine.free_at)
        start = time.process_time()
        out = [fsedp_sched.schedule(p) for p in problems]
        best = min(best, time.process_time() - start)
        prints = [fingerprint(s) for s in out]
    print(f"{len(problems)} schedules, best of {args.repeat}: {best:.3f} s CPU, {prints}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
