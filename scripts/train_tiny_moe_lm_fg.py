"""Train a fine-grained byte-level MoE language model with DeepSeek-V3-style routing; export to ONNX.

The second trained LM of moec (issue 17). Same skeleton, data, split and held-out text as
``scripts/train_tiny_moe_lm.py`` (whose data split, attention, RMSNorm and ONNX helpers this
script imports), but every MoE layer routes the DeepSeek-V3 way:

- **sigmoid scores** ``s = sigmoid(x Wr)`` over ``--experts`` fine-grained SwiGLU experts;
- a **correction bias** ``b`` added to the scores for *choosing* experts only (the gate weights
  stay the unbiased scores), trained by DeepSeek-V3's auxiliary-loss-free balancing update:
  after every step ``b_e += --bias-rate * sign(mean load - load_e)`` over that batch's
  assignments (no gradient flows into ``b``);
- **group-limited top-k**: the experts are ``--groups`` groups; a group's score is the sum of its
  two best biased scores; only the ``--topk-groups`` best groups stay candidates (the others'
  choice scores are set to 0.0, as Hugging Face's DeepSeek-V3 does), then the top ``--top-k``;
- the chosen experts' scores **renormalized** to sum to one (``+ 1e-20``) and multiplied by the
  **routed scaling** factor (``--routed-scaling``, 2.5 as DeepSeek-V3);
- **shared experts**: one always-on SwiGLU FFN of width ``--shared-experts x --ffn`` (DeepSeek-MoE
  fuses its shared experts into one FFN this way), added to the routed output.

An optional Switch-style balance loss (``--aux-coef``, default 0) is kept for experiments. During
training the (token, expert) pairs are sorted by expert and each expert runs on its own rows
(exact top-k, no token dropped, no capacity limit). Everything is seeded and runs with
deterministic algorithms on ``--threads`` threads (2 on this machine), so the same command on the
same machine gives the same ONNX bytes; the script prints the training loop's wall and CPU time.

Export (``onnx.helper``, opset 18): each MoE layer is moec's decomposed standard-op form
(:mod:`moec.models.moe_blocks`, the form ``compiler/frontend/decomposed.py`` lifts), for the
normalized hidden state reshaped to tokens ``x [T, d]``::

    s      = Sigmoid(MatMul(x, router [d, E]))
    choice = Add(s, score_bias [E])
    top2   = TopK(Reshape(choice, [-1, G, E/G]), 2).values;  gs = ReduceSum(top2, axis 2)
    keep   = ReduceSum(OneHot(TopK(gs, topk_group).indices, G), axis 1)     # [T, G] 0/1
    choice = Where(Cast(Reshape(Expand(Unsqueeze(keep, 2), [1, 1, E/G]), [-1, E]), bool), choice, 0)
    ids    = TopK(choice, k).indices
    gates  = Mul(Div(GatherElements(s, ids), Add(ReduceSum(g, axis 1), 1e-20)), scaling)
    dense  = ScatterElements(ConstantOfShape(Shape(s)), ids, gates, axis 1)  # [T, E]
    out    = MatMul(Mul(silu(MatMul(x, w_gate [E, d, F])), MatMul(x, w_up [E, d, F])), w_down)
    y      = ReduceSum(Mul(out, Unsqueeze(Transpose(dense), 2)), axis 0)
             + MatMul(Mul(silu(MatMul(x, sh_gate)), MatMul(x, sh_up)), sh_down)

so ONNX Runtime computes every expert for every token and weights the unrouted ones by 0 (exact,
not fast). The script ends by checking ONNX Runtime's logits against torch's.

Usage (the committed model; the defaults are its settings)::

    python scripts/train_tiny_moe_lm_fg.py --seed 0 --steps 9000 --out models/tiny_moe_lm_fg.onnx \
        --heldout-out models/tiny_moe_lm.heldout.txt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny_moe_lm import (  # noqa: E402  (a sibling script, not a package)
    RMS_EPS,
    Block,
    GraphWriter,
    _attention,
    _np,
    _rms,
    batches,
    rms_norm,
    stdlib_split,
    verify,
)

from moec.ir.files import atomic_write  # noqa: E402


@dataclass(frozen=True)
class Config:
    hidden: int = 128
    heads: int = 4
    layers: int = 2
    experts: int = 64
    top_k: int = 8
    ffn: int = 16
    groups: int = 8
    topk_groups: int = 4
    shared_experts: int = 2
    routed_scaling: float = 2.5
    context: int = 128
    vocab: int = 256


class DeepSeekMoE(torch.nn.Module):
    """Sigmoid router with correction bias, group-limited top-k, routed scaling, shared experts."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d, f, e = cfg.hidden, cfg.ffn, cfg.experts
        self.cfg = cfg
        self.router = torch.nn.Parameter(torch.randn(d, e) * d**-0.5)
        self.register_buffer("score_bias", torch.zeros(e))
        down = f**-0.5 / math.sqrt(2 * cfg.layers) / cfg.routed_scaling
        self.w_gate = torch.nn.Parameter(torch.randn(e, d, f) * d**-0.5)
        self.w_up = torch.nn.Parameter(torch.randn(e, d, f) * d**-0.5)
        self.w_down = torch.nn.Parameter(torch.randn(e, f, d) * down)
        fs = cfg.shared_experts * f
        self.sh_gate = torch.nn.Parameter(torch.randn(d, fs) * d**-0.5)
        self.sh_up = torch.nn.Parameter(torch.randn(d, fs) * d**-0.5)
        self.sh_down = torch.nn.Parameter(torch.randn(fs, d) * fs**-0.5 / math.sqrt(2 * cfg.layers))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, d] -> (scores [T, E], expert ids [T, k], gate weights [T, k])."""
        cfg = self.cfg
        scores = torch.sigmoid(x @ self.router)
        choice = scores.detach() + self.score_bias
        grouped = choice.reshape(-1, cfg.groups, cfg.experts // cfg.groups)
        group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)
        keep_groups = group_score.topk(cfg.topk_groups, dim=-1).indices
        keep = torch.zeros_like(group_score).scatter(1, keep_groups, 1.0)
        keep = keep.repeat_interleave(cfg.experts // cfg.groups, dim=1)
        choice = torch.where(keep > 0, choice, torch.zeros_like(choice))
        ids = choice.topk(cfg.top_k, dim=-1).indices
        gates = scores.gather(1, ids)
        gates = gates / (gates.sum(dim=-1, keepdim=True) + 1e-20) * cfg.routed_scaling
        return scores, ids, gates

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, d] -> (y [T, d], router scores [T, E], expert ids [T, k])."""
        cfg = self.cfg
        T, d = x.shape
        scores, ids, gates = self.route(x)
        # (token, expert) pairs sorted by expert, each expert's rows one matmul chain
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=cfg.experts).tolist()
        token = order // cfg.top_k
        outs = []
        experts = zip(
            self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0), strict=True
        )
        for xe, (wg, wu, wd) in zip(x[token].split(counts), experts, strict=True):
            if xe.shape[0]:
                outs.append((F.silu(xe @ wg) * (xe @ wu)) @ wd)
        out = torch.cat(outs) * gates.reshape(-1)[order, None]
        y = x.new_zeros(T, d).index_add(0, token, out)
        y = y + (F.silu(x @ self.sh_gate) * (x @ self.sh_up)) @ self.sh_down
        return y, scores, ids


class FGBlock(torch.nn.Module):
    """RMSNorm, causal self-attention, RMSNorm, DeepSeek-style MoE (attention as the first LM's)."""

    attention = Block.attention

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
        self.moe = DeepSeekMoE(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + self.attention(rms_norm(x, self.norm1))
        b, s, d = x.shape
        y, scores, ids = self.moe(rms_norm(x, self.norm2).reshape(b * s, d))
        return x + y.reshape(b, s, d), scores, ids


class FineGrainedMoELM(torch.nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = torch.nn.Parameter(torch.randn(cfg.vocab, cfg.hidden) * 0.5)
        self.pos = torch.nn.Parameter(torch.randn(cfg.context, cfg.hidden) * 0.1)
        self.blocks = torch.nn.ModuleList(FGBlock(cfg) for _ in range(cfg.layers))
        self.norm_f = torch.nn.Parameter(torch.ones(cfg.hidden))
        self.head = torch.nn.Parameter(torch.randn(cfg.hidden, cfg.vocab) * cfg.hidden**-0.5)

    def forward(
        self, ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """ids [B, S] -> (logits [B, S, 256], per layer (router scores, expert ids))."""
        x = self.embed[ids] + self.pos[: ids.shape[1]]
        routing = []
        for block in self.blocks:
            x, scores, top_i = block(x)
            routing.append((scores, top_i))
        return rms_norm(x, self.norm_f) @ self.head, routing

    def moe_layers(self) -> list[DeepSeekMoE]:
        return [blk.moe for blk in self.blocks]  # type: ignore[union-attr]


def balance_loss(routing: list[tuple[torch.Tensor, torch.Tensor]], experts: int) -> torch.Tensor:
    """Switch-style E * sum_e share_e * mean normalized score_e (optional; off by default)."""
    total = torch.zeros(())
    for scores, top_i in routing:
        share = F.one_hot(top_i, experts).float().mean(dim=(0, 1))
        probs = scores / scores.sum(dim=-1, keepdim=True)
        total = total + experts * (share * probs.mean(dim=0)).sum()
    return total / len(routing)


# --- training -----------------------------------------------------------------------------------


def train(args: argparse.Namespace, cfg: Config, train_text: bytes) -> FineGrainedMoELM:
    torch.manual_seed(args.seed)
    model = FineGrainedMoELM(cfg)
    data = torch.frombuffer(bytearray(train_text), dtype=torch.uint8).long()
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
        loads = [torch.bincount(ids.reshape(-1), minlength=cfg.experts) for _, ids in routing]
        with torch.no_grad():  # auxiliary-loss-free balancing (DeepSeek-V3): bias toward the mean
            for moe, load in zip(model.moe_layers(), loads, strict=True):
                moe.score_bias += args.bias_rate * torch.sign(load.float().mean() - load.float())
        if step % args.log_every == 0 or step == args.steps - 1:
            skew = [f"{int(ld.max())}/{int(ld.min())}" for ld in loads]
            bias = [f"{float(m.score_bias.abs().max()):.3f}" for m in model.moe_layers()]
            print(
                f"step {step:5d} loss {loss.item():.4f} ({loss.item() / math.log(2):.3f} bits/byte) "
                f"lr {lr_at(step):.2e} t {time.perf_counter() - t0:7.1f}s "
                f"load max/min {skew} |bias| max {bias}",
                flush=True,
            )
    model.eval()
    return model


def heldout_loss(model: FineGrainedMoELM, heldout_text: bytes) -> float:
    ctx = model.cfg.context
    held = torch.frombuffer(bytearray(heldout_text), dtype=torch.uint8).long()
    with torch.no_grad():
        n = (min(held.numel(), 64 * (ctx + 1)) // (ctx + 1)) * (ctx + 1)
        xy = held[:n].reshape(-1, ctx + 1)
        logits, _ = model(xy[:, :-1])
        return F.cross_entropy(logits.reshape(-1, model.cfg.vocab), xy[:, 1:].reshape(-1)).item()


# --- ONNX export --------------------------------------------------------------------------------


def _i64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _silu(g: GraphWriter, z: str, name: str) -> str:
    return g.op("Mul", [z, g.op("Sigmoid", [z], f"{name}_sigmoid")], f"{name}_silu")


def _moe(g: GraphWriter, x: str, moe: DeepSeekMoE, name: str, cfg: Config) -> str:
    E, G, per = cfg.experts, cfg.groups, cfg.experts // cfg.groups
    t = g.op("Reshape", [x, "shape_td"], f"{name}/tokens")
    logits = g.op("MatMul", [t, g.const(f"{name}.router", _np(moe.router))], f"{name}/router")
    scores = g.op("Sigmoid", [logits], f"{name}/scores")
    bias = g.const(f"{name}.score_bias", _np(moe.score_bias))
    choice = g.op("Add", [scores, bias], f"{name}/choice")
    # group-limited top-k: group score = sum of the group's two best biased scores
    grouped = g.op("Reshape", [choice, g.const(f"{name}.groups_shape", _i64([-1, G, per]))],
                   f"{name}/groups")  # fmt: skip
    top2 = f"{name}/group_top2"
    g.nodes.append(helper.make_node(
        "TopK", [grouped, "k_2"], [top2, f"{top2}_idx"], name=top2, axis=-1))  # fmt: skip
    gscore = g.op("ReduceSum", [top2, "axes_2"], f"{name}/group_score", keepdims=0)
    gtop = f"{name}/group_topk"
    g.nodes.append(helper.make_node(
        "TopK", [gscore, g.const(f"{name}.topk_groups", _i64([cfg.topk_groups]))],
        [f"{gtop}_val", gtop], name=gtop, axis=-1))  # fmt: skip
    onehot = g.op("OneHot", [gtop, g.const(f"{name}.n_groups", np.array(G, np.int64)), "onoff"],
                  f"{name}/group_onehot", axis=-1)  # fmt: skip
    keep = g.op("ReduceSum", [onehot, "axes_1"], f"{name}/group_keep", keepdims=0)
    keep3 = g.op("Unsqueeze", [keep, "axes_2"], f"{name}/group_keep3")
    wide = g.op("Expand", [keep3, g.const(f"{name}.expand_shape", _i64([1, 1, per]))],
                f"{name}/group_expand")  # fmt: skip
    mask = g.op("Reshape", [wide, g.const(f"{name}.mask_shape", _i64([-1, E]))],
                f"{name}/group_mask")  # fmt: skip
    cond = g.op("Cast", [mask], f"{name}/group_bool", to=TensorProto.BOOL)
    masked = g.op("Where", [cond, choice, "zero_f"], f"{name}/group_select")
    topk = f"{name}/topk"
    g.nodes.append(helper.make_node(
        "TopK", [masked, g.const(f"{name}.k", _i64([cfg.top_k]))], [f"{topk}_val", topk],
        name=topk, axis=-1))  # fmt: skip
    gates = g.op("GatherElements", [scores, topk], f"{name}/gates", axis=1)
    total = g.op("ReduceSum", [gates, "axes_1"], f"{name}/gate_sum", keepdims=1)
    total = g.op("Add", [total, "gate_eps"], f"{name}/gate_eps")
    gates = g.op("Div", [gates, total], f"{name}/gate_norm")
    scaling = g.const(f"{name}.routed_scaling", np.array(cfg.routed_scaling, np.float32))
    gates = g.op("Mul", [gates, scaling], f"{name}/gate_scale")
    zeros = g.op("ConstantOfShape", [g.op("Shape", [scores], f"{name}/shape")], f"{name}/zeros")
    dense = g.op("ScatterElements", [zeros, topk, gates], f"{name}/dispatch", axis=1)
    # routed experts, every token through every expert: [E, T, F] -> [E, T, d]
    gate = g.op("MatMul", [t, g.const(f"{name}.w_gate", _np(moe.w_gate))], f"{name}/w_gate")
    up = g.op("MatMul", [t, g.const(f"{name}.w_up", _np(moe.w_up))], f"{name}/w_up")
    h = g.op("Mul", [_silu(g, gate, f"{name}/act"), up], f"{name}/glu")
    out = g.op("MatMul", [h, g.const(f"{name}.w_down", _np(moe.w_down))], f"{name}/w_down")
    wt = g.op("Transpose", [dense], f"{name}/dispatch_t", perm=[1, 0])
    wt3 = g.op("Unsqueeze", [wt, "axes_2"], f"{name}/dispatch_3d")
    weighted = g.op("Mul", [out, wt3], f"{name}/weighted")
    y = g.op("ReduceSum", [weighted, "axes_0"], f"{name}/combine", keepdims=0)
    # shared experts: one SwiGLU FFN of width shared_experts * ffn on the same tokens
    sg = g.op("MatMul", [t, g.const(f"{name}.sh_gate", _np(moe.sh_gate))], f"{name}/sh_gate")
    su = g.op("MatMul", [t, g.const(f"{name}.sh_up", _np(moe.sh_up))], f"{name}/sh_up")
    sh = g.op("Mul", [_silu(g, sg, f"{name}/sh_act"), su], f"{name}/sh_glu")
    sh = g.op("MatMul", [sh, g.const(f"{name}.sh_down", _np(moe.sh_down))], f"{name}/sh_down")
    y = g.op("Add", [y, sh], f"{name}/with_shared")
    return g.op("Reshape", [y, "shape_bsd"], f"{name}/out")


def export(model: FineGrainedMoELM, unigram: list[int], meta: dict[str, str]) -> onnx.ModelProto:
    """The ONNX graph of ``model``: input_ids int64 [batch, seq] -> logits f32 [batch, seq, 256]."""
    cfg = model.cfg
    g = GraphWriter()
    g.const("axes_last", _i64([-1]))
    g.const("axes_0", _i64([0]))
    g.const("axes_1", _i64([1]))
    g.const("axes_2", _i64([2]))
    g.const("k_2", _i64([2]))
    g.const("onoff", np.array([0.0, 1.0], np.float32))
    g.const("zero_f", np.array(0.0, np.float32))
    g.const("gate_eps", np.array(1e-20, np.float32))
    g.const("rms_eps", np.array(RMS_EPS, dtype=np.float32))
    g.const("zero_1d", _i64([0]))
    g.const("one_1d", _i64([1]))
    g.const("two_1d", _i64([2]))
    g.const("shape_td", _i64([-1, cfg.hidden]))
    g.const("hidden_1d", _i64([cfg.hidden]))
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
    blocks: list[FGBlock] = list(model.blocks)  # type: ignore[arg-type]
    for i, blk in enumerate(blocks):
        n1 = _rms(g, x, blk.norm1, f"layer{i}.attn_norm")
        attn = _attention(g, n1, blk, f"layer{i}.attn", cfg)  # type: ignore[arg-type]
        x = g.op("Add", [x, attn], f"layer{i}/attn_res")
        n2 = _rms(g, x, blk.norm2, f"layer{i}.moe_norm")
        x = g.op("Add", [x, _moe(g, n2, blk.moe, f"layer{i}.moe", cfg)], f"layer{i}/moe_res")
    xf = _rms(g, x, model.norm_f, "final_norm")
    g.op("MatMul", [xf, g.const("lm_head", _np(model.head))], "logits")
    graph = helper.make_graph(
        g.nodes,
        "tiny_moe_lm_fg",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab])],
        g.inits,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18)],
        producer_name="moec-train-tiny-moe-lm-fg",
    )
    onnx_model.ir_version = 10
    props = {"moec.unigram_counts": json.dumps(unigram), "moec.context": str(cfg.context), **meta}
    for key in sorted(props):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, props[key]
    onnx.checker.check_model(onnx_model)
    return onnx_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models/tiny_moe_lm_fg.onnx")
    p.add_argument("--heldout-out", default=None, help="default: <out stem>.heldout.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--bias-rate", type=float, default=1e-3, help="balancing update of the bias")
    p.add_argument("--aux-coef", type=float, default=0.0, help="Switch-style balance loss weight")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--ffn", type=int, default=16, help="width of one routed expert")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--topk-groups", type=int, default=4)
    p.add_argument("--shared-experts", type=int, default=2, help="shared width = this x --ffn")
    p.add_argument("--routed-scaling", type=float, default=2.5)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--train-bytes", type=int, default=4_000_000)
    p.add_argument("--heldout-bytes", type=int, default=150_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cfg = Config(
        hidden=args.hidden, heads=args.heads, layers=args.layers, experts=args.experts,
        top_k=args.top_k, ffn=args.ffn, groups=args.groups, topk_groups=args.topk_groups,
        shared_experts=args.shared_experts, routed_scaling=args.routed_scaling,
        context=args.context,
    )  # fmt: skip
    if cfg.experts % cfg.groups or cfg.experts // cfg.groups < 2:
        raise SystemExit(f"--experts {cfg.experts} must split into --groups of at least 2")
    if cfg.top_k > cfg.topk_groups * (cfg.experts // cfg.groups):
        raise SystemExit("--top-k exceeds the experts of the --topk-groups kept groups")
    train_text, heldout_text, train_files, heldout_files = stdlib_split(
        args.train_bytes, args.heldout_bytes
    )
    print(
        f"train {len(train_text)} bytes from {len(train_files)} files, held-out {len(heldout_text)} "
        f"bytes from {len(heldout_files)} files (Python {sys.version.split()[0]})",
        flush=True,
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = train(args, cfg, train_text)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    held = heldout_loss(model, heldout_text)
    print(f"held-out loss {held:.4f} nats/byte, perplexity {math.exp(held):.3f}", flush=True)
    unigram = np.bincount(np.frombuffer(train_text, dtype=np.uint8), minlength=256).tolist()
    meta = {
        "moec.config": json.dumps(asdict(cfg), sort_keys=True),
        "moec.training": json.dumps(
            {
                "seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                "bias_rate": args.bias_rate, "aux_coef": args.aux_coef,
                "train_bytes": len(train_text), "heldout_bytes": len(heldout_text),
                "threads": args.threads, "python": sys.version.split()[0],
                "torch": torch.__version__,
            },
            sort_keys=True,
        ),
    }  # fmt: skip
    onnx_bytes = export(model, unigram, meta).SerializeToString()
    diff = verify(model, onnx_bytes, heldout_text, tol=1e-4)  # type: ignore[arg-type]
    out = Path(args.out)
    heldout_path = Path(args.heldout_out) if args.heldout_out else out.with_suffix(".heldout.txt")
    atomic_write(out, onnx_bytes)
    atomic_write(heldout_path, heldout_text)
    params = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"wrote {out} ({len(onnx_bytes)} bytes, {params} parameters) and {heldout_path}; "
        f"ORT vs torch max |diff| {diff:.2e}; training {seconds:.0f}s wall, {cpu:.0f}s CPU, "
        f"peak RSS {peak:.0f} MiB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
