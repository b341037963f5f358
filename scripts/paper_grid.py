"""The FSE-DP paper's grid with moec: 4 models x tokens {16, 64, 256, 1024} x strategies, per target.

    python scripts/paper_grid.py                       # print the Markdown tables
    python scripts/paper_grid.py --update docs/results.md   # rewrite the marked section there
    python scripts/paper_grid.py --set ideal=true --section paper-grid-ideal --update docs/results.md

For each target (default fsedp-2x2, fsedp-3x3, fsedp-4x4) it runs the paper's grid
({ep, hydra, fsedp, fsedp-paired}, one MoE layer, seeded Zipf(1.0) trace, timed: the 2x2 grid must
take under 60 s), then the extra baselines (tp, eplb) on the same points, and prints one table
per target (and the paper's ablation steps on one target): latency per strategy, the speedups of the better FSE-DP variant over EP and Hydra,
latency / bound, and peak SRAM per die. A summary line per target gives the range of speedups
and of the SRAM difference, the numbers the paper's claims are about. Everything goes through
``moec.bench.run_bench``, the code behind ``moec bench``.

Peak SRAM counts weight slots and activations (docs/isa.md, "SRAM"). A point whose schedule does
not fit a die's SRAM at compile time is printed ``n/f`` (and left out of the summaries); a peak
marked ``*`` exceeded the die's SRAM at run time (routing concentrated tokens on a die beyond
what the lowering predicted). SRAM is a hard limit in ``moec run``/``bench``/``sweep``; the
grid runs with ``allow_overflow`` (``--allow-overflow``) so that those points still show a
latency, marked.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from moec.bench import DEFAULT_ROUTING, run_bench
from moec.compiler.bench.spec import (
    ABLATION_STEPS,
    PAPER_MODELS,
    PAPER_STRATEGIES,
    PAPER_TARGETS,
    PAPER_TOKENS,
)
from moec.ir.errors import MoecError
from moec.ir.files import atomic_write

EXTRA = ("tp", "eplb")
SECTION = "paper-grid"
#: ``--set`` target overrides of every run (e.g. ``ideal=true``: the first-wave machine)
OVERRIDES: dict[str, str] = {}
MIB = 1 << 20


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def bench(
    target: str, strategies: tuple[str, ...] | list[str], routing: str
) -> list[dict[str, Any]]:
    """The rows of every (model, tokens, strategy); a point that cannot run is a row with its
    ``error`` (the others still run)."""
    try:
        return run_bench(
            PAPER_MODELS, target, PAPER_TOKENS, strategies, routing=routing, allow_overflow=True,
            overrides=OVERRIDES,
        )  # fmt: skip
    except MoecError:
        pass
    rows: list[dict[str, Any]] = []
    for model in PAPER_MODELS:
        for tokens in PAPER_TOKENS:
            for s in strategies:
                try:
                    rows += run_bench(
                        model, target, [tokens], [s], routing=routing, allow_overflow=True,
                        overrides=OVERRIDES,
                    )  # fmt: skip
                except MoecError as err:
                    rows.append(
                        {"model": model, "tokens": tokens, "strategy": s, "error": err.one_line()}
                    )
    return rows


def grid(target: str, routing: str) -> tuple[list[dict[str, Any]], float]:
    start = time.perf_counter()
    rows = bench(target, PAPER_STRATEGIES, routing)
    seconds = time.perf_counter() - start
    rows += bench(target, EXTRA, routing)
    return rows, seconds


def _sram(row: dict[str, Any]) -> str:
    if "error" in row:
        return "n/f"
    over = "*" if row.get("sram_over_bytes", 0) > 0 else ""
    return f"{row['peak_sram_bytes_max'] / MIB:.1f}{over}"


def _setting() -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in OVERRIDES.items())})" if OVERRIDES else ""


def _lat(row: dict[str, Any]) -> str:
    return "n/f" if "error" in row else _ms(row["latency_s"])


def table(target: str, rows: list[dict[str, Any]], seconds: float) -> str:
    by = {(r["model"], r["tokens"], r["strategy"]): r for r in rows}
    strategies = [*PAPER_STRATEGIES, *EXTRA]
    head = (
        ["model", "tokens"] + [f"{s} ms" for s in strategies]
        + ["FSE-DP / EP", "FSE-DP / Hydra", "FSE-DP lat/bound", "peak SRAM MiB ep/hydra/fsedp"]
    )  # fmt: skip
    lines = [
        f"#### {target}{_setting()}",
        "",
        f"The {len(PAPER_MODELS) * len(PAPER_TOKENS) * len(PAPER_STRATEGIES)}-run grid took "
        f"{seconds:.1f} s. FSE-DP = the faster of `fsedp` and `fsedp-paired` at each point.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    vs_ep, vs_hydra, sram = [], [], []
    for model in PAPER_MODELS:
        for tokens in PAPER_TOKENS:
            r = {s: by[(model, tokens, s)] for s in strategies}
            inf = float("inf")
            best = min(
                ("fsedp", "fsedp-paired"), key=lambda s: r[s].get("latency_s", inf)
            )  # fmt: skip
            f = r[best]
            ok = "error" not in f
            a = r["ep"]["latency_s"] / f["latency_s"] if ok and "error" not in r["ep"] else None
            b = (
                r["hydra"]["latency_s"] / f["latency_s"]
                if ok and "error" not in r["hydra"]
                else None
            )
            if a is not None:
                vs_ep.append(a)
            if b is not None:
                vs_hydra.append(b)
            fits = [r[s]["peak_sram_bytes_max"] for s in ("ep", "hydra") if "error" not in r[s]]
            base_sram = max(fits, default=0)
            if ok and base_sram:
                sram.append(1 - f["peak_sram_bytes_max"] / base_sram)
            cells = [model, str(tokens)] + [_lat(r[s]) for s in strategies]
            cells += [
                f"{a:.2f}x" if a is not None else "n/f",
                f"{b:.2f}x" if b is not None else "n/f",
                f"{f['latency_s'] / f['bound_s']:.2f}" if ok else "n/f",
                "/".join(_sram(r[s]) for s in ("ep", "hydra", best)),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Summary {target}: FSE-DP over EP {min(vs_ep):.2f}x to {max(vs_ep):.2f}x "
        f"(faster at {sum(x > 1 for x in vs_ep)} of {len(vs_ep)} points); over Hydra "
        f"{min(vs_hydra):.2f}x to {max(vs_hydra):.2f}x (faster at {sum(x > 1 for x in vs_hydra)} "
        f"of {len(vs_hydra)}); peak SRAM vs the larger of EP and Hydra: "
        f"{100 * min(sram):+.1f}% to {100 * max(sram):+.1f}% less.",
        "",
    ]
    return "\n".join(lines)


def ablation(target: str, routing: str) -> str:
    """The paper's ablation steps on ``target``: latency per step, deferred pairs of the last."""
    steps = [s for _, s in ABLATION_STEPS]
    rows = bench(target, steps, routing)
    by = {(r["model"], r["tokens"], r["strategy"]): r for r in rows}
    head = ["model", "tokens"] + [f"{label} ms" for label, _ in ABLATION_STEPS]
    head += ["bound ms", "pairs deferred"]
    lines = [
        f"#### Ablation on {target}{_setting()}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for model in PAPER_MODELS:
        for tokens in PAPER_TOKENS:
            r = {s: by[(model, tokens, s)] for s in steps}
            last = r[steps[-1]]
            deferred = last.get("extra", {}).get("deferred_pairs", 0)
            cells = [model, str(tokens)] + [_lat(r[s]) for s in steps]
            cells += [_ms(last["bound_s"]) if "error" not in last else "n/f", str(deferred)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--targets", default=",".join(PAPER_TARGETS))
    ap.add_argument("--routing", default=DEFAULT_ROUTING)
    ap.add_argument("--update", metavar="FILE.md", help="replace the marked section there")
    ap.add_argument(
        "--section", default=SECTION, help="the section's marker: <!-- NAME:begin/end -->"
    )
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="target override of every run (e.g. ideal=true)",
    )  # fmt: skip
    ap.add_argument(
        "--ablation", default="fsedp-2x2", metavar="T", help="ablation target ('' none)"
    )
    args = ap.parse_args(argv)
    OVERRIDES.update(kv.split("=", 1) for kv in args.overrides)
    begin, end = f"<!-- {args.section}:begin -->", f"<!-- {args.section}:end -->"
    parts = []
    for target in args.targets.split(","):
        rows, seconds = grid(target, args.routing)
        print(
            f"{target}: grid of {len(PAPER_MODELS) * 16} runs in {seconds:.1f} s", file=sys.stderr
        )
        parts.append(table(target, rows, seconds))
    if args.ablation:
        parts.append(ablation(args.ablation, args.routing))
    text = "\n".join(parts)
    if args.update:
        path = Path(args.update)
        doc = path.read_text()
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        if not pattern.search(doc):
            print(f"{path}: no {begin} ... {end} section", file=sys.stderr)
            return 2
        atomic_write(path, pattern.sub(lambda _: f"{begin}\n{text}\n{end}", doc))
        print(f"updated {path}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
