"""``moec check``: does the compiled program compute what the model computes?

    moec check model.onnx [--target T] [--set key=value ...] [--strategy S] [--seed N]
               [--dims name=value ...] [--inputs F.npz] [--tol 1e-4] [--json]
               [--per-layer] [--approx PIPELINE]

Compiles the model in exact mode (no passes: no precision change, no skipping) into a temporary
folder, runs the interpreter's numerics on seeded inputs (token ids in the embedding's range,
symbolic dimensions at small sizes: batch 2, others 8, or ``--dims``), runs ONNX Runtime on the
original model with the same inputs, and compares every graph output (``backends/ort/check.py``
defines the errors). Exit 0 only when every output is within ``--tol`` (relative to the output's
largest magnitude; an output ONNX Runtime returns in float16 within at least four fp16 units,
``FP16_TOL`` there). ``--json`` prints ``{"outputs": [{"name", "max_abs_err", "max_rel_err",
"shape"}], "max_abs_err", "max_rel_err", "passed"}``.

When ONNX Runtime cannot load or run the whole model (or with ``--per-layer``), each lifted MoE
layer is checked alone: the original model's subgraph from the layer's inputs to its output
(found by dataflow, ``backends/ort/extract.py``) on seeded inputs, compiled and interpreted,
against ONNX Runtime on that subgraph, with the same tolerances. A ``note:`` line says why, then
one line per layer; ``--json`` adds ``"per_layer": true``, ``"note"`` and each output's
``"layer"``. A layer whose subgraph cannot be extracted, or that ONNX Runtime cannot run either,
is the usual one-line error (exit 2).

``--approx PIPELINE`` compiles with the pipeline instead and reports what it costs in accuracy
(:mod:`moec.approx`); ``--tol`` then bounds its max relative error against ONNX Runtime on the
original model (exit 1 above it), and ``--json`` adds ``"passed"`` and ``"tol"``.

The work is :func:`moec.check.check_model` and :func:`moec.approx.approx_check`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from moec.approx import approx_check
from moec.check import check_model
from moec.compile import parse_dims, parse_overrides
from moec.compiler.cli.args import add_input_args, add_strategy_arg, add_target_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check", help="compare the compiled program's numbers with ONNX Runtime",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL", help=".onnx file or a tiny model name")
    add_target_args(p)
    add_strategy_arg(p)
    add_input_args(p)
    p.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative tolerance, also of --approx against the original model (default 1e-4)",
    )
    p.add_argument(
        "--alternatives", type=int, default=0, metavar="N",
        help="with --strategy auto: check a program of N online alternatives (moec compile "
        "--alternatives)",
    )  # fmt: skip
    p.add_argument(
        "--per-layer", action="store_true",
        help="check each MoE layer alone against ONNX Runtime on its subgraph (done anyway when "
        "ONNX Runtime cannot run the whole model)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--approx", metavar="PIPELINE", default=None,
        help="report the accuracy cost of a cost-aware pass pipeline (moec/approx.py)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.approx is not None:
        return run_approx(args)
    report = check_model(
        args.model, target=args.target, overrides=parse_overrides(args.overrides),
        strategy=args.strategy, seed=args.seed, dims=parse_dims(args.dims), inputs=args.inputs,
        tol=args.tol, alternatives=args.alternatives, per_layer=args.per_layer,
    )  # fmt: skip
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    elif report.per_layer:
        print(f"note: {report.note}")
        for o in report.outputs:
            own = f", float16 tol {o.tol:g}" if o.tol is not None else ""
            verdict = "passed" if report.output_passed(o) else "FAILED"
            print(
                f"layer {o.layer}: {verdict}  max_abs_err {o.max_abs_err:.3e}  "
                f"max_rel_err {o.max_rel_err:.3e}  (output {o.name}, shape {list(o.shape)}{own})"
            )
    else:
        for o in report.outputs:
            own = f"  (float16: tol {o.tol:g})" if o.tol is not None else ""
            print(
                f"{o.name:<24} shape {list(o.shape)}  max_abs_err {o.max_abs_err:.3e}  "
                f"max_rel_err {o.max_rel_err:.3e}{own}"
            )
        if report.note:
            print(f"note: {report.note}")
    if not args.json:
        verdict = "passed" if report.passed else "FAILED"
        half = {o.tol for o in report.outputs if o.tol is not None}
        also = f"; float16 outputs {max(half):g}" if half else ""
        print(f"{verdict}: max_rel_err {report.max_rel_err:.3e} (tol {args.tol:g}{also})")
    return 0 if report.passed else 1


def run_approx(args: Any) -> int:
    """``moec check --approx PIPELINE``: :func:`moec.approx.approx_check`, printed."""
    report = approx_check(
        args.model, args.approx, target=args.target, overrides=parse_overrides(args.overrides),
        strategy=args.strategy, seed=args.seed, dims=parse_dims(args.dims), inputs=args.inputs,
    )  # fmt: skip
    passed = report.passed(args.tol)
    doc = {**report.to_json(), "passed": passed, "tol": args.tol}
    if args.json:
        print(json.dumps(doc, sort_keys=True))
        return 0 if passed else 1
    print(f"approximation: {report.passes}")
    if report.precision:
        print(
            "  experts by precision: " + ", ".join(f"{k} {v}" for k, v in report.precision.items())
        )
    if report.total_pairs:
        print(f"  dropped (token, expert) pairs: {report.dropped_pairs} of {report.total_pairs}")
    for o in report.outputs:
        top1 = f"{o.top1_agreement:.4f}" if o.top1_agreement is not None else "-"
        print(
            f"{o.name:<24} vs ORT original: max_rel_err {o.max_rel_err:.3e}  mean_rel_err "
            f"{o.mean_rel_err:.3e}  cosine {o.cosine:.6f}  top1 {top1}"
        )
    if report.exported:
        print(
            f"vs ORT running the exported approximation: max_rel_err {doc['vs_exported_max_rel_err']:.3e}"
        )
    if report.export_note:
        print(f"note: {report.export_note}")
    verdict = "passed" if passed else "FAILED"
    print(f"{verdict}: max_rel_err {report.max_rel_err:.3e} vs the original (tol {args.tol:g})")
    return 0 if passed else 1
