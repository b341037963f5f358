"""Energy per token on the FSE-DP paper grid, and the D2D pJ/bit at which FSE-DP and EP break even.

    python scripts/energy_results.py                             # print the Markdown tables
    python scripts/energy_results.py --update docs/results.md    # rewrite the marked section

1. For each target (default fsedp-2x2, fsedp-3x3, fsedp-4x4): the paper grid (4 models x tokens
   {16, 64, 256, 1024}, one MoE layer, seeded Zipf(1.0) trace) with every strategy, energy per
   token of each, the lowest, its breakdown, and where FSE-DP-paired's energy differs from EP's
   (per part, per token), which is what decides between them.
2. The break-even sweep on fsedp-2x2: ``energy_d2d_pj_per_bit`` over a grid of values, EP and
   FSE-DP-paired at every point; where the sign of (FSE-DP - EP) energy per token changes between
   two sweep values, the crossing is interpolated between them (exact: with everything else
   fixed, a run's energy is linear in the D2D pJ/bit, its timing does not depend on it). No
   change of sign in the swept range is reported as such.

Everything goes through ``moec.bench.run_bench`` (what ``moec bench`` runs), so
each figure is the interpreter's own accounting (``docs/targets.md``, "Energy").
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from doc_sections import update_section

from moec.bench import DEFAULT_ROUTING, run_bench
from moec.compiler.bench.spec import PAPER_MODELS, PAPER_TARGETS, PAPER_TOKENS
from moec.ir.energy import PARTS
from moec.ir.errors import MoecError

STRATEGIES = ("ep", "hydra", "fsedp", "fsedp-paired", "tp", "eplb")
FSEDP = "fsedp-paired"
D2D_SWEEP = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
BEGIN, END = "<!-- energy:begin -->", "<!-- energy:end -->"
SHORT = {"compute": "c", "sram": "s", "dram": "m", "d2d": "d", "host": "h", "static": "st"}


def bench(target: str, strategies: tuple[str, ...], overrides: dict[str, Any]) -> list[dict]:
    """Rows of every (model, tokens, strategy); a point that cannot run is left out."""
    try:
        return run_bench(
            PAPER_MODELS, target, PAPER_TOKENS, strategies, routing=DEFAULT_ROUTING,
            overrides=overrides,
        )  # fmt: skip
    except MoecError:
        pass
    rows: list[dict] = []
    for model in PAPER_MODELS:
        for tokens in PAPER_TOKENS:
            for s in strategies:
                try:
                    rows += run_bench(model, target, [tokens], [s], overrides=overrides)
                except MoecError:
                    continue
    return rows


def _mj(j: float) -> str:
    return f"{j * 1e3:.3g}"


def _split(parts: dict[str, float]) -> str:
    total = sum(parts.values())
    return " ".join(
        f"{SHORT[p]} {100 * parts[p] / total:.0f}%" for p in PARTS if total > 0 and parts[p] > 0
    )


def grid_table(target: str, rows: list[dict]) -> str:
    """Energy per token per strategy, the lowest and why, on one target."""
    by = {(r["model"], r["tokens"], r["strategy"]): r for r in rows}
    head = [f"{s} mJ/tok" for s in STRATEGIES]
    diff = [f"Δ{SHORT[p]}" for p in ("sram", "dram", "d2d", "static")]
    lines = [
        "| model | tokens | " + " | ".join(head) + " | lowest | its split | "
        f"{FSEDP} / ep | " + " | ".join(diff) + " |",
        "|---|---|" + "---|" * (len(head) + 3 + len(diff)),
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for tokens in sorted({r["tokens"] for r in rows if r["model"] == model}):
            cells = []
            present = {s: by.get((model, tokens, s)) for s in STRATEGIES}
            for s in STRATEGIES:
                r = present[s]
                cells.append(_mj(r["energy_per_token_j"]) if r else "n/f")
            ok = {s: r for s, r in present.items() if r is not None}
            best = min(ok, key=lambda s: (ok[s]["energy_per_token_j"], s))
            ep, fs = ok.get("ep"), ok.get(FSEDP)
            ratio = "-"
            deltas = ["-"] * len(diff)
            if ep and fs:
                ratio = f"{fs['energy_j'] / ep['energy_j']:.2f}"
                deltas = [
                    _mj((fs["energy_breakdown_j"][p] - ep["energy_breakdown_j"][p]) / tokens)
                    for p in ("sram", "dram", "d2d", "static")
                ]
            lines.append(
                f"| {model} | {tokens} | " + " | ".join(cells) + f" | {best} | "
                f"{_split(ok[best]['energy_breakdown_j'])} | {ratio} | " + " | ".join(deltas) + " |"
            )
    return "\n".join(lines) + "\n"


def break_even(target: str) -> tuple[str, float]:
    """The D2D pJ/bit sweep and, per point, where FSE-DP and EP energy per token cross."""
    t0 = time.perf_counter()
    diffs: dict[tuple[str, int], dict[float, float]] = {}
    for p in D2D_SWEEP:
        rows = bench(target, ("ep", FSEDP), {"energy_d2d_pj_per_bit": p})
        by = {(r["model"], r["tokens"], r["strategy"]): r for r in rows}
        for (model, tokens, s), ep in by.items():
            fs = by.get((model, tokens, FSEDP))
            if s == "ep" and fs is not None:
                diffs.setdefault((model, tokens), {})[p] = (
                    fs["energy_per_token_j"] - ep["energy_per_token_j"]
                )
    lines = [
        f"| model | tokens | {FSEDP} - ep at 0 pJ/bit (mJ/tok) | "
        f"at {D2D_SWEEP[-1]:g} pJ/bit | break-even D2D pJ/bit |",
        "|---|---|---|---|---|",
    ]
    for (model, tokens), by_p in diffs.items():
        if len(by_p) != len(D2D_SWEEP):
            continue
        d = [by_p[p] for p in D2D_SWEEP]
        cross = "-"
        for (p0, d0), (p1, d1) in zip(
            zip(D2D_SWEEP, d, strict=True), list(zip(D2D_SWEEP, d, strict=True))[1:], strict=False
        ):
            if d0 == 0.0:
                cross = f"{p0:g}"
                break
            if (d0 < 0) != (d1 < 0):
                cross = f"{p0 + (p1 - p0) * d0 / (d0 - d1):.3g}"
                break
        if cross == "-":
            cross = (
                f"none in [0, {D2D_SWEEP[-1]:g}]: {FSEDP} "
                + ("higher" if d[0] > 0 else "lower")
                + " throughout"
            )
        lines.append(f"| {model} | {tokens} | {_mj(d[0])} | {_mj(d[-1])} | {cross} |")
    return "\n".join(lines) + "\n", time.perf_counter() - t0


def report(targets: list[str]) -> str:
    out = []
    for target in targets:
        t0 = time.perf_counter()
        rows = bench(target, STRATEGIES, {})
        took = time.perf_counter() - t0
        out.append(f"#### {target}\n\n{len(rows)} runs in {took:.1f} s.\n\n")
        out.append(grid_table(target, rows) + "\n")
    table, took = break_even("fsedp-2x2")
    out.append(
        f"#### Break-even D2D energy, fsedp-2x2\n\n`energy_d2d_pj_per_bit` swept over "
        f"{', '.join(f'{p:g}' for p in D2D_SWEEP)} ({took:.1f} s).\n\n" + table
    )
    return "".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(PAPER_TARGETS))
    ap.add_argument("--update", metavar="RESULTS.md", help="rewrite the marked section there")
    args = ap.parse_args()
    text = report([t for t in args.targets.split(",") if t])
    if not args.update:
        print(text)
        return 0
    return update_section(args.update, BEGIN, END, text)


if __name__ == "__main__":
    sys.exit(main())
