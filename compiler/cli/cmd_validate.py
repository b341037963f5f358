"""``moec validate compute``: moec's GEMM cycles against SCALE-Sim v3 (exit 1 above 5%)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from moec.ir.errors import MoecError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("validate", help="check moec's cost model against references")
    sub = p.add_subparsers(dest="validate_command", metavar="WHAT", required=True)
    c = sub.add_parser(
        "compute", help="GEMM cycles against SCALE-Sim v3 (needs pip install scalesim)"
    )
    c.add_argument("--json", action="store_true", help='print {"rows": [...]} as JSON')
    c.add_argument("--array", default="32x64", metavar="RxC", help="array geometry (32x64)")
    c.add_argument(
        "--all", action="store_true",
        help="also the output-stationary shapes above 256 tokens (minutes in SCALE-Sim)",
    )  # fmt: skip
    c.set_defaults(func=run_compute)


def _array(text: str) -> tuple[int, int]:
    r, x, c = text.partition("x")
    if not x or not r.isdigit() or not c.isdigit() or int(r) <= 0 or int(c) <= 0:
        raise MoecError(f"expected ROWSxCOLS with positive integers, found {text!r}", "--array")
    return int(r), int(c)


def run_compute(args: argparse.Namespace) -> int:
    from moec.backends.scalesim.compute_check import TOLERANCE, check

    rows, cols = _array(args.array)
    results = check(rows, cols, full=args.all)
    worst = max(r.rel_err for r in results)
    if args.json:
        print(json.dumps({"rows": [r.to_json() for r in results]}, indent=1))
    else:
        print(f"{'shape':34} {'m':>5} {'k':>5} {'n':>5} df  {'moec':>9} {'SCALE-Sim':>9} rel_err")
        for r in results:
            print(
                f"{r.what:34} {r.m:5d} {r.k:5d} {r.n:5d} {r.dataflow:3} {r.moec_cycles:9d} "
                f"{r.reference_cycles:9d} {r.rel_err:7.2%}"
            )
        print(f"{len(results)} shapes on a {rows}x{cols} array, worst rel_err {worst:.2%}")
    if worst > TOLERANCE:
        print(f"moec: validate: rel_err {worst:.2%} above {TOLERANCE:.0%}", file=sys.stderr)
        return 1
    return 0
