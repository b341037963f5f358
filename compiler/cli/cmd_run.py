"""``moec run``: run a stream program in the interpreter: timing, and numbers when it has weights.

    moec run prog.msp [--routing trace.json|trace.npz|synth:zipf=1.0,seed=0] [--seed N]
             [--inputs F.npz] [--target T] [--trace-out trace.json] [--json]
             [--dump-expanded out.msp]

* With ``--inputs`` (or, when the program declares a weights companion and no ``--routing`` is
  given, inputs generated with ``--seed``): numerics; the routing comes from each layer's router.
* Otherwise timing only: the routing comes from ``--routing`` (a trace file, or ``synth:...``),
  default ``synth:zipf=1.0,seed=<seed>`` sized for the program's layers.

Prints a table (or ``--json``); ``--trace-out`` writes a Chrome/Perfetto trace, ``--dump-expanded``
the fully static program of this run. Output files are written atomically, and only when the run
succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from moec.backends.interp import render
from moec.backends.interp.report import chrome_trace_json
from moec.ir.files import atomic_write
from moec.ir.stream import print_program
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
    p.add_argument("--trace-out", metavar="TRACE.json", help="write a Chrome/Perfetto trace")
    p.add_argument("--dump-expanded", metavar="OUT.msp", help="write the expanded static program")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = run_program(
        args.program, routing=args.routing, seed=args.seed, inputs=args.inputs,
        target=args.target, record_trace=bool(args.trace_out),
    )  # fmt: skip
    base = os.path.dirname(os.path.abspath(args.program))
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
