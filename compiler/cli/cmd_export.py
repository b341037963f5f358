"""``moec export``: run a pass pipeline and write the result back to ONNX for ONNX Runtime.

    moec export model.onnx --passes "annotate-importance,assign-precision{tiers=0.6/0.9}" -o out.onnx
    moec export tiny_moe --passes "..." -o out.onnx --format qdq

Each MoE layer is written as ``com.microsoft.MoE``; a layer with a per-expert precision plan is
written so that ONNX Runtime computes exactly the IR's quantized weights (``--format``: ``qmoe``
one QMoE/MoE node per precision group, ``qdq`` DequantizeLinear into one MoE, ``auto`` QMoE where
the layer renormalizes its top-k weights and QDQ elsewhere; see
:mod:`moec.compiler.frontend.export_qmoe`). Runtime rules (``skip-second``, ``caee-prune``) are
decisions of the scheduler and have no ONNX form: they are reported and left out. The file is
written atomically.
"""

from __future__ import annotations

import argparse
from typing import Any

import onnx

from moec.compile import load_model
from moec.compiler.frontend.export_qmoe import FORMATS, export_onnx
from moec.compiler.passes import parse_pipeline
from moec.ir.files import atomic_write, check_outputs


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="apply a pass pipeline and write the model back to ONNX (QMoE/QDQ for precision plans)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("model", metavar="MODEL", help=".onnx file or a model name from `moec models`")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--passes", default="", metavar="PIPELINE", help="pass pipeline string")
    p.add_argument("--format", choices=FORMATS, default="auto", help="precision-plan encoding")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_outputs([args.output], [args.model])
    pipeline = parse_pipeline(args.passes)
    module, _, name = load_model(args.model)
    module = pipeline.run(module)
    model = export_onnx(module, args.format)
    onnx.checker.check_model(model)
    atomic_write(args.output, model.SerializeToString())
    rules = [op.name for op in module.moe_ops() if op.layer.annotations.skip_rule]
    print(f"wrote {args.output}: {name}, {len(module.moe_ops())} MoE layers")
    if rules:
        print(
            f"note: runtime skip/prune rules of {', '.join(rules)} are not part of the ONNX model"
        )
    return 0
