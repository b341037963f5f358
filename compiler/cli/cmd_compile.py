"""``moec compile``: an ONNX MoE model to a stream program (and its weights companion).

    moec compile model.onnx -o prog.msp [--target T] [--set key=value ...] [--strategy S]
                 [--passes "..."] [--routing trace.json] [--tokens N] [--dims name=value ...]
                 [--debug] [--print-ir] [--search-budget N] [--search-resamples R] [--objective O]
                 [--max-sram-mib X] [--alternatives N [--online-draws SPEC;...]] [--explain]

``--strategy auto`` searches the fixed strategies and their options (:mod:`moec.auto`) and
writes the best by ``--objective`` (latency, energy, edp or sram; within ``--max-sram-mib``);
``--explain`` prints the candidates and why the winner won. ``--alternatives N`` writes
instead N pre-compiled alternatives and the rule that picks one per batch (:mod:`moec.online`).

``model.onnx`` may also be a model name from ``moec models``. The work is
:func:`moec.compile.compile_model` and :func:`moec.compile.write_compiled`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moec.auto import DEFAULT_BUDGET, OBJECTIVES, explain
from moec.compile import (
    COMPILE_STAGES,
    compile_model,
    parse_dims,
    parse_overrides,
    write_compiled,
)
from moec.compiler.cli.args import add_dims_arg, add_strategy_arg, add_target_args
from moec.compiler.lower.weights_file import companion_name
from moec.ir.files import check_outputs
from moec.online import explain_online
from moec.progress import Progress


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compile", help="lower an ONNX MoE model to a stream program (.msp)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL", help=".onnx file or a model name from `moec models`")
    p.add_argument("-o", "--output", required=True, metavar="PROG.msp")
    add_target_args(p)
    add_strategy_arg(p, "strategy, e.g. ep{placement=blocks}, or auto (search them)")
    p.add_argument(
        "--search-budget", type=int, default=DEFAULT_BUDGET, metavar="N",
        help=f"--strategy auto: interpreter runs the search may spend (default {DEFAULT_BUDGET})",
    )  # fmt: skip
    p.add_argument(
        "--search-resamples", type=int, default=0, metavar="R",
        help="--strategy auto: also run each candidate on R resamples of the routing (tokens "
        "drawn with replacement) and score it by its worst run (default 0: the batch only)",
    )  # fmt: skip
    p.add_argument(
        "--objective", choices=OBJECTIVES, default="latency",
        help="--strategy auto: what the search minimizes (default latency)",
    )  # fmt: skip
    p.add_argument(
        "--max-sram-mib", type=float, metavar="X",
        help="--strategy auto: never choose a candidate whose peak SRAM on a die exceeds X MiB",
    )  # fmt: skip
    p.add_argument(
        "--explain", action="store_true",
        help="--strategy auto: print the candidates, their predicted and measured latencies",
    )  # fmt: skip
    p.add_argument(
        "--alternatives", type=int, default=0, metavar="N",
        help="--strategy auto: write N (2-4) pre-compiled alternatives sharing one static part "
        "and a rule over the batch's routing statistics that picks one at run time",
    )  # fmt: skip
    p.add_argument(
        "--online-draws", metavar="SPEC;SPEC...",
        help="--alternatives: the calibration batches the rule is fitted on, synth:... specs "
        "separated by ';' (default: Zipf 0.4 to 2.0)",
    )  # fmt: skip
    p.add_argument("--passes", default="", metavar="PIPELINE", help="pass pipeline string")
    p.add_argument("--routing", metavar="TRACE", help="routing trace (.json or .npz)")
    p.add_argument("--tokens", type=int, metavar="N", help="tokens per iteration")
    add_dims_arg(p)
    p.add_argument("--debug", action="store_true", help="verify the IR after every pass")
    p.add_argument("--print-ir", action="store_true", help="print the graph IR after the passes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    check_outputs(
        [out, out.with_name(companion_name(out.name))], [args.model, args.routing, args.target]
    )
    with Progress("compile", COMPILE_STAGES + 1, unit="stages") as bar:
        bar.set_status(f"{args.model}: frontend")
        compiled = compile_model(
            args.model, args.output, target=args.target,
            overrides=parse_overrides(args.overrides), strategy=args.strategy,
            passes=args.passes, routing=args.routing, tokens=args.tokens,
            dims=parse_dims(args.dims), debug=args.debug,
            on_module=(lambda m: print(m.print(), end="")) if args.print_ir else None,
            search_budget=args.search_budget, objective=args.objective,
            max_sram_mib=args.max_sram_mib, search_resamples=args.search_resamples,
            on_stage=lambda next_stage: bar.advance(status=next_stage),
            alternatives=args.alternatives,
            online_draws=[d for d in (args.online_draws or "").split(";") if d.strip()],
        )  # fmt: skip
        bar.set_status(f"writing {args.output}")
        write_compiled(compiled, args.output)
        bar.advance()
    if args.explain and compiled.auto is not None:
        print(explain(compiled.auto))
    if args.explain and compiled.online is not None:
        print(explain_online(compiled.online))
    p = compiled.program
    extra = f" + {companion_name(Path(args.output).name)}" if compiled.companion is not None else ""
    strategies = list(dict.fromkeys(r.strategy for r in p.runtime))  # per layer with auto
    print(
        f"wrote {args.output}{extra}: {len(p.layers)} MoE layers, {len(p.streams)} dies, "
        f"{p.num_instructions()} static instructions, "
        + (f"strategy {strategies[0]}" if len(strategies) == 1 else
           "strategies " + ", ".join(f"{r.layer} {r.strategy}" for r in p.runtime))
    )  # fmt: skip
    return 0
