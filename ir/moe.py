"""The canonical MoE op: one description of an MoE layer, whatever model or exporter it came from.

Layout (``x @ W`` convention, micro-slice j = columns j of ``w_gate``/``w_up`` and rows j of
``w_down``, so a slice's contribution needs no cross-die reduction):

=================  ==============  ==========================================
weight key         shape           meaning
=================  ==============  ==========================================
``router_w``       [E, d]          router logits = x @ router_w.T (+ router_b); [E + Z, d] with
                                   Z ``identity_experts`` (rows past E: a pick adds gate * x)
``router_b``       [E]             optional router bias
``router_in_scale``[d]             optional per-channel scale of the router's input, applied
                                   before its activation quantization (onnxruntime-genai
                                   Gemma-4: the router's own RMSNorm weight over the experts')
``score_bias``     [E]             optional score-correction bias (top-k choice only; added
                                   to the scores, or to the logits with ``bias_on_logits``)
``w_gate``         [E, d, F]       gated experts only
``w_up``           [E, d, F]       the up projection (fc1 of a non-gated expert)
``w_down``         [E, F, d]
``b_gate``/``b_up``[E, F]          optional
``b_down``         [E, d]          optional
``sh_gate``        [d, Fs]         shared experts, concatenated along Fs (gated like the routed
                                   experts: without ``sh_gate`` when they are not)
``sh_up``/``sh_down``              [d, Fs] / [Fs, d]
``sh_router``      [d, 1]          optional sigmoid gate of the shared experts (with
                   [d, S]          ``shared_in_norm``: one per shared expert, scores joining
                                   the top-k renormalization)
=================  ==============  ==========================================

:func:`route`, :func:`expert_ffn` and :func:`shared_ffn` are the building blocks the interpreter
executes slice by slice; :func:`evaluate` is the reference evaluation of the whole layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.ir.annotations import LayerAnnotations
from moec.ir.errors import ModelError
from moec.ir.graph import TensorType, Weight
from moec.ir.moe_math import _f32, _sigmoid, _softcap, activate, quantize_activations
from moec.ir.sparsemixer import sparsemixer

SCORINGS = ("softmax", "sigmoid", "sparsemixer")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "relu2", "swiglu", "identity")
GROUP_SCORES = ("max", "top2_sum")
EXPERT_KEYS = ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")
SHARED_KEYS = ("sh_gate", "sh_up", "sh_down", "sh_router")


@dataclass(eq=False)
class MoELayer:
    """An MoE layer: router, routed experts, shared experts, and pass annotations."""

    name: str
    num_experts: int
    top_k: int
    hidden: int
    ffn: int
    weights: dict[str, Weight]
    scoring: str = "softmax"
    normalize_topk: bool = True
    routed_scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    # Score given to experts of non-selected groups before the final top-k; None: 0.0 with a
    # score-correction bias (DeepSeek's reference code), -inf otherwise (transformers uses -inf).
    group_fill: float | None = None
    # Added to the sum of the k gate scores when renormalizing; None: 1e-20 for sigmoid scoring
    # (DeepSeek's guard against a zero sum), 0 for softmax.
    normalize_eps: float | None = None
    # The top-k choice ranks logits + score_bias instead of scores + score_bias (Kolibri-1:
    # topk(logits + bias), gates the scores of the chosen experts).
    bias_on_logits: bool = False
    # The S shared experts' scores sigmoid(x @ sh_router) join the k routed scores in the top-k
    # renormalization, and each shared expert (Fs / S columns) is scaled by its own normalized
    # score times routed_scaling (Inkling: E+S router rows, log-sigmoid weights over k + S).
    shared_in_norm: bool = False
    # Experts that quantize their inputs to int8 in blocks of this many elements along the
    # contracted axis (symmetric, scale = max|a| / 127, round half to even), as ONNX Runtime's
    # CPU QMoE does for block-wise 8-bit weights when the contracted length is a multiple of the
    # block (a projection with a partial block stays float); None: float activations.
    act_quant_block: int | None = None
    # The router's input quantized the same way (blocks of this many along d) before its
    # product, as ORT's CPU MatMulNBits does at accuracy_level 4 (onnxruntime-genai's int4/int8
    # routers); None: float.
    router_act_quant_block: int | None = None
    # The router logits are rounded to fp16 before scoring: the graph materializes its fp16
    # product and casts it up explicitly (an onnxruntime-genai fp16 sigmoid router), a rounding
    # ORT keeps; the float32 logits of an fp16 product ORT runs in float are not rounded.
    router_logits_fp16: bool = False
    # The same for the shared experts' products (their gate and up projections and the shared
    # gate quantize x, the down projection the intermediate; onnxruntime-genai int4/int8 builds).
    shared_act_quant_block: int | None = None
    # Sparsemixer routing (Phi-3.5-MoE, scoring="sparsemixer"): the jitter epsilon of its mask.
    sparsemixer_eps: float = 0.01
    activation: str = "silu"
    gated: bool = True
    swiglu_alpha: float = 1.702
    swiglu_beta: float = 1.0
    swiglu_limit: float | None = None
    # Soft caps c * tanh(v / c) of a gated SiLU expert's linear gate factor and of its up
    # projection (Inkling-2: softcap(gate) * sigmoid(gate) * softcap(up)); None: uncapped.
    gate_softcap: float | None = None
    up_softcap: float | None = None
    num_shared: int = 0
    shared_ffn: int = 0
    shared_activation: str = "silu"
    # LongCat-Flash's "zero" experts: router rows E .. E+Z-1 (router_w is [E+Z, d]) whose pick
    # returns the token itself times its gate: no weights, no load (:func:`identity_weight`).
    identity_experts: int = 0
    annotations: LayerAnnotations = field(default_factory=LayerAnnotations)

    # --- structure ---------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.weights

    def array(self, key: str) -> np.ndarray:
        w = self.weights.get(key)
        if w is None:
            raise ModelError(f"MoE layer has no weight {key!r}", self.name)
        return w.array()

    @property
    def weights_present(self) -> bool:
        return all(w.present for w in self.weights.values())

    @property
    def has_shared(self) -> bool:
        return self.has("sh_down")

    @property
    def shared_mats(self) -> int:
        """Weight matrices of the shared experts: 3 gated (gate, up, down), 2 not."""
        return 3 if self.has("sh_gate") else 2

    def spec(self) -> MoESpec:
        """The layer's hyperparameters (:class:`MoESpec`), as a model builder would take them."""
        return MoESpec(
            self.num_experts, self.top_k, self.hidden, self.ffn, scoring=self.scoring,
            normalize_topk=self.normalize_topk, routed_scaling=self.routed_scaling,
            n_group=self.n_group, topk_group=self.topk_group, group_score=self.group_score,
            score_bias=self.has("score_bias"), activation=self.activation, gated=self.gated,
            num_shared=self.num_shared, shared_ffn=self.shared_ffn,
            shared_gate=self.has("sh_router"), router_bias=self.has("router_b"),
            expert_bias=self.has("b_up") or self.has("b_down"),
        )  # fmt: skip

    def expert_weight_bytes(self) -> int:
        """Bytes of one routed expert's weights (all projections and biases)."""
        total = 0
        for key in EXPERT_KEYS:
            if key in self.weights:
                total += self.weights[key].type.nbytes
        return total // self.num_experts

    def shared_weight_bytes(self) -> int:
        return sum(self.weights[k].type.nbytes for k in SHARED_KEYS if k in self.weights)

    def router_weight_bytes(self) -> int:
        return sum(
            self.weights[k].type.nbytes
            for k in ("router_w", "router_b", "score_bias", "router_in_scale")
            if k in self.weights
        )

    def param_count(self) -> int:
        return sum(w.type.numel for w in self.weights.values())

    def expert_param_count(self) -> int:
        return (
            sum(self.weights[k].type.numel for k in EXPERT_KEYS if k in self.weights)
            // self.num_experts
        )

    def active_param_count(self) -> int:
        """Parameters one token touches: router, k routed experts, shared experts."""
        fixed = sum(w.type.numel for k, w in self.weights.items() if k not in EXPERT_KEYS)
        return fixed + self.top_k * self.expert_param_count()

    def flops_per_token_expert(self) -> int:
        """Multiply-adds x2 of one token through one routed expert."""
        mats = 3 if self.gated else 2
        return 2 * mats * self.hidden * self.ffn

    def summary(self) -> str:
        parts = [
            f"experts={self.num_experts}", f"top_k={self.top_k}", f"hidden={self.hidden}",
            f"ffn={self.ffn}", f"scoring={self.scoring}", f"normalize_topk={int(self.normalize_topk)}",
            f"activation={self.activation}", f"gated={int(self.gated)}",
        ]  # fmt: skip
        if self.routed_scaling != 1.0:
            parts.append(f"routed_scaling={self.routed_scaling!r}")
        if self.bias_on_logits:
            parts.append("choice=logits+bias")
        if self.n_group > 1:
            parts.append(f"groups={self.n_group}/{self.topk_group}/{self.group_score}")
            if self.group_fill is not None:
                parts.append(f"group_fill={self.group_fill!r}")
        if self.gate_softcap is not None or self.up_softcap is not None:
            parts.append(f"softcap=({self.gate_softcap!r},{self.up_softcap!r})")
        if "swiglu" in (self.activation, self.shared_activation if self.has_shared else ""):
            parts.append(
                f"swiglu=({self.swiglu_alpha!r},{self.swiglu_beta!r},{self.swiglu_limit!r})"
            )
        if self.identity_experts:
            parts.append(f"identity_experts={self.identity_experts}")
        if self.has_shared:
            parts.append(f"shared={self.num_shared}x{self.shared_ffn // max(self.num_shared, 1)}")
            if self.shared_activation != self.activation:
                parts.append(f"shared_activation={self.shared_activation}")
            if self.has("sh_router"):
                parts.append("shared_gate=joint" if self.shared_in_norm else "shared_gate=sigmoid")
        for key, value in self.annotations.items():
            parts.append(f"{key}={value}")
        return "{" + ", ".join(parts) + "}"

    def verify(self) -> None:
        """Check options and that every weight has the shape the layout above requires."""
        E, d, F = self.num_experts, self.hidden, self.ffn
        where = self.name
        if min(E, d, F) < 1:
            raise ModelError(f"sizes must be >= 1, found experts {E}, hidden {d}, ffn {F}", where)
        if self.scoring not in SCORINGS:
            raise ModelError(f"unknown scoring {self.scoring!r}, expected one of {SCORINGS}", where)
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"unknown activation {self.activation!r}", where)
        if not 1 <= self.top_k <= E + max(self.identity_experts, 0):
            raise ModelError(
                f"top_k={self.top_k} must be in 1..{E + max(self.identity_experts, 0)}", where
            )
        if self.scoring == "sparsemixer" and (self.top_k != 2 or self.normalize_topk):
            raise ModelError(
                f"sparsemixer routing picks 2 experts without renormalization, found top_k="
                f"{self.top_k}, normalize_topk={int(self.normalize_topk)}",
                where,
            )
        if E % self.n_group or not 1 <= self.topk_group <= self.n_group:
            raise ModelError(
                f"bad expert groups {self.n_group}/{self.topk_group} for {E} experts", where
            )
        capped = self.gate_softcap is not None or self.up_softcap is not None
        if capped and (self.activation != "silu" or not self.gated):
            raise ModelError("soft caps apply to gated SiLU experts only", where)
        if self.group_score not in GROUP_SCORES:
            raise ModelError(f"unknown group score {self.group_score!r}", where)
        S = self.num_shared if self.shared_in_norm else 1
        if self.shared_in_norm and not (self.has("sh_router") and self.normalize_topk and S > 0):
            raise ModelError("shared_in_norm needs shared gates and top-k renormalization", where)
        if self.shared_in_norm and self.shared_ffn % max(S, 1):
            raise ModelError(f"shared_ffn {self.shared_ffn} is not {S} equal experts", where)
        if self.bias_on_logits and (self.n_group > 1 or self.scoring == "sparsemixer"):
            raise ModelError("bias_on_logits needs plain top-k routing (one group)", where)
        Fs = self.shared_ffn
        R = E + self.identity_experts  # router rows
        if self.identity_experts < 0 or (self.identity_experts and self.scoring == "sparsemixer"):
            raise ModelError(f"bad identity experts {self.identity_experts}", where)
        expected: dict[str, tuple[int, ...]] = {
            "router_w": (R, d), "router_b": (R,), "score_bias": (R,), "router_in_scale": (d,),
            "w_gate": (E, d, F), "w_up": (E, d, F), "w_down": (E, F, d),
            "b_gate": (E, F), "b_up": (E, F), "b_down": (E, d),
            "sh_gate": (d, Fs), "sh_up": (d, Fs), "sh_down": (Fs, d), "sh_router": (d, S),
        }  # fmt: skip
        for key in ("router_w", "w_up", "w_down"):
            if key not in self.weights:
                raise ModelError(f"MoE layer misses weight {key!r}", where)
        if self.gated != ("w_gate" in self.weights):
            raise ModelError("gated experts need w_gate, non-gated must not have it", where)
        if self.has_shared and (
            "sh_up" not in self.weights or self.gated != ("sh_gate" in self.weights)
        ):
            raise ModelError(
                "shared experts need sh_up and sh_down, and sh_gate exactly when the routed "
                "experts are gated",
                where,
            )
        for key, w in self.weights.items():
            if key not in expected:
                raise ModelError(f"unknown MoE weight key {key!r}", where)
            if tuple(w.type.shape) != expected[key]:
                raise ModelError(
                    f"weight {key!r} has shape {w.type.shape}, expected {expected[key]}", where
                )


def declared(name: str, dtype: str, shape: tuple[int, ...]) -> Weight:
    """A weight with shape and dtype only (for shape-only models)."""
    return Weight(name, TensorType(dtype, shape), None)


def present(name: str, data: np.ndarray) -> Weight:
    dtype = {np.float32: "f32", np.float16: "f16", np.float64: "f64"}.get(data.dtype.type, "f32")
    return Weight(name, TensorType(dtype, tuple(int(s) for s in data.shape)), data)


# --- numerics ---------------------------------------------------------------------------------


def router_logits(layer: MoELayer, x: np.ndarray) -> np.ndarray:
    """Router logits [T, E] of tokens ``x`` [T, d]: ``x @ router_w.T (+ router_b)``."""
    if layer.has("router_in_scale"):
        x = _f32(x) * _f32(layer.array("router_in_scale"))
    if layer.router_act_quant_block is not None:
        x = quantize_activations(x, layer.router_act_quant_block)
    logits = _f32(x) @ _f32(layer.array("router_w")).T
    if layer.has("router_b"):
        logits = logits + _f32(layer.array("router_b"))
    return _f32(logits.astype(np.float16)) if layer.router_logits_fp16 else logits


def router_scores(layer: MoELayer, x: np.ndarray) -> np.ndarray:
    """Per-token expert scores [T, E] after softmax or sigmoid (before any correction bias);
    the softmax of the logits for sparsemixer routing (which gates by masked softmaxes)."""
    logits = router_logits(layer, x)
    if layer.scoring in ("softmax", "sparsemixer"):
        z = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return _sigmoid(logits)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    # Stable: equal scores keep the lower expert id first, as ONNX TopK does.
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _shared_score(layer: MoELayer, x: np.ndarray) -> np.ndarray:
    return _sigmoid(_f32(x) @ _f32(layer.array("sh_router")))


def shared_gate(layer: MoELayer, x: np.ndarray) -> np.ndarray:
    """The shared gate [T, 1], sigmoid(x @ sh_router); with ``shared_in_norm`` [T, S], each
    shared expert's score over the joint renormalization's sum, times ``routed_scaling``."""
    score = _shared_score(layer, x)
    if not layer.shared_in_norm:
        return score
    _, gates = _route_all(layer, x, unscaled=True)
    denom = _topk_denominator(layer, gates, x)
    return (score / denom * np.float32(layer.routed_scaling)).astype(np.float32)


def _topk_denominator(layer: MoELayer, gates: np.ndarray, x: np.ndarray) -> np.ndarray:
    denom = gates.sum(axis=-1, keepdims=True)
    if layer.shared_in_norm:
        denom = denom + _shared_score(layer, x).sum(axis=-1, keepdims=True)
    if layer.normalize_eps is not None:
        return denom + np.float32(layer.normalize_eps)
    return denom + np.float32(1e-20) if layer.scoring == "sigmoid" else denom


def route(layer: MoELayer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Routing of tokens ``x`` [T, d]: expert ids [T, k] (int64) and gate weights [T, k] (f32).

    A pick of an identity expert has id -1 and gate 0 (no routed expert computes it; its
    contribution is :func:`identity_weight` times the token)."""
    ids, gates = _route_all(layer, x)
    if layer.identity_experts:
        ident = ids >= layer.num_experts
        ids = np.where(ident, -1, ids)
        gates = np.where(ident, np.float32(0.0), gates).astype(np.float32)
    return ids, gates


def identity_weight(layer: MoELayer, x: np.ndarray) -> np.ndarray:
    """[T, 1]: the summed gates of each token's identity-expert picks (0 without any)."""
    ids, gates = _route_all(layer, x)
    picked = np.where(ids >= layer.num_experts, gates, np.float32(0.0))
    return picked.sum(axis=-1, keepdims=True).astype(np.float32)


def _route_all(
    layer: MoELayer, x: np.ndarray, unscaled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Every pick (identity experts included); ``unscaled``: the chosen experts' scores, before
    renormalization and scaling."""
    if layer.scoring == "sparsemixer":
        ids, gates = sparsemixer(router_logits(layer, x), layer.sparsemixer_eps)
        return ids, (gates * np.float32(layer.routed_scaling)).astype(np.float32)
    scores = router_scores(layer, x)
    choice = scores
    if layer.has("score_bias"):
        ranked = router_logits(layer, x) if layer.bias_on_logits else scores
        choice = ranked + _f32(layer.array("score_bias"))
    if layer.n_group > 1:
        T, E = choice.shape
        grouped = choice.reshape(T, layer.n_group, E // layer.n_group)
        if layer.group_score == "top2_sum":
            gscore = -np.sort(-grouped, axis=-1)[:, :, :2].sum(axis=-1)
        else:
            gscore = grouped.max(axis=-1)
        keep = _topk(gscore, layer.topk_group)
        mask = np.zeros((T, layer.n_group), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        mask = np.repeat(mask, E // layer.n_group, axis=1)
        fill = layer.group_fill
        if fill is None:
            fill = 0.0 if layer.has("score_bias") else -np.inf
        choice = np.where(mask, choice, np.float32(fill))
    ids = _topk(choice, layer.top_k).astype(np.int64)
    gates = np.take_along_axis(scores, ids, axis=1)
    if unscaled:
        return ids, gates
    if layer.normalize_topk:
        gates = gates / _topk_denominator(layer, gates, x)
    gates = (gates * np.float32(layer.routed_scaling)).astype(np.float32)
    return ids, gates


def _bias(layer: MoELayer, key: str, e: int, cols: slice) -> np.ndarray | float:
    return _f32(layer.array(key)[e, cols]) if layer.has(key) else 0.0


def _quantizes(layer: MoELayer, contracted: int) -> bool:
    # ONNX Runtime's CPU QMoE quantizes activations only when the contracted length is a whole
    # number of blocks; otherwise it multiplies floats by the dequantized weights (measured).
    block = layer.act_quant_block
    return block is not None and contracted % block == 0


def expert_hidden(layer: MoELayer, e: int, x: np.ndarray, cols: slice = slice(None)) -> np.ndarray:
    """Activated intermediate of expert ``e`` on tokens ``x`` for columns ``cols`` of F."""
    if _quantizes(layer, layer.hidden):
        x = quantize_activations(x, layer.act_quant_block or 0)
    up = _f32(x) @ _f32(layer.array("w_up")[e][:, cols]) + _bias(layer, "b_up", e, cols)
    if not layer.gated:
        return activate(layer.activation, up)
    gate = _f32(x) @ _f32(layer.array("w_gate")[e][:, cols]) + _bias(layer, "b_gate", e, cols)
    if layer.gate_softcap is not None or layer.up_softcap is not None:  # routed experts only
        glu = _softcap(gate, layer.gate_softcap) * _sigmoid(gate)
        return (glu * _softcap(up, layer.up_softcap)).astype(np.float32)
    return _gated(layer, layer.activation, gate, up)


def _gated(layer: MoELayer, kind: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``act(gate) * up``, or for ``swiglu`` the layer's clamped SwiGLU (one parameter set,
    shared by routed and shared experts)."""
    if kind == "swiglu":
        if layer.swiglu_limit is not None:
            lim = np.float32(layer.swiglu_limit)
            gate = np.minimum(gate, lim)
            up = np.clip(up, -lim, lim)
        glu = gate * _sigmoid(np.float32(layer.swiglu_alpha) * gate)
        return (glu * (up + np.float32(layer.swiglu_beta))).astype(np.float32)
    return (activate(kind, gate) * up).astype(np.float32)


def expert_down(
    layer: MoELayer, e: int, h: np.ndarray, cols: slice = slice(None), with_bias: bool = True
) -> np.ndarray:
    """Down projection of a slice's intermediate ``h``; the bias is added once (``with_bias``).

    With ``act_quant_block``, ``h`` is quantized in blocks from the slice's first column: exact
    when slices start at multiples of the block (the lowering's slices are whole blocks when
    the FFN is a multiple of it).
    """
    if _quantizes(layer, layer.ffn):
        h = quantize_activations(h, layer.act_quant_block or 0)
    y = h @ _f32(layer.array("w_down")[e][cols, :])
    if with_bias and layer.has("b_down"):
        y = y + _f32(layer.array("b_down")[e])
    return y.astype(np.float32)


def expert_ffn(layer: MoELayer, e: int, x: np.ndarray) -> np.ndarray:
    return expert_down(layer, e, expert_hidden(layer, e, x))


def shared_ffn(
    layer: MoELayer, x: np.ndarray, cols: slice = slice(None), with_gate: bool = True
) -> np.ndarray:
    """Shared experts' output for columns ``cols`` of Fs (times the sigmoid gate when present).

    With ``shared_act_quant_block`` the down projection's input is quantized per block of the
    whole intermediate row (as one ORT MatMulNBits does), so any slicing of Fs stays exact: a
    slice computes the full row's scales (its timing is charged by the lowering, not here).
    """
    block, x_in = layer.shared_act_quant_block, x
    x = _f32(x) if block is None else quantize_activations(x, block)
    h = _shared_hidden(layer, x, slice(None) if block is not None else cols)
    if block is not None:
        h = quantize_activations(h, block)[:, cols]
    if with_gate and layer.shared_in_norm:
        expert = np.arange(layer.shared_ffn)[cols] // (layer.shared_ffn // layer.num_shared)
        h = h * shared_gate(layer, x_in)[:, expert]
    y = h @ _f32(layer.array("sh_down")[cols, :])
    if with_gate and not layer.shared_in_norm and layer.has("sh_router"):
        y = y * _sigmoid(x @ _f32(layer.array("sh_router")))
    return y.astype(np.float32)


def _shared_hidden(layer: MoELayer, x: np.ndarray, cols: slice) -> np.ndarray:
    up = x @ _f32(layer.array("sh_up")[:, cols])
    if layer.has("sh_gate"):
        return _gated(layer, layer.shared_activation, x @ _f32(layer.array("sh_gate")[:, cols]), up)
    return activate(layer.shared_activation, up)


def evaluate(layer: MoELayer, x: np.ndarray) -> np.ndarray:
    """Reference output of the layer for tokens ``x`` of shape [..., d] (same shape back)."""
    shape = x.shape
    x2 = _f32(x).reshape(-1, layer.hidden)
    ids, gates = route(layer, x2)
    y = np.zeros_like(x2)
    for e in range(layer.num_experts):
        rows, slots = np.nonzero(ids == e)
        if rows.size == 0:
            continue
        out = expert_ffn(layer, e, x2[rows])
        np.add.at(y, rows, out * gates[rows, slots][:, None])
    if layer.identity_experts:
        y = y + x2 * identity_weight(layer, x2)
    if layer.has_shared:
        y = y + shared_ffn(layer, x2)
    return y.reshape(shape)


@dataclass(frozen=True)
class MoESpec:
    """The hyperparameters of one MoE layer without its weights: what the model builders
    (``models/``) build from and :meth:`MoELayer.spec` gives back for a lifted layer. The
    ``*_bias``/``shared_gate`` flags say which optional weights the layer has."""

    experts: int
    top_k: int
    hidden: int
    ffn: int
    scoring: str = "softmax"
    normalize_topk: bool = True
    routed_scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    score_bias: bool = False
    activation: str = "silu"
    gated: bool = True
    num_shared: int = 0
    shared_ffn: int = 0
    shared_gate: bool = False
    router_bias: bool = False
    expert_bias: bool = False


# --- a flat form, for storing a layer's configuration outside Python ----------------------------

_CONFIG_FIELDS = (
    "num_experts", "top_k", "hidden", "ffn", "scoring", "normalize_topk", "routed_scaling",
    "n_group", "topk_group", "group_score", "activation", "gated", "swiglu_alpha", "swiglu_beta",
    "swiglu_limit", "num_shared", "shared_ffn", "shared_activation", "normalize_eps",
    "act_quant_block", "sparsemixer_eps", "router_act_quant_block", "shared_act_quant_block",
    "bias_on_logits", "identity_experts", "shared_in_norm", "gate_softcap", "up_softcap",
    "router_logits_fp16",
)  # fmt: skip
# Options written only when set (older programs and goldens stay as they were).
_WHEN_SET = ("bias_on_logits", "shared_in_norm", "router_logits_fp16")


def layer_config(layer: MoELayer) -> dict[str, int | float | str]:
    """The layer's options as a flat dict of ints, floats and strings (weights excluded).

    Booleans become 0/1, an absent swiglu limit (and the sparsemixer epsilon of a layer that
    does not route by sparsemixer) is omitted, so the dict maps directly onto
    ONNX node attributes or stream-program key-values.
    """
    out: dict[str, int | float | str] = {}
    for key in _CONFIG_FIELDS:
        value = getattr(layer, key)
        if value is None or (key == "sparsemixer_eps" and layer.scoring != "sparsemixer"):
            continue
        if (key in _WHEN_SET or key == "identity_experts") and not value:
            continue
        out[key] = int(value) if isinstance(value, bool) else value
    return out


def layer_from_config(name: str, config: dict[str, Any], weights: dict[str, Weight]) -> MoELayer:
    """Inverse of :func:`layer_config`; unknown keys are an error naming the layer."""
    unknown = sorted(set(config) - set(_CONFIG_FIELDS))
    if unknown:
        raise ModelError(f"unknown MoE layer options {unknown}", name)
    kwargs: dict[str, Any] = dict(config)
    for key in ("normalize_topk", "gated", *_WHEN_SET):
        if key in kwargs:
            kwargs[key] = bool(kwargs[key])
    for key in (
        "routed_scaling", "swiglu_alpha", "swiglu_beta", "swiglu_limit", "normalize_eps",
        "sparsemixer_eps", "gate_softcap", "up_softcap",
    ):  # fmt: skip
        if key in kwargs:
            kwargs[key] = float(kwargs[key])
    layer = MoELayer(name=name, weights=weights, **kwargs)
    layer.verify()
    return layer
