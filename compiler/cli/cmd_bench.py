"""``moec bench``: strategies side by side on the same workload, target and cost model.

    moec bench --model NAME|FILE[,...] --target T[,...] --tokens 16,64,256,1024
               --strategies ep,hydra,fsedp,fsedp-paired [--routing synth:zipf=1.0,seed=0 | F]
               [--calibration sample|same|F] [--layers N|all] [--passes PIPELINE ...]
               [--set key=value ...] [--ablation] [--[no-]accuracy] [--json] [--plot out.png]
               [--iterations N [--residency lru|popularity] [--arrivals poisson:rate=R,len=L]]
               [--allow-overflow]

``--model paper`` is the FSE-DP paper's four models and ``--target paper`` its three packages.
Per (model, target, tokens, strategy, passes): latency of one iteration of the first ``--layers``
MoE layers, utilization of compute, DRAM and links, peak SRAM per die, DRAM and link bytes,
speedup over ``ep`` (when ep is in the run) and the analytic lower bound with latency / bound
(``moec.bench`` says exactly what is measured). ``--ablation`` runs the paper's
steps (naive FSE-DP, + R1-R4, + paired load, + R5, + 20% token buffering) instead of
``--strategies``. Rows of models with real weights also carry ``accuracy`` (max and mean
relative error, cosine, top-1 agreement against ONNX Runtime on the original model, for the
row's strategy, passes and token count; ``--no-accuracy`` skips it). The wall time of the whole
run is printed last (to stderr with ``--json``).

A run whose slots and activations exceed a die's SRAM fails, unless ``--allow-overflow``: then
its row carries ``sram_over_bytes`` and its peak SRAM is marked ``!`` in the table.

A point that fails (say, a token count that does not fit one strategy's SRAM) does not end the
run: its row says ``failed`` (in JSON, an ``"error"`` and null metrics), the failed points are
listed on stderr, and the exit code is 1. Exit 0 means every point ran; when no point ran, the
first point's error is the command's error (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moec.bench import DEFAULT_ROUTING, known_strategies, run_bench, timed
from moec.compiler.bench.report import render_table, rows_json, write_plot
from moec.compiler.bench.spec import (
    ABLATION_STEPS,
    PAPER_MODELS,
    PAPER_TARGETS,
    BenchError,
    parse_strategies,
    parse_tokens,
)
from moec.compiler.cli.args import add_serving_args, add_target_args
from moec.ir.files import check_outputs
from moec.options import parse_overrides
from moec.progress import Progress


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="compare strategies on one workload: latency, bound, utilization, bytes",
        description=(__doc__ or "").split("\n\n")[0],
    )  # fmt: skip
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME|FILE",
        help="model name(s) or .onnx file(s), comma-separated; 'paper' = the 4 paper models",
    )
    add_target_args(
        p, default="fsedp-2x2",
        help="target preset(s) or .toml file(s), comma-separated; 'paper' = 2x2,3x3,4x4",
        set_help="target override, e.g. d2d_gbps=512 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--tokens",
        metavar="N,...",
        help="tokens per iteration (default: 16,64,256,1024; "
        "a recorded trace's own count when --routing is a file)",
    )
    p.add_argument(
        "--strategies",
        default="ep,hydra,fsedp,fsedp-paired",
        metavar="S,...",
        help="strategy spellings, comma-separated, e.g. ep,hydra{cap=none},tp",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="run the paper's ablation steps instead of --strategies",
    )
    p.add_argument(
        "--routing",
        default=DEFAULT_ROUTING,
        metavar="SPEC|FILE",
        help=f"synth:zipf=Z,seed=S[,home=...] or a trace file (default {DEFAULT_ROUTING})",
    )
    p.add_argument(
        "--calibration",
        default="sample",
        metavar="sample|same|FILE",
        help="expert loads for hydra/eplb placement: a calibration sample of the same "
        "distribution (default), the routed batch itself (oracle), or a trace file",
    )
    p.add_argument(
        "--layers", default="1", metavar="N|all", help="MoE layers to simulate (default 1)"
    )
    p.add_argument(
        "--passes",
        action="append",
        default=None,
        metavar="PIPELINE",
        help="pass pipeline before lowering (repeatable: one set of rows per pipeline; "
        "'none' for the exact program)",
    )
    p.add_argument(
        "--accuracy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per row, max/mean relative error, cosine and top-1 agreement of the interpreter's "
        "outputs vs ONNX Runtime on the original model, on seeded inputs of the row's tokens "
        "(default: on for models with weights; shape-only models get none)",
    )
    add_serving_args(
        p, iterations_default=1,
        iterations_help="serve N iterations per row in one simulation: rows gain tokens_per_s, "
        "latency percentiles, deferred_pairs_final (moec.serve)",
        arrivals_metavar="poisson:rate=R[/R2..],len=L",
        arrivals_help="with --iterations: continuous batching of Poisson requests over the run's "
        "iteration times (moec.backends.interp.batching); rows gain 'arrivals'",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help='print {"rows": [...]}')
    p.add_argument(
        "--allow-overflow", action="store_true",
        help="measure points whose run exceeds a die's SRAM (rows carry sram_over_bytes)",
    )  # fmt: skip
    p.add_argument("--plot", metavar="OUT.png", help="bar chart of latency (needs matplotlib)")
    p.set_defaults(func=run)  # fmt: skip


def _expand(text: str, paper: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        for x in paper if item == "paper" else (item,):
            if x not in out:
                out.append(x)
    if not out:
        raise BenchError(f"expected at least one name, found {text!r}")
    return out


def run(args: argparse.Namespace) -> int:
    known = known_strategies()
    if args.ablation:
        missing = [s for _, s in ABLATION_STEPS if s not in known]
        if missing:
            raise BenchError(
                f"--ablation needs strategies {', '.join(missing)}, which are not registered "
                f"(known: {', '.join(known)})"
            )
        strategies = [s for _, s in ABLATION_STEPS]
    else:
        strategies = parse_strategies(args.strategies, known)
    if args.iterations < 1:
        raise BenchError(f"--iterations: expected an integer >= 1, found {args.iterations}")
    if args.arrivals:
        from moec.backends.interp.batching import parse_arrivals

        parse_arrivals(args.arrivals)  # a bad spec fails before any run
    models = _expand(args.model, PAPER_MODELS)
    targets = _expand(args.target, PAPER_TARGETS)
    check_outputs([args.plot], [*models, *targets, args.routing, args.calibration])
    file_routing = not args.routing.startswith("synth")
    tokens: list[int | None]
    if args.tokens:
        tokens = list(parse_tokens(args.tokens))
    else:
        tokens = [None] if file_routing else [16, 64, 256, 1024]
    passes = ["" if p.strip() == "none" else p for p in (args.passes or [""])]
    total = len(models) * len(targets) * len(tokens) * len(strategies) * len(passes)
    with Progress("bench", total, unit="points") as bar:

        def tick(row: dict[str, Any]) -> None:
            bar.advance(status=f"{row['model']} {row['target']} {row['tokens']} {row['strategy']}")

        rows, seconds = timed(
            lambda: run_bench(
                models,
                targets,
                tokens,
                strategies,
                routing=args.routing,
                calibration=args.calibration,
                layers=args.layers,
                passes=passes,
                overrides=parse_overrides(args.overrides),
                accuracy=args.accuracy,
                on_row=tick,
                keep_going=True,
                iterations=args.iterations,
                residency=args.residency,
                arrivals=args.arrivals,
                allow_overflow=args.allow_overflow,
            )  # fmt: skip
        )
    if args.ablation:
        labels = {s: label for label, s in ABLATION_STEPS}
        for r in rows:
            r["step"] = labels.get(r["strategy"], "")
    if args.plot:
        write_plot(rows, args.plot)
    summary = f"{len(rows)} runs in {seconds:.2f} s"
    if args.json:
        print(rows_json(rows))
        print(summary, file=sys.stderr)
    else:
        from rich.console import Console

        table = render_table(rows)
        # as wide as the table wants (up to 240 columns), even when piped
        want = Console(width=240).measure(table).maximum
        out = Console(width=max(Console().width, min(want, 240)))
        out.print(table)
        if args.plot:
            out.print(f"wrote {args.plot}")
        out.print(summary)
    return _report_failures(rows)


def _report_failures(rows: list[dict[str, Any]]) -> int:
    """List the points that failed on stderr; exit code 1 when any did (0 when all ran)."""
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        point = f"{r['model']} {r['target']} tokens={r['tokens']} {r['strategy']}"
        print(f"moec bench: failed: {point}: {r['error']}", file=sys.stderr)
    if failed:
        print(f"moec bench: {len(failed)} of {len(rows)} points failed", file=sys.stderr)
    return 1 if failed else 0
