"""How far the FSE-DP scheduler's own time estimate is from the interpreter's measured latency.

    python scripts/fsedp_sched_gap.py                                   # 3x3, DDR 51.2 GB/s/channel
    python scripts/fsedp_sched_gap.py --target fsedp-2x2 --set ideal=true

The scheduler (``backends/interp/expand/fsedp_sched.py``) plays the rules R1-R5 as a
discrete-event simulation and makes its decisions (R5's pushes, the balanced order, slot choice)
on that simulation's clock, which is the interpreter's own engine (its resource state and cost
plans, forked for the layer: ``expand/fsedp_engine.py``); the interpreter then times the
streams it wrote. For each paper model and token count, on one MoE layer with the grid's routing,
this prints the scheduler's predicted layer time (``Schedule.estimate_s`` of the iteration's
schedule) against the interpreter's measured layer latency, for paired load and R5, and R5's
latency against paired load's. Issue 12 asks for the gap on 3x3 with
``--set ddr_gbps_per_channel=51.2``: before the one engine the prediction was +0.2% to +25.4%
off; now within 1.7% (what remains: ops that became ready at different times claiming one
resource in another order, and dies starting the layer at different times in the whole program).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import moec.backends.interp.expand.fsedp as fsedp
from moec.bench import DEFAULT_ROUTING, run_bench
from moec.compiler.bench.spec import PAPER_MODELS, PAPER_TOKENS

STRATEGIES = ("fsedp-paired", "fsedp-r5")


def measure(
    target: str, overrides: dict[str, str], models: tuple[str, ...] = PAPER_MODELS,
    tokens: tuple[int, ...] = PAPER_TOKENS,
) -> list[dict[str, Any]]:  # fmt: skip
    """One record per (model, tokens, strategy): predicted and measured seconds."""
    estimates: list[float] = []
    real = fsedp.schedule

    def recording(prob: fsedp.Problem, streams: bool = True) -> fsedp.Schedule:
        s = real(prob, streams)
        estimates.append(s.estimate_s)
        return s

    fsedp.schedule = recording  # type: ignore[assignment]
    out: list[dict[str, Any]] = []
    try:
        for model in models:
            for T in tokens:
                for strategy in STRATEGIES:
                    estimates.clear()
                    (row,) = run_bench(
                        model, target, [T], [strategy], routing=DEFAULT_ROUTING,
                        overrides=overrides, allow_overflow=True,
                    )  # fmt: skip
                    out.append({
                        "model": model, "tokens": T, "strategy": strategy,
                        # the last: the slice count's candidates are scheduled before the run
                        "predicted_s": estimates[-1], "measured_s": row["latency_s"],
                    })  # fmt: skip
    finally:
        fsedp.schedule = real  # type: ignore[assignment]
    return out


def table(records: list[dict[str, Any]]) -> str:
    by = {(r["model"], r["tokens"], r["strategy"]): r for r in records}
    head = [
        "model", "tokens", "paired predicted ms", "paired measured ms", "gap",
        "R5 predicted ms", "R5 measured ms", "gap", "R5 vs paired (measured)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gaps: list[float] = []
    for model in dict.fromkeys(r["model"] for r in records):
        for T in dict.fromkeys(r["tokens"] for r in records):
            p, q = by[(model, T, STRATEGIES[0])], by[(model, T, STRATEGIES[1])]
            cells = [model, str(T)]
            for r in (p, q):
                gap = r["predicted_s"] / r["measured_s"] - 1
                gaps.append(abs(gap))
                cells += [f"{r['predicted_s'] * 1e3:.2f}", f"{r['measured_s'] * 1e3:.2f}",
                          f"{100 * gap:+.1f}%"]  # fmt: skip
            cells.append(f"{100 * (q['measured_s'] / p['measured_s'] - 1):+.1f}%")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"largest |predicted / measured - 1|: {100 * max(gaps):.1f}%"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--target", default="fsedp-3x3")
    ap.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE",
        help="target overrides (default: ddr_gbps_per_channel=51.2)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    items = args.overrides if args.overrides is not None else ["ddr_gbps_per_channel=51.2"]
    overrides = dict(kv.split("=", 1) for kv in items)
    setting = ", ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"{args.target} ({setting or 'preset'}), one MoE layer, {DEFAULT_ROUTING}\n")
    sys.stdout.write(table(measure(args.target, overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
