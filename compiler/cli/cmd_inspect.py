"""``moec inspect FILE``: the MoE layers of an ONNX model (or a stream program's summary).

    moec inspect models/tiny_moe.onnx          # table
    moec inspect models/tiny_moe.onnx --json   # one JSON object

Per layer, besides sizes: the scoring (softmax/sigmoid) and DeepSeek-style routing options
(``score_bias``: a correction bias used for choosing experts, ``bias_on_logits``: added to the
router logits rather than the scores; ``shared_in_norm``: the shared experts' scores join the
top-k renormalization; ``softcaps``: soft caps of a SiLU expert's gate factor and up
projection, shown as e.g. ``silu capped 4/25``; ``groups``/``topk_groups``/
``group_score``: group-limited top-k; ``routed_scaling``), shown in the table's routing column as
e.g. ``bias, groups 8/4, x2.5``. ``total_params`` counts every float weight (dense ones and all MoE layers; for a shape-only
preset, what the preset declares); ``active_params_per_token`` counts dense weights plus, per
MoE layer, the router, the k routed experts and the shared experts a token goes through.
Weights are never read for inspection (shape-only files and external data cost nothing).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from moec.ir.graph import Module

_FLOAT = ("f32", "f16", "bf16", "f64")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="show the MoE layers of an ONNX model (or a .msp program)")
    p.add_argument("file", help="an .onnx model or an .msp stream program")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def summarize_module(module: Module, model_name: str) -> dict[str, Any]:
    """The ``--json`` object for a lifted module."""
    layers = []
    dense = sum(w.type.numel for w in module.weights.values() if w.type.dtype in _FLOAT)
    total, active = dense, dense
    for op in module.moe_ops():
        layer = op.layer
        total += layer.param_count()
        active += layer.active_param_count()
        layers.append(
            {
                "name": layer.name,
                "experts": layer.num_experts,
                # LongCat-Flash's "zero" experts: routable, no weights (output = gate * token).
                "identity_experts": layer.identity_experts,
                "top_k": layer.top_k,
                "hidden": layer.hidden,
                "ffn": layer.ffn,
                "activation": layer.activation,
                "scoring": layer.scoring,
                "normalize_topk": layer.normalize_topk,
                "score_bias": layer.has("score_bias"),
                "bias_on_logits": layer.bias_on_logits,
                "shared_in_norm": layer.shared_in_norm,
                "softcaps": [layer.gate_softcap, layer.up_softcap],
                "groups": layer.n_group,
                "topk_groups": layer.topk_group,
                "group_score": layer.group_score if layer.n_group > 1 else None,
                "routed_scaling": layer.routed_scaling,
                "shared_experts": layer.num_shared,
                # A shared MLP beside the layer that stays ordinary ops (its down-projection node).
                "shared_left_dense": layer.annotations.dense_shared,
                # How the lift departs from the graph's own spelling (e.g. a folded gate scale).
                "routing_note": layer.annotations.routing_note,
                "weight_bytes_per_expert": layer.expert_weight_bytes(),
            }
        )
    return {
        "model": model_name,
        "moe_layers": layers,
        "total_params": int(total),
        "active_params_per_token": int(active),
    }


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _routing(layer: dict[str, Any]) -> str:
    """DeepSeek-style routing options in a few words: correction bias, groups, scaling."""
    parts = ["bias"] if layer["score_bias"] else []
    if parts and layer.get("bias_on_logits"):
        parts = ["bias on logits"]
    if layer.get("shared_in_norm"):
        parts.append("shared in norm")
    if layer["groups"] > 1:
        parts.append(f"groups {layer['groups']}/{layer['topk_groups']}")
    if layer["routed_scaling"] != 1.0:
        parts.append(f"x{layer['routed_scaling']:g}")
    return ", ".join(parts) or "-"


def _activation(layer: dict[str, Any]) -> str:
    caps = [f"{c:g}" if c is not None else "-" for c in layer.get("softcaps") or []]
    return (
        f"{layer['activation']} capped {'/'.join(caps)}"
        if set(caps) - {"-"}
        else layer["activation"]
    )


def _experts(layer: dict[str, Any]) -> str:
    z = layer.get("identity_experts") or 0
    return f"{layer['experts']} + {z} identity" if z else str(layer["experts"])


def _shared(layer: dict[str, Any]) -> str:
    dense = " + 1 left dense" if layer.get("shared_left_dense") else ""
    return f"{layer['shared_experts']}{dense}"


def render(summary: dict[str, Any]) -> str:
    """The human table (rich, rendered to text)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['model']}: {len(summary['moe_layers'])} MoE layers")
    for col in (
        "layer",
        "experts",
        "top-k",
        "hidden",
        "ffn",
        "activation",
        "scoring",
        "routing",
        "renorm",
        "shared",
        "MiB/expert",
    ):
        table.add_column(
            col, justify="left" if col in ("layer", "activation", "scoring", "routing") else "right"
        )
    for layer in summary["moe_layers"]:
        table.add_row(
            layer["name"], _experts(layer), str(layer["top_k"]), str(layer["hidden"]),
            str(layer["ffn"]), _activation(layer), layer["scoring"], _routing(layer),
            "yes" if layer["normalize_topk"] else "no", _shared(layer),
            f"{layer['weight_bytes_per_expert'] / 2**20:.2f}",
        )  # fmt: skip
    console = Console(width=140, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    console.print(
        f"total params {_human(summary['total_params'])}, "
        f"active per token {_human(summary['active_params_per_token'])}"
    )
    return console.export_text()


def _inspect_program(path: str, as_json: bool) -> int:
    """Parse and verify the program (against the target it declares), then summarize it."""
    from moec.ir.errors import ProgramError
    from moec.ir.stream import load_program, verify_program
    from moec.ir.stream.summary import render as render_program
    from moec.ir.stream.summary import summarize as summarize_program

    program = load_program(path)
    if program.target is None:  # as `moec run` would say: nothing can be timed or checked
        raise ProgramError("the program names no target; pass one", program.filename)
    verify_program(program)
    if program.weights is not None:  # what `moec run` checks of the companion, checked first
        from moec.backends.interp.numerics import check_companion, load_weights

        check_companion(program, load_weights(program, None))
    summary = summarize_program(program)
    print(json.dumps(summary, indent=2, sort_keys=True) if as_json else render_program(summary))
    return 0


def run(args: argparse.Namespace) -> int:
    if str(args.file).endswith(".msp"):
        return _inspect_program(args.file, args.json)
    from moec.compiler.frontend.lift import load_module

    module, _ = load_module(args.file, load_weights=False)
    summary = summarize_module(module, str(args.file))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary), end="")
    return 0
