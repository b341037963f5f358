"""Routing statistics of a byte-level MoE language model, computed with ONNX Runtime.

For every ``com.microsoft.MoE`` node, the router logits (its ``router_probs`` input) are added as
extra graph outputs of an in-memory copy of the model; the text is fed in non-overlapping windows
of the model's context, and each token's top-k experts are taken from the softmax of its logits
(ties to the lower expert id, as ONNX Runtime's kernel does). Per layer it reports the expert
load (token-expert assignments per expert and their share of all assignments), the entropy of
that load distribution in bits against the uniform maximum log2(E), the hottest/coldest ratio,
and the mean entropy of a token's router distribution.

    python scripts/lm_routing_stats.py models/tiny_moe_lm.onnx --text models/tiny_moe_lm.heldout.txt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from moec.backends.ort.perplexity import windows


def moe_router_outputs(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """(node name, router-logits value name, k) of every com.microsoft.MoE node, in graph order."""
    found = []
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type == "MoE":
            k = next((a.i for a in node.attribute if a.name == "k"), 1)
            found.append((node.name, node.input[1], k))
    return found


def router_logits(
    model_path: str, ids: np.ndarray, context: int
) -> list[tuple[str, int, np.ndarray]]:
    """Per MoE layer (name, k, router logits [tokens, E]) over ``ids`` in windows of ``context``."""
    model = onnx.load(model_path)
    layers = moe_router_outputs(model)
    if not layers:
        raise SystemExit(f"{model_path}: no com.microsoft.MoE node")
    for _, value, _ in layers:
        model.graph.output.append(
            helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [value for _, value, _ in layers]
    input_name = sess.get_inputs()[0].name
    per_layer: list[list[np.ndarray]] = [[] for _ in layers]
    for w in windows(ids.size + 1, context):  # +1: every byte is an input once
        outs = sess.run(names, {input_name: ids[None, w.start : w.start + w.length]})
        for acc, out in zip(per_layer, outs, strict=True):
            acc.append(np.asarray(out))
    return [
        (name, k, np.concatenate(acc)) for (name, _, k), acc in zip(layers, per_layer, strict=True)
    ]


def layer_stats(logits: np.ndarray, k: int, ids: np.ndarray) -> dict[str, object]:
    """Load, shares and entropies of one layer; ``ids`` are the input bytes of the tokens."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    experts = probs.shape[1]
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    counts = np.bincount(top.reshape(-1), minlength=experts)
    shares = counts / counts.sum()
    nz = shares[shares > 0]
    token_entropy = -(probs * np.log2(np.clip(probs, 1e-30, None))).sum(axis=-1).mean()
    top_bytes = []
    for e in range(experts):
        freq = np.bincount(ids[top[:, 0] == e], minlength=256)
        order = sorted(range(256), key=lambda b: (-freq[b], b))[:4]
        top_bytes.append([_show(b) for b in order if freq[b] > 0])
    return {
        "tokens": int(logits.shape[0]),
        "experts": experts,
        "top_k": k,
        "load": counts.tolist(),
        "share": [round(float(s), 4) for s in shares],
        "load_entropy_bits": round(float(-(nz * np.log2(nz)).sum()), 4),
        "max_entropy_bits": round(math.log2(experts), 4),
        "hot_cold_ratio": round(float(counts.max() / max(counts.min(), 1)), 2),
        "router_entropy_bits": round(float(token_entropy), 4),
        "top1_bytes": top_bytes,
    }


def _show(b: int) -> str:
    """A byte as a short printable label for tables."""
    names = {9: "\\t", 10: "\\n", 32: "space", 124: "\\|", 96: "backtick"}
    if b in names:
        return names[b]
    return chr(b) if 33 <= b < 127 else f"0x{b:02x}"


def markdown(stats: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, s in stats.items():
        load = s["load"]
        share = s["share"]
        assert isinstance(load, list) and isinstance(share, list)
        lines.append(
            f"**{name}** ({s['tokens']} tokens, top-{s['top_k']}): load entropy "
            f"{s['load_entropy_bits']} bits of {s['max_entropy_bits']}, hottest/coldest "
            f"{s['hot_cold_ratio']}x, mean router entropy per token {s['router_entropy_bits']} bits"
        )
        lines.append("")
        lines.append("| expert | " + " | ".join(str(e) for e in range(len(load))) + " |")
        lines.append("|---" * (len(load) + 1) + "|")
        lines.append("| tokens | " + " | ".join(str(c) for c in load) + " |")
        lines.append("| share | " + " | ".join(f"{v:.3f}" for v in share) + " |")
        top_bytes = s["top1_bytes"]
        assert isinstance(top_bytes, list)
        lines.append(
            "| top-1 bytes | "
            + " | ".join(" ".join(f"`{c}`" if len(c) == 1 else c for c in bs) for bs in top_bytes)
            + " |"
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--text", required=True)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--max-bytes", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data = Path(args.text).read_bytes()[: args.max_bytes]
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    stats = {
        name: layer_stats(lg, k, ids)
        for name, k, lg in router_logits(args.model, ids, args.context)
    }
    print(json.dumps(stats, indent=1) if args.json else markdown(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
