"""Routing statistics of a byte-level MoE language model on a text, computed with ONNX Runtime.

Any MoE form moec's frontend lifts works (``com.microsoft.MoE`` with softmax routing, the
decomposed DeepSeek-style form with sigmoid scores, correction bias and groups, ...): the
frontend finds each MoE layer and its input value; that value is added as an extra graph output
of an in-memory copy of the model; the text is fed in non-overlapping windows of the model's
context, and each token's experts are chosen by :func:`moec.ir.moe.route` on the captured input
(the same rule the interpreter runs; ties to the lower expert id, as ONNX Runtime's TopK).
Per layer it reports the expert load (token-expert assignments per expert and their share of
all assignments), the entropy of that load distribution in bits against the uniform maximum
log2(E), the hottest/coldest and hottest/mean ratios, the mean entropy of a token's router
scores normalized to sum to one (for softmax routing: the router distribution), and the input
bytes each expert most often serves as a token's first choice.

    python scripts/lm_routing_stats.py models/tiny_moe_lm.onnx --text models/tiny_moe_lm.heldout.txt
    python scripts/lm_routing_stats.py models/tiny_moe_lm_fg.onnx --text models/tiny_moe_lm.heldout.txt
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

from moec.backends.ort.perplexity import windows
from moec.compiler.frontend import load_module
from moec.ir.moe import MoELayer, route, router_scores


def routing(
    model_path: str, ids: np.ndarray, context: int
) -> list[tuple[MoELayer, np.ndarray, np.ndarray]]:
    """Per MoE layer (layer, router scores [tokens, E], chosen expert ids [tokens, k]) over
    the bytes ``ids`` fed in windows of ``context``."""
    _, lifted = load_module(model_path)
    if not lifted.lifted:
        raise SystemExit(f"{model_path}: no MoE layer recognized")
    model = onnx.ModelProto()
    model.CopyFrom(lifted.model)
    outputs = {o.name for o in model.graph.output}
    for lf in lifted.lifted:
        if lf.input not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=lf.input))
            outputs.add(lf.input)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [lf.input for lf in lifted.lifted]
    input_name = sess.get_inputs()[0].name
    per_layer: list[list[np.ndarray]] = [[] for _ in names]
    for w in windows(ids.size + 1, context):  # +1: every byte is an input once
        outs = sess.run(names, {input_name: ids[None, w.start : w.start + w.length]})
        for acc, out, lf in zip(per_layer, outs, lifted.lifted, strict=True):
            acc.append(np.asarray(out).reshape(-1, lf.layer.hidden))
    found = []
    for lf, acc in zip(lifted.lifted, per_layer, strict=True):
        x = np.concatenate(acc)
        found.append((lf.layer, router_scores(lf.layer, x), route(lf.layer, x)[0]))
    return found


def layer_stats(scores: np.ndarray, top: np.ndarray, ids: np.ndarray) -> dict[str, object]:
    """Load, shares and entropies of one layer; ``ids`` are the input bytes of the tokens."""
    experts, k = scores.shape[1], top.shape[1]
    probs = scores.astype(np.float64)
    probs = probs / probs.sum(axis=-1, keepdims=True)
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
        "tokens": int(scores.shape[0]),
        "experts": experts,
        "top_k": k,
        "load": counts.tolist(),
        "share": [round(float(s), 4) for s in shares],
        "load_entropy_bits": round(float(-(nz * np.log2(nz)).sum()), 4),
        "max_entropy_bits": round(math.log2(experts), 4),
        "hot_cold_ratio": round(float(counts.max() / max(counts.min(), 1)), 2),
        "hot_mean_ratio": round(float(counts.max() / counts.mean()), 2),
        "router_entropy_bits": round(float(token_entropy), 4),
        "top1_bytes": top_bytes,
    }


def _show(b: int) -> str:
    """A byte as a short printable label for tables."""
    names = {9: "\\t", 10: "\\n", 32: "space", 124: "\\|", 96: "backtick"}
    if b in names:
        return names[b]
    return chr(b) if 33 <= b < 127 else f"0x{b:02x}"


def _bytes_cell(labels: list[str]) -> str:
    return " ".join(f"`{c}`" if len(c) == 1 else c for c in labels)


def markdown(stats: dict[str, dict[str, object]]) -> str:
    """Per layer a summary line and a table: every expert for up to 16 experts; else the shares
    in rows of 16 experts and the eight busiest experts with their top-1 bytes."""
    lines = []
    for name, s in stats.items():
        load, share, top_bytes = s["load"], s["share"], s["top1_bytes"]
        assert isinstance(load, list) and isinstance(share, list) and isinstance(top_bytes, list)
        lines.append(
            f"**{name}** ({s['tokens']} tokens, top-{s['top_k']}): load entropy "
            f"{s['load_entropy_bits']} bits of {s['max_entropy_bits']}, hottest/coldest "
            f"{s['hot_cold_ratio']}x, hottest/mean {s['hot_mean_ratio']}x, mean router entropy "
            f"per token {s['router_entropy_bits']} bits"
        )
        lines.append("")
        if len(load) <= 16:
            lines.append("| expert | " + " | ".join(str(e) for e in range(len(load))) + " |")
            lines.append("|---" * (len(load) + 1) + "|")
            lines.append("| tokens | " + " | ".join(str(c) for c in load) + " |")
            lines.append("| share | " + " | ".join(f"{v:.3f}" for v in share) + " |")
            lines.append("| top-1 bytes | " + " | ".join(_bytes_cell(b) for b in top_bytes) + " |")
        else:
            lines.append("| experts | " + " | ".join(f"+{i}" for i in range(16)) + " |")
            lines.append("|---" + "|---:" * 16 + "|")
            for lo in range(0, len(load), 16):
                row = share[lo : lo + 16]
                lines.append(
                    f"| {lo}-{lo + len(row) - 1} share % | "
                    + " | ".join(f"{100 * v:.1f}" for v in row)
                    + " |"
                )
            hot = sorted(range(len(load)), key=lambda e: (-load[e], e))[:8]
            lines.append("")
            lines.append("| busiest experts | " + " | ".join(str(e) for e in hot) + " |")
            lines.append("|---" * 9 + "|")
            lines.append("| share | " + " | ".join(f"{share[e]:.3f}" for e in hot) + " |")
            lines.append(
                "| top-1 bytes | " + " | ".join(_bytes_cell(top_bytes[e]) for e in hot) + " |"
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
        layer.name: layer_stats(scores, top, ids)
        for layer, scores, top in routing(args.model, ids, args.context)
    }
    print(json.dumps(stats, indent=1) if args.json else markdown(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
