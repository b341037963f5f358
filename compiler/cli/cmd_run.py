"""``moec run``: run a stream program in the interpreter: timing, and numbers when it has weights.

    moec run prog.msp [--routing trace.json|trace.npz|synth:zipf=1.0,seed=0] [--seed N]
             [--inputs F.npz] [--target T] [--trace-out trace.json] [--json]
             [--dump-expanded out.msp]
             [--iterations N [--residency lru|popularity] [--arrivals poisson:rate=R,len=L]]

* With ``--inputs`` (or, when the program declares a weights companion and no ``--routing`` is
  given, inputs generated with ``--seed``): numerics; the routing comes from each layer's router.
* Otherwise timing only: the routing comes from ``--routing`` (a trace file, or ``synth:...``),
  default ``synth:zipf=1.0,seed=<seed>`` sized for the program's layers.

Prints a table (or ``--json``); ``--trace-out`` writes a Chrome/Perfetto trace, ``--dump-expanded``
the fully static program of this run. Output files are written atomically, and only when the run
succeeded.

``--iterations N`` serves N consecutive iterations in one simulation (deferred pairs executed in
the next iteration, serving metrics: tokens/s, iteration and token latency percentiles);
``--residency`` keeps loaded micro-slices in spare SRAM between them
(:mod:`moec.compiler.cli.serving_run`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from moec.backends.interp import check_routings, program_target, render, simulate
from moec.backends.interp.numerics import load_weights, seeded_inputs
from moec.backends.interp.report import chrome_trace_json
from moec.ir.errors import ProgramError, TraceError
from moec.ir.files import atomic_write
from moec.ir.routing import RoutingTrace, load_trace, parse_routing_spec
from moec.ir.stream import Program, load_program, print_program, verify_program
from moec.ir.target import Target, load_target


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
    p.add_argument("--trace-out", metavar="TRACE.json", help="write a Chrome/Perfetto trace")
    p.add_argument("--dump-expanded", metavar="OUT.msp", help="write the expanded static program")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--iterations", type=int, metavar="N",
        help="serve N consecutive iterations in one simulation (moec.compiler.cli.serving_run)",
    )  # fmt: skip
    p.add_argument(
        "--residency", choices=("lru", "popularity"),
        help="with --iterations: keep loaded micro-slices in spare SRAM across iterations",
    )  # fmt: skip
    p.add_argument(
        "--arrivals", metavar="poisson:rate=R,len=L",
        help="with --iterations: continuous batching of Poisson requests over the iteration times",
    )  # fmt: skip
    p.set_defaults(func=run)


def _routing(spec: str, program: Program, target: Target) -> RoutingTrace:
    parsed = parse_routing_spec(spec)
    if isinstance(parsed, str):
        return load_trace(parsed)
    tokens = {m.tokens for m in program.layers}
    if len(tokens) > 1:
        raise TraceError(f"layers have different token counts {sorted(tokens)}", spec)
    return parsed.make(
        [(m.experts, m.top_k) for m in program.layers], tokens.pop() if tokens else 1,
        target.num_dies, model=program.name,
    )  # fmt: skip


def _inputs(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise ProgramError(f"cannot read inputs: {err}", path) from None


def run(args: argparse.Namespace) -> int:
    program = load_program(args.program)
    base = os.path.dirname(os.path.abspath(args.program))
    target = None
    if args.target:
        target = load_target(args.target, base_dir=os.getcwd())
    tgt = target if target is not None else program_target(program, base)
    if args.iterations is not None or args.residency or args.arrivals:
        return _serve(args, program, tgt, base)
    inputs = None
    routing = None
    if args.inputs:
        inputs = _inputs(args.inputs)
    elif program.weights is not None and args.routing is None:
        tokens = program.layers[0].tokens if program.layers else 1
        inputs = seeded_inputs(load_weights(program, base), tokens, args.seed)
    spec = args.routing or f"synth:zipf=1.0,seed={args.seed}"
    if (inputs is None and not program.is_static) or (args.routing and inputs is not None):
        verify_program(program, tgt)  # a synthetic routing is sized from the layer declarations
        routing = _routing(spec, program, tgt)
        check_routings(program, tgt, routing, where=spec)
    result = simulate(
        program, target=tgt, routings=routing, inputs=inputs, base_dir=base,
        record_trace=bool(args.trace_out),
    )  # fmt: skip
    outputs: list[tuple[str, bytes | str]] = []
    if args.dump_expanded:
        out_dir = os.path.dirname(os.path.abspath(args.dump_expanded))
        outputs.append((args.dump_expanded, print_program(result.expanded.rebased(base, out_dir))))
    if args.trace_out:
        outputs.append((args.trace_out, chrome_trace_json(result.timeline)))
    for path, data in outputs:
        atomic_write(path, data)
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


def _serve(args: argparse.Namespace, program: Program, tgt: Target, base: str) -> int:
    from moec.compiler.cli.serving_run import render_serving, run_serving, serving_json

    if args.iterations is None or args.iterations < 1:
        raise TraceError(f"--iterations: expected an integer >= 1, found {args.iterations}")
    if args.inputs or args.dump_expanded or args.trace_out:
        raise TraceError("--iterations runs seeded inputs or a routing; drop --inputs, "
                         "--dump-expanded and --trace-out")  # fmt: skip
    result = run_serving(
        program, tgt, iterations=args.iterations, routing=args.routing, seed=args.seed,
        base=base, residency=args.residency, arrivals=args.arrivals,
    )  # fmt: skip
    sys.stdout.write(serving_json(result) if args.json else render_serving(result))
    return 0
