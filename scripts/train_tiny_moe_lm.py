"""Train the tiny byte-level MoE language model and export it to ONNX with ``com.microsoft.MoE``.

The model is a decoder-only transformer over bytes (vocabulary 256): byte and learned position
embeddings, ``--layers`` blocks of (RMSNorm, causal multi-head self-attention, RMSNorm, MoE with
``--experts`` SwiGLU experts and top-``--top-k`` softmax routing renormalized over the chosen
experts), a final RMSNorm and an untied output projection. Everything is seeded and runs with
deterministic algorithms on one thread, so the same command on the same machine gives the same
weights and a byte-identical ONNX file. A small Switch-style load-balancing loss
(``--aux-coef 0.002``) keeps every expert in use while routing stays skewed: without it two of
layer 1's eight experts had fallen to 0.4% and 1.0% of the assignments by step 800; with 0.01
the load was close to uniform.

Data: the ``.py`` files of this Python's standard library (``sysconfig.get_paths()["stdlib"]``),
skipping any path with a folder named ``site-packages``, ``test``, ``tests`` or ``idle_test``.
Files are ordered by the SHA-256 of their relative path (POSIX spelling); a file is held out
when the first 8 hex digits of that hash, as an integer, are divisible by 10. Train and held-out
text are the files' bytes concatenated in that order, each file taken whole while it fits under
the cap (``--train-bytes``, ``--heldout-bytes``); the held-out text is written next to the model.

The ONNX graph is written by hand with ``onnx.helper`` (no ``torch.onnx``): each MoE layer is
``Reshape([-1, d])`` of the normalized hidden state, a router ``MatMul`` with a constant
``[d, E]`` weight, and a ``com.microsoft.MoE`` node (``k``, ``normalize_routing_weights=1``,
``activation_type="swiglu"``, ``swiglu_fusion=1`` with interleaved gate/up rows,
``activation_alpha=1``, ``activation_beta=0``: exactly ``silu(gate) * up``) whose output is
reshaped back. The byte frequencies of the training text go into the model's metadata
(``moec.unigram_counts``) for the unigram baseline of ``moec eval``. The script ends by checking
that ONNX Runtime's logits match torch's.

Usage (the committed model; the defaults are its settings)::

    python scripts/train_tiny_moe_lm.py --seed 0 --steps 3000 --hidden 128 --ffn 128 \
        --experts 8 --top-k 2 --aux-coef 0.002 --out models/tiny_moe_lm.onnx

``--shared-ffn N`` adds one always-on SwiGLU shared expert of width N to every MoE layer
(exported as dense MatMul/Sigmoid/Mul ops added to the MoE node's output).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from moec.ir.files import atomic_write

SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idle_test"})
RMS_EPS = 1e-5


# --- data ---------------------------------------------------------------------------------------


def stdlib_split(train_cap: int, heldout_cap: int) -> tuple[bytes, bytes, list[str], list[str]]:
    """Train and held-out text from the stdlib sources by the fixed rule in the module docstring."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[tuple[str, str, Path]] = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if SKIP_DIRS & set(rel.split("/")):
            continue
        files.append((hashlib.sha256(rel.encode()).hexdigest(), rel, path))
    files.sort()
    train: list[bytes] = []
    heldout: list[bytes] = []
    train_names: list[str] = []
    heldout_names: list[str] = []
    sizes = {"train": 0, "heldout": 0}
    for digest, rel, path in files:
        is_heldout = int(digest[:8], 16) % 10 == 0
        kind, cap = ("heldout", heldout_cap) if is_heldout else ("train", train_cap)
        data = path.read_bytes()
        if sizes[kind] + len(data) > cap:
            continue
        sizes[kind] += len(data)
        (heldout if is_heldout else train).append(data)
        (heldout_names if is_heldout else train_names).append(rel)
    return b"".join(train), b"".join(heldout), train_names, heldout_names


# --- model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    hidden: int = 128
    heads: int = 4
    layers: int = 2
    experts: int = 8
    top_k: int = 2
    ffn: int = 128
    context: int = 128
    vocab: int = 256
    shared_ffn: int = 0


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + RMS_EPS) * w


class MoE(torch.nn.Module):
    """Softmax router, top-k renormalized, SwiGLU experts (silu(x W_gate) * (x W_up)) W_down."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d, f, e = cfg.hidden, cfg.ffn, cfg.experts
        self.top_k = cfg.top_k
        self.router = torch.nn.Parameter(torch.randn(d, e) * d**-0.5)
        self.w_gate = torch.nn.Parameter(torch.randn(e, d, f) * d**-0.5)
        self.w_up = torch.nn.Parameter(torch.randn(e, d, f) * d**-0.5)
        self.w_down = torch.nn.Parameter(torch.randn(e, f, d) * f**-0.5 / math.sqrt(2 * cfg.layers))
        self.shared: torch.nn.ParameterList | None = None
        if cfg.shared_ffn:
            fs = cfg.shared_ffn
            self.shared = torch.nn.ParameterList(
                [
                    torch.randn(d, fs) * d**-0.5,
                    torch.randn(d, fs) * d**-0.5,
                    torch.randn(fs, d) * fs**-0.5 / math.sqrt(2 * cfg.layers),
                ]
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, d] -> (y [T, d], router probs [T, E], expert ids [T, k])."""
        probs = torch.softmax(x @ self.router, dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)
        y = torch.zeros_like(x)
        for e in range(self.w_gate.shape[0]):
            rows, slots = torch.nonzero(top_i == e, as_tuple=True)
            if rows.numel() == 0:
                continue
            xe = x[rows]
            h = F.silu(xe @ self.w_gate[e]) * (xe @ self.w_up[e])
            y = y.index_add(0, rows, (h @ self.w_down[e]) * gates[rows, slots, None])
        if self.shared is not None:
            sh_gate, sh_up, sh_down = self.shared
            y = y + (F.silu(x @ sh_gate) * (x @ sh_up)) @ sh_down
        return y, probs, top_i


class Block(torch.nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d = cfg.hidden
        self.heads = cfg.heads
        self.norm1 = torch.nn.Parameter(torch.ones(d))
        self.norm2 = torch.nn.Parameter(torch.ones(d))
        self.wq = torch.nn.Parameter(torch.randn(d, d) * d**-0.5)
        self.wk = torch.nn.Parameter(torch.randn(d, d) * d**-0.5)
        self.wv = torch.nn.Parameter(torch.randn(d, d) * d**-0.5)
        self.wo = torch.nn.Parameter(torch.randn(d, d) * d**-0.5 / math.sqrt(2 * cfg.layers))
        self.moe = MoE(cfg)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h, dh = self.heads, d // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, h, dh).transpose(1, 2)

        q, k, v = split(x @ self.wq), split(x @ self.wk), split(x @ self.wv)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(dh))
        mask = torch.triu(torch.full((s, s), float("-inf")), diagonal=1)
        out = torch.softmax(scores + mask, dim=-1) @ v
        return out.transpose(1, 2).reshape(b, s, d) @ self.wo

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + self.attention(rms_norm(x, self.norm1))
        b, s, d = x.shape
        y, probs, ids = self.moe(rms_norm(x, self.norm2).reshape(b * s, d))
        return x + y.reshape(b, s, d), probs, ids


class TinyMoELM(torch.nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = torch.nn.Parameter(torch.randn(cfg.vocab, cfg.hidden) * 0.5)
        self.pos = torch.nn.Parameter(torch.randn(cfg.context, cfg.hidden) * 0.1)
        self.blocks = torch.nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm_f = torch.nn.Parameter(torch.ones(cfg.hidden))
        self.head = torch.nn.Parameter(torch.randn(cfg.hidden, cfg.vocab) * cfg.hidden**-0.5)

    def forward(
        self, ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """ids [B, S] -> (logits [B, S, 256], per layer (router probs, expert ids))."""
        x = self.embed[ids] + self.pos[: ids.shape[1]]
        routing = []
        for block in self.blocks:
            x, probs, top_i = block(x)
            routing.append((probs, top_i))
        return rms_norm(x, self.norm_f) @ self.head, routing


def balance_loss(routing: list[tuple[torch.Tensor, torch.Tensor]], experts: int) -> torch.Tensor:
    """Switch-style load-balancing loss E * sum_e (share of assignments_e) * (mean prob_e)."""
    total = torch.zeros(())
    for probs, top_i in routing:
        share = F.one_hot(top_i, experts).float().mean(dim=(0, 1))
        total = total + experts * (share * probs.mean(dim=0)).sum()
    return total / len(routing)


# --- training -----------------------------------------------------------------------------------


def batches(data: torch.Tensor, ctx: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, data.numel() - ctx - 1, (batch,), generator=gen)
    return torch.stack([data[s : s + ctx + 1] for s in starts.tolist()])


def train(
    args: argparse.Namespace, cfg: Config, train_text: bytes, heldout_text: bytes
) -> TinyMoELM:
    torch.manual_seed(args.seed)
    model = TinyMoELM(cfg)
    data = torch.frombuffer(bytearray(train_text), dtype=torch.uint8).long()
    held = torch.frombuffer(bytearray(heldout_text), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        xy = batches(data, cfg.context, args.batch, gen)
        logits, routing = model(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), xy[:, 1:].reshape(-1))
        total = loss + args.aux_coef * balance_loss(routing, cfg.experts) if args.aux_coef else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            loads = [
                np.bincount(ids.flatten().numpy(), minlength=cfg.experts).tolist()
                for _, ids in routing
            ]
            print(
                f"step {step:5d} loss {loss.item():.4f} ({loss.item() / math.log(2):.3f} bits/byte) "
                f"lr {lr_at(step):.2e} t {time.perf_counter() - t0:7.1f}s loads {loads}",
                flush=True,
            )
    model.eval()
    with torch.no_grad():
        n = (min(held.numel(), 64 * (cfg.context + 1)) // (cfg.context + 1)) * (cfg.context + 1)
        xy = held[:n].reshape(-1, cfg.context + 1)
        logits, _ = model(xy[:, :-1])
        held_loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), xy[:, 1:].reshape(-1)).item()
    print(
        f"held-out loss {held_loss:.4f} nats/byte, perplexity {math.exp(held_loss):.3f}", flush=True
    )
    print(f"training took {time.perf_counter() - t0:.1f}s", flush=True)
    return model


# --- ONNX export --------------------------------------------------------------------------------


class GraphWriter:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, kind: str, inputs: list[str], name: str, domain: str = "", **attrs: Any) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, domain=domain, **attrs))
        return name


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _rms(g: GraphWriter, x: str, w: torch.Tensor, name: str) -> str:
    sq = g.op("Mul", [x, x], f"{name}/sq")
    mean = g.op("ReduceMean", [sq, "axes_last"], f"{name}/mean", keepdims=1)
    denom = g.op("Sqrt", [g.op("Add", [mean, "rms_eps"], f"{name}/add_eps")], f"{name}/rms")
    normed = g.op("Div", [x, denom], f"{name}/div")
    return g.op("Mul", [normed, g.const(f"{name}.weight", _np(w))], f"{name}/out")


def _attention(g: GraphWriter, x: str, blk: Block, name: str, cfg: Config) -> str:
    dh = cfg.hidden // cfg.heads
    heads = g.const(f"{name}.heads_shape", np.array([0, 0, cfg.heads, dh], dtype=np.int64))
    parts = {}
    for key in ("q", "k", "v"):
        w = g.const(f"{name}.w{key}", _np(getattr(blk, f"w{key}")))
        proj = g.op("MatMul", [x, w], f"{name}/{key}")
        split = g.op("Reshape", [proj, heads], f"{name}/{key}_heads")
        perm = [0, 2, 3, 1] if key == "k" else [0, 2, 1, 3]
        parts[key] = g.op("Transpose", [split], f"{name}/{key}_t", perm=perm)
    scores = g.op("MatMul", [parts["q"], parts["k"]], f"{name}/scores")
    scale = g.const(f"{name}.scale", np.array(1.0 / math.sqrt(dh), dtype=np.float32))
    scaled = g.op("Mul", [scores, scale], f"{name}/scaled")
    masked = g.op("Add", [scaled, "causal_mask_s"], f"{name}/masked")
    probs = g.op("Softmax", [masked], f"{name}/probs", axis=-1)
    ctx = g.op("MatMul", [probs, parts["v"]], f"{name}/ctx")
    merged = g.op("Transpose", [ctx], f"{name}/ctx_t", perm=[0, 2, 1, 3])
    flat = g.op("Reshape", [merged, "shape_bsd"], f"{name}/ctx_flat")
    return g.op("MatMul", [flat, g.const(f"{name}.wo", _np(blk.wo))], f"{name}/out")


def _moe(g: GraphWriter, x: str, moe: MoE, name: str, cfg: Config) -> str:
    tokens = g.op("Reshape", [x, "shape_td"], f"{name}/tokens")
    router = g.op(
        "MatMul", [tokens, g.const(f"{name}.router", _np(moe.router))], f"{name}/router_logits"
    )
    gate, up = _np(moe.w_gate).transpose(0, 2, 1), _np(moe.w_up).transpose(0, 2, 1)  # [E, F, d]
    fc1 = np.empty((cfg.experts, 2 * cfg.ffn, cfg.hidden), dtype=np.float32)
    fc1[:, 0::2, :] = gate  # swiglu_fusion=1: interleaved rows, gate first
    fc1[:, 1::2, :] = up
    fc2 = _np(moe.w_down).transpose(0, 2, 1)  # [E, d, F]
    out = g.op(
        "MoE",
        [tokens, router, g.const(f"{name}.fc1", fc1), "", g.const(f"{name}.fc2", fc2)],
        f"{name}/moe",
        domain="com.microsoft",
        k=cfg.top_k,
        normalize_routing_weights=1,
        activation_type="swiglu",
        swiglu_fusion=1,
        activation_alpha=1.0,
        activation_beta=0.0,
    )
    if moe.shared is not None:
        # the shared expert stays dense ops next to the MoE node: silu(x Wg) * (x Wu) @ Wd
        sh_gate, sh_up, sh_down = (
            g.const(f"{name}.shared_{k}", _np(w))
            for k, w in zip(("gate", "up", "down"), moe.shared, strict=True)
        )
        gate_proj = g.op("MatMul", [tokens, sh_gate], f"{name}/shared_gate")
        silu = g.op(
            "Mul",
            [gate_proj, g.op("Sigmoid", [gate_proj], f"{name}/shared_sigmoid")],
            f"{name}/shared_silu",
        )
        hidden = g.op(
            "Mul",
            [silu, g.op("MatMul", [tokens, sh_up], f"{name}/shared_up")],
            f"{name}/shared_hidden",
        )
        shared = g.op("MatMul", [hidden, sh_down], f"{name}/shared_down")
        out = g.op("Add", [out, shared], f"{name}/with_shared")
    return g.op("Reshape", [out, "shape_bsd"], f"{name}/out")


def export(model: TinyMoELM, unigram: list[int], meta: dict[str, str]) -> onnx.ModelProto:
    """The ONNX graph of ``model``: input_ids int64 [batch, seq] -> logits f32 [batch, seq, 256]."""
    cfg = model.cfg
    g = GraphWriter()
    g.const("axes_last", np.array([-1], dtype=np.int64))
    g.const("rms_eps", np.array(RMS_EPS, dtype=np.float32))
    g.const("zero_1d", np.array([0], dtype=np.int64))
    g.const("one_1d", np.array([1], dtype=np.int64))
    g.const("two_1d", np.array([2], dtype=np.int64))
    g.const("shape_td", np.array([-1, cfg.hidden], dtype=np.int64))
    g.const("hidden_1d", np.array([cfg.hidden], dtype=np.int64))
    mask = np.triu(np.full((cfg.context, cfg.context), -np.inf, dtype=np.float32), k=1)
    g.const("causal_mask", mask)
    shape_ids = g.op("Shape", ["input_ids"], "ids_shape")
    seq = g.op("Slice", [shape_ids, "one_1d", "two_1d"], "seq_len")
    g.op("Concat", [shape_ids, "hidden_1d"], "shape_bsd", axis=0)
    g.op("Slice", ["causal_mask", "zero_1d", seq, "zero_1d"], "causal_rows")
    g.op("Slice", ["causal_rows", "zero_1d", seq, "one_1d"], "causal_mask_s")
    tok = g.op("Gather", [g.const("embed", _np(model.embed)), "input_ids"], "tok_embed", axis=0)
    pos = g.op(
        "Slice", [g.const("pos_embed", _np(model.pos)), "zero_1d", seq, "zero_1d"], "pos_rows"
    )
    x = g.op("Add", [tok, pos], "embed_out")
    blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]
    for i, blk in enumerate(blocks):
        n1 = _rms(g, x, blk.norm1, f"layer{i}.attn_norm")
        x = g.op("Add", [x, _attention(g, n1, blk, f"layer{i}.attn", cfg)], f"layer{i}/attn_res")
        n2 = _rms(g, x, blk.norm2, f"layer{i}.moe_norm")
        x = g.op("Add", [x, _moe(g, n2, blk.moe, f"layer{i}.moe", cfg)], f"layer{i}/moe_res")
    xf = _rms(g, x, model.norm_f, "final_norm")
    g.op("MatMul", [xf, g.const("lm_head", _np(model.head))], "logits")
    graph = helper.make_graph(
        g.nodes,
        "tiny_moe_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab])],
        g.inits,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
        producer_name="moec-train-tiny-moe-lm",
    )
    onnx_model.ir_version = 10
    props = {"moec.unigram_counts": json.dumps(unigram), "moec.context": str(cfg.context), **meta}
    for key in sorted(props):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, props[key]
    onnx.checker.check_model(onnx_model)
    return onnx_model


def verify(model: TinyMoELM, onnx_bytes: bytes, text: bytes, tol: float) -> float:
    """Max |ORT logits - torch logits| on a few held-out windows; raises above ``tol``."""
    ctx = model.cfg.context
    ids = np.frombuffer(text[: 4 * ctx], dtype=np.uint8).astype(np.int64).reshape(4, ctx)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (ids, ids[:1, : ctx // 2 + 3]):
        got = sess.run(["logits"], {"input_ids": batch})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(batch))[0].numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > tol:
        raise SystemExit(f"ONNX Runtime logits differ from torch by {worst:.3g} > {tol}")
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models/tiny_moe_lm.onnx")
    p.add_argument("--heldout-out", default=None, help="default: <out stem>.heldout.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--aux-coef", type=float, default=0.002, help="load-balancing loss weight")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--ffn", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--shared-ffn", type=int, default=0, help="width of one shared expert (0: none)")
    p.add_argument("--train-bytes", type=int, default=4_000_000)
    p.add_argument("--heldout-bytes", type=int, default=150_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = Config(
        hidden=args.hidden, heads=args.heads, layers=args.layers, experts=args.experts,
        top_k=args.top_k, ffn=args.ffn, context=args.context, shared_ffn=args.shared_ffn,
    )  # fmt: skip
    train_text, heldout_text, train_files, heldout_files = stdlib_split(
        args.train_bytes, args.heldout_bytes
    )
    print(
        f"train {len(train_text)} bytes from {len(train_files)} files, held-out {len(heldout_text)} "
        f"bytes from {len(heldout_files)} files (Python {sys.version.split()[0]})",
        flush=True,
    )
    t0 = time.perf_counter()
    model = train(args, cfg, train_text, heldout_text)
    seconds = time.perf_counter() - t0
    unigram = np.bincount(np.frombuffer(train_text, dtype=np.uint8), minlength=256).tolist()
    meta = {
        "moec.config": json.dumps(asdict(cfg), sort_keys=True),
        "moec.training": json.dumps(
            {
                "seed": args.seed,
                "steps": args.steps,
                "batch": args.batch,
                "lr": args.lr,
                "aux_coef": args.aux_coef,
                "train_bytes": len(train_text),
                "heldout_bytes": len(heldout_text),
                "python": sys.version.split()[0],
                "torch": torch.__version__,
            },
            sort_keys=True,
        ),  # fmt: skip
    }
    onnx_bytes = export(model, unigram, meta).SerializeToString()
    diff = verify(model, onnx_bytes, heldout_text, tol=1e-4)
    out = Path(args.out)
    heldout_path = Path(args.heldout_out) if args.heldout_out else out.with_suffix(".heldout.txt")
    atomic_write(out, onnx_bytes)
    atomic_write(heldout_path, heldout_text)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out} ({len(onnx_bytes)} bytes, {params} parameters) and {heldout_path}; "
        f"ORT vs torch max |diff| {diff:.2e}; training {seconds:.0f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
