"""``moec run``: run a stream program in the interpreter: timing, and numbers when it has weights.

    moec run prog.msp [--routing trace.json|trace.npz|synth:zipf=1.0,seed=0] [--seed N]
             [--inputs F.npz] [--target T] [--set key=value ...] [--trace-out trace.json] [--json]
             [--dump-expanded out.msp] [--allow-overflow]

* With ``--inputs`` (or, when the program declares a weights companion and no ``--routing`` is
  given, inputs generated with ``--seed``): numerics; the routing comes from each layer's router.
* Otherwise timing only: the routing comes from ``--routing`` (a trace file, or ``synth:...``),
  default ``synth:zipf=1.0,seed=<seed>`` sized for the program's layers.

Prints a table (or ``--json``); ``--trace-out`` writes a Chrome/Perfetto trace, ``--dump-expanded``
the fully static program of this run; without either the run is simulated one layer at a time
(memory flat in the number of layers, :mod:`moec.backends.interp.layered`). Output files are written atomically, and only when the run
succeeded. SRAM is a hard limit: a run whose slots and activations exceed a die's SRAM is an
error, unless ``--allow-overflow`` (then the report says by how much it overflowed).

``--iterations N`` serves N consecutive iterations in one simulation (deferred pairs executed in
the next iteration, serving metrics: tokens/s, iteration and token latency percentiles);
``--residency`` keeps loaded micro-slices in spare SRAM between them, ``--arrivals`` replays
Poisson requests with continuous batching over the iteration times (:mod:`moec.serve`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from moec.backends.interp import render
from moec.backends.interp.report import chrome_trace_json
from moec.compiler.cli.args import add_serving_args, add_set_arg
from moec.ir.files import atomic_write_all, check_outputs
from moec.ir.stream import Program, load_program, print_program
from moec.options import parse_overrides
from moec.run import run_program


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="run a stream program in the interpreter (timing, and numbers with weights)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )  # fmt: skip
    p.add_argument("program", metavar="PROG.msp")
    p.add_argument("--routing", metavar="R", help="trace .json/.npz or synth:zipf=1.0,seed=0")
    p.add_argument("--seed", type=int, default=0, help="seed of generated inputs / synth routing")
    p.add_argument("--inputs", metavar="F.npz", help="model inputs (numerics)")
    p.add_argument("--target", metavar="T", help="run on this target instead of the program's")
    add_set_arg(p, "override a target field on top of the program's target (e.g. ideal=true)")
    p.add_argument(
        "--trace-out", metavar="TRACE.json",
        help="write a Chrome/Perfetto trace (costs more: the whole program's ops are kept, "
        "memory grows with the layers)",
    )  # fmt: skip
    p.add_argument(
        "--dump-expanded", metavar="OUT.msp",
        help="write the expanded static program (like --trace-out, keeps every layer's ops)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--allow-overflow", action="store_true",
        help="report a run that exceeds a die's SRAM (it says by how much) instead of failing",
    )  # fmt: skip
    add_serving_args(
        p, iterations_default=None,
        iterations_help="serve N consecutive iterations in one simulation (moec.serve)",
        arrivals_metavar="poisson:rate=R,len=L",
        arrivals_help="with --iterations: continuous batching of Poisson requests over the "
        "iteration times",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    program = load_program(args.program)
    base = os.path.dirname(os.path.abspath(args.program))
    weights = os.path.join(base, program.weights.path) if program.weights is not None else None
    check_outputs(
        [args.trace_out, args.dump_expanded],
        [args.program, weights, args.inputs, args.routing, args.target],
    )  # fmt: skip
    if args.iterations is not None or args.residency or args.arrivals:
        return _serve(args, program, base)
    result = run_program(
        program, base_dir=base, routing=args.routing, seed=args.seed, inputs=args.inputs,
        target=args.target, record_trace=bool(args.trace_out),
        overrides=parse_overrides(args.overrides), allow_overflow=args.allow_overflow,
        layered=not (args.trace_out or args.dump_expanded),
    )  # fmt: skip
    outputs: list[tuple[str, bytes | str]] = []
    if args.dump_expanded:
        assert result.expanded is not None  # a whole-program run (not layered) keeps it
        out_dir = os.path.dirname(os.path.abspath(args.dump_expanded))
        outputs.append((args.dump_expanded, print_program(result.expanded.rebased(base, out_dir))))
    if args.trace_out:
        outputs.append((args.trace_out, chrome_trace_json(result.timeline)))
    atomic_write_all(outputs)
    if args.json:
        doc = result.report.to_dict()
        if result.outputs is not None:
            doc["outputs"] = {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                for k, v in result.outputs.items()
            }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render(result.report))
        if result.outputs is not None:
            for k, v in result.outputs.items():
                sys.stdout.write(f"output {k}: shape {list(v.shape)} {v.dtype}\n")
    return 0


def _serve(args: argparse.Namespace, program: Program, base: str) -> int:
    from moec.ir.errors import TraceError
    from moec.run import run_target
    from moec.serve import render_serving, run_serving, serving_json

    if args.iterations is None or args.iterations < 1:
        raise TraceError(f"--iterations: expected an integer >= 1, found {args.iterations}")
    if args.inputs or args.dump_expanded or args.trace_out:
        raise TraceError("--iterations runs seeded inputs or a routing; drop --inputs, "
                         "--dump-expanded and --trace-out")  # fmt: skip
    tgt = run_target(program, base, args.target, parse_overrides(args.overrides))
    result = run_serving(
        program, tgt, iterations=args.iterations, routing=args.routing, seed=args.seed,
        base=base, residency=args.residency, arrivals=args.arrivals,
        allow_overflow=args.allow_overflow,
    )  # fmt: skip
    sys.stdout.write(serving_json(result) if args.json else render_serving(result))
    return 0
