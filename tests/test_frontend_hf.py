"""Hugging Face MoE exports: recognition and layer-by-layer numerics against ONNX Runtime.

The fixtures in ``tests/fixtures/hf`` are tiny random-weight models exported by
``tests/fixtures/hf/make_fixtures.py`` (see its README). The default tests read only those files;
the ``slow`` test regenerates them with torch and transformers when both are installed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from ort_capture import capture, max_rel_error

from moec.compiler.frontend.hf_layer import EXPERT_SCALE_NOTE
from moec.compiler.frontend.lift import LiftResult, lift_model, load_module
from moec.compiler.frontend.loader import load_onnx
from moec.ir.errors import ModelError
from moec.ir.moe import evaluate, present

FIXTURES = Path(__file__).parent / "fixtures" / "hf"


@dataclass(frozen=True)
class Expected:
    layers: int
    ffn: int
    tokens: int = 8
    scoring: str = "softmax"
    normalize: bool = True
    routed_scaling: float | None = 1.0  # None: a learned scale, not checked
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    score_bias: bool = False
    num_shared: int = 0
    shared_ffn: int = 0
    shared_gate: bool = False
    activation: str = "silu"
    biases: bool = False
    gated: bool = True
    swiglu_limit: float | None = 0.5
    swiglu_alpha: float = 1.702
    swiglu_beta: float = 1.0
    shared_activation: str | None = None  # None: the routed experts' activation
    # TopK and ScatterElements outside the MoE layers (HY-V4's attention indexer)
    attention_indexer: bool = False
    # Seeds of the two numerics checks' token ids (a TorchScript trace splits the experts it
    # reached into a fixed count: ORT itself fails on ids that leave one unused in a layer).
    seeds: tuple[int, int] = (0, 1)


# From the configs in make_fixtures.py: hidden 32, 8 experts, top-2 everywhere.
EXPECTED = {
    "mixtral": Expected(layers=2, ffn=48),
    "mixtral_unrolled": Expected(layers=2, ffn=48, tokens=32),
    "qwen2_moe": Expected(
        layers=2, ffn=24, normalize=False, num_shared=1, shared_ffn=40, shared_gate=True
    ),
    "olmoe": Expected(layers=2, ffn=24, normalize=False),
    # Top-k of the logits then softmax of the k values; interleaved gate/up, clamped SwiGLU.
    "gpt_oss": Expected(layers=2, ffn=24, activation="swiglu", biases=True),
    "qwen3_moe": Expected(layers=2, ffn=24),
    # first_k_dense_replace=1: layer 0 is a dense MLP, only layer 1 is MoE.
    "deepseek_v3": Expected(
        layers=1,
        ffn=16,
        scoring="sigmoid",
        routed_scaling=2.5,
        n_group=2,
        topk_group=1,
        group_score="top2_sum",
        score_bias=True,
        num_shared=2,
        shared_ffn=32,
    ),  # fmt: skip
    # Softmax + correction bias, renormalized by a clamped sum (Clip), one ungated shared expert.
    "ernie4_5_moe": Expected(layers=2, ffn=24, score_bias=True, num_shared=1, shared_ffn=24),
    # Sigmoid + correction bias, one group (a trivial group mask sharing constants), x1.5.
    "glm4_moe": Expected(
        layers=2,
        ffn=24,
        scoring="sigmoid",
        routed_scaling=1.5,
        score_bias=True,
        num_shared=1,
        shared_ffn=24,
    ),  # fmt: skip
    # The shared MLP's gate and up projections are one Linear split in halves.
    "granitemoeshared": Expected(layers=2, ffn=24, num_shared=1, shared_ffn=40),
    # Sigmoid + expert bias; the shared MLP's output is reshaped before the sum.
    "afmoe": Expected(
        layers=2, ffn=24, scoring="sigmoid", score_bias=True, num_shared=1, shared_ffn=24
    ),
    # Sparsemixer routing (no TopK): two masked arg-max picks, gates not renormalized.
    "phimoe": Expected(layers=2, ffn=48, scoring="sparsemixer", normalize=False),
    # TorchScript: separate gate (w1) and up (v1) stacks, ReduceL1 renormalization.
    "dbrx_unrolled": Expected(layers=2, ffn=24, tokens=32),
    # TorchScript of GLM-4-MoE: one stacked gate_up projection chunked by Slices whose bounds
    # come from an untyped Shape; the trivial group mask scatters Expand(1, Shape(ids)); the two
    # layers' equal (zero) correction biases written once, the second as an Identity of it.
    "glm4_moe_unrolled": Expected(
        layers=2,
        ffn=24,
        scoring="sigmoid",
        routed_scaling=1.5,
        score_bias=True,
        num_shared=1,
        shared_ffn=24,
        tokens=32,
        seeds=(0, 4),
    ),  # fmt: skip
    # Squared-ReLU experts and shared expert, none gated (relu(x @ up) ** 2 as Relu, Pow);
    # sigmoid + correction bias; one MoE layer beside a Mamba layer.
    "nemotron_h": Expected(
        layers=1,
        ffn=24,
        scoring="sigmoid",
        score_bias=True,
        num_shared=1,
        shared_ffn=40,
        activation="relu2",
        gated=False,
    ),  # fmt: skip
    # Top-k of logits + correction bias; gates the sigmoid of the chosen logits, renormalized.
    "kolibri1": Expected(
        layers=2, ffn=24, scoring="sigmoid", score_bias=True, num_shared=1, shared_ffn=40
    ),
    # E + 2 router rows; log-sigmoid weights over the k chosen and the 2 shared logits, scaled by
    # route_scale x a learned global scale (random here); each shared expert its own gate.
    "inkling": Expected(
        layers=2,
        ffn=24,
        scoring="sigmoid",
        score_bias=True,
        num_shared=2,
        shared_ffn=48,
        shared_gate=True,
        routed_scaling=None,
    ),  # fmt: skip
    # Sigmoid + correction bias, x8; experts 4 tanh(g / 4) sigmoid(g) * 25 tanh(up / 25).
    "inkling2": Expected(layers=2, ffn=24, scoring="sigmoid", score_bias=True, routed_scaling=8.0),
    # Clamped SwiGLU (limit 1) in the routed experts and the shared MLP (one fused gate-up
    # Linear split in halves); sigmoid + correction bias; the routed sum scaled by 2 (a Mul
    # after the sum, folded into the op) before the shared output is added.
    "minimax_m3": Expected(
        layers=2,
        ffn=24,
        scoring="sigmoid",
        routed_scaling=2.0,
        score_bias=True,
        num_shared=1,
        shared_ffn=40,
        activation="swiglu",
        swiglu_limit=1.0,
    ),  # fmt: skip
    # silu(clip(gate, max=0.2)) * clip(up, -0.2, 0.2): SwiGLU with alpha 1, beta 0; the shared MLP
    # plain SiLU-gated (separate gate and up); sigmoid + correction bias, renormalized, x2.827;
    # hyper-connections around each block.
    "hy_v4": Expected(
        layers=2,
        ffn=24,
        scoring="sigmoid",
        routed_scaling=2.827,
        score_bias=True,
        num_shared=1,
        shared_ffn=24,
        activation="swiglu",
        swiglu_limit=0.2,
        swiglu_alpha=1.0,
        swiglu_beta=0.0,
        shared_activation="silu",
        attention_indexer=True,
    ),  # fmt: skip
    # 8 routed + 4 identity ("zero") experts: softmax over 12, correction bias, x6, not
    # renormalized; an identity pick adds gate * x. One MoE layer (the generator's layout).
    "longcat_flash": Expected(
        layers=1, ffn=24, normalize=False, routed_scaling=6.0, score_bias=True
    ),
    # opset 18 writes GELU out: 0.5 * x * (1 + Erf(x / sqrt 2)).
    "olmoe_gelu": Expected(layers=2, ffn=24, normalize=False, activation="gelu"),
    # GeGLU (tanh GELU) experts; router and experts read two rescales of one RMSNorm (folded
    # into router_w and the expert weights); gates times a per-expert scale (folded into w_down).
    "gemma4_text": Expected(layers=2, ffn=24, activation="gelu_tanh"),
}


def _ids(tokens: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, size=(1, tokens)).astype(np.int64)


def _check_layers(result: LiftResult, want: Expected) -> None:
    assert len(result.lifted) == want.layers
    for lf in result.lifted:
        layer = lf.layer
        got = (layer.num_experts, layer.top_k, layer.hidden, layer.ffn)
        assert got == (8, 2, 32, want.ffn)
        assert layer.scoring == want.scoring
        assert layer.normalize_topk == want.normalize
        if want.routed_scaling is not None:
            assert layer.routed_scaling == pytest.approx(want.routed_scaling)
        assert (layer.n_group, layer.topk_group) == (want.n_group, want.topk_group)
        if want.n_group > 1:
            assert layer.group_score == want.group_score
        assert layer.has("score_bias") == want.score_bias
        assert (layer.num_shared, layer.shared_ffn) == (want.num_shared, want.shared_ffn)
        assert layer.has("sh_router") == want.shared_gate
        assert layer.activation == want.activation and layer.gated == want.gated
        shared_act = want.shared_activation or want.activation
        assert layer.shared_activation == shared_act or not want.num_shared
        for key in ("router_b", "b_gate", "b_up", "b_down"):
            assert layer.has(key) == want.biases, key
        if want.activation == "swiglu":
            assert layer.swiglu_alpha == pytest.approx(want.swiglu_alpha)
            assert layer.swiglu_beta == want.swiglu_beta
            assert layer.swiglu_limit == pytest.approx(want.swiglu_limit)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_recognizes_every_moe_layer(arch: str) -> None:
    module, result = load_module(FIXTURES / f"{arch}.onnx")
    _check_layers(result, EXPECTED[arch])
    kinds = [op.kind for op in module.ops]
    assert kinds.count("moe") == EXPECTED[arch].layers
    # Nothing of the routing is left behind as ordinary ops.
    routing_ops = {"TopK", "GatherND", "OneHot", "NonZero", "ScatterElements"}
    if EXPECTED[arch].attention_indexer:
        routing_ops -= {"TopK", "ScatterElements"}
    assert not routing_ops & set(kinds)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
@pytest.mark.parametrize("which", [0, 1])
def test_layer_numerics_match_onnxruntime(arch: str, which: int) -> None:
    _, result = load_module(FIXTURES / f"{arch}.onnx")
    names = [n for lf in result.lifted for n in (lf.input, lf.output)]
    ids = _ids(EXPECTED[arch].tokens, EXPECTED[arch].seeds[which])
    values = capture(result.model, {"input_ids": ids}, names)
    for lf in result.lifted:
        x, want = values[lf.input], values[lf.output]
        got = evaluate(lf.layer, x)
        assert got.shape == want.shape
        assert max_rel_error(got, want) <= 1e-4, lf.layer.name


@pytest.mark.parametrize(
    ("arch", "feature", "ablate"),
    [
        ("deepseek_v3", "correction bias", lambda layer: layer.weights.pop("score_bias")),
        ("deepseek_v3", "group limit", lambda layer: setattr(layer, "n_group", 1)),
        ("gpt_oss", "swiglu clamp", lambda layer: setattr(layer, "swiglu_limit", None)),
        ("qwen2_moe", "shared gate", lambda layer: layer.weights.pop("sh_router")),
        ("granitemoeshared", "shared expert", lambda layer: layer.weights.pop("sh_down")),
        ("afmoe", "shared expert", lambda layer: layer.weights.pop("sh_down")),
        ("phimoe", "sparsemixer", lambda layer: setattr(layer, "scoring", "softmax")),
        ("ernie4_5_moe", "correction bias", lambda layer: layer.weights.pop("score_bias")),
        ("glm4_moe", "correction bias", lambda layer: layer.weights.pop("score_bias")),
        ("glm4_moe", "routed scaling", lambda layer: setattr(layer, "routed_scaling", 1.0)),
        ("glm4_moe_unrolled", "shared expert", lambda layer: layer.weights.pop("sh_down")),
        ("dbrx_unrolled", "renormalization", lambda layer: setattr(layer, "normalize_topk", False)),
        ("olmoe_gelu", "gelu", lambda layer: setattr(layer, "activation", "silu")),
        ("kolibri1", "bias on logits", lambda layer: setattr(layer, "bias_on_logits", False)),
        ("kolibri1", "correction bias", lambda layer: layer.weights.pop("score_bias")),
        # Without the joint normalization: routed weights over their own sum, shared ungated.
        (
            "inkling",
            "shared in norm",
            lambda layer: (setattr(layer, "shared_in_norm", False), layer.weights.pop("sh_router")),
        ),
        ("inkling", "correction bias", lambda layer: layer.weights.pop("score_bias")),
        ("inkling2", "gate softcap", lambda layer: setattr(layer, "gate_softcap", None)),
        ("minimax_m3", "swiglu clamp", lambda layer: setattr(layer, "swiglu_limit", None)),
        ("minimax_m3", "shared expert", lambda layer: layer.weights.pop("sh_down")),
        ("minimax_m3", "shared swiglu", lambda layer: setattr(layer, "shared_activation", "silu")),
        ("minimax_m3", "routed scaling", lambda layer: setattr(layer, "routed_scaling", 1.0)),
        ("hy_v4", "swiglu clamp", lambda layer: setattr(layer, "swiglu_limit", None)),
        ("hy_v4", "shared expert", lambda layer: layer.weights.pop("sh_down")),
        ("longcat_flash", "identity experts", lambda layer: setattr(layer, "identity_experts", 0)),
    ],
)
def test_fixture_exercises_feature(arch: str, feature: str, ablate: object) -> None:
    """Each recognized variant matters on the fixture: dropping it breaks the numerics."""
    _, result = load_module(FIXTURES / f"{arch}.onnx")
    lf = result.lifted[0]
    tokens = EXPECTED[arch].tokens
    values = capture(result.model, {"input_ids": _ids(tokens, 0)}, [lf.input, lf.output])
    x, want = values[lf.input], values[lf.output]
    assert max_rel_error(evaluate(lf.layer, x), want) <= 1e-4
    ablate(lf.layer)  # type: ignore[operator]
    assert max_rel_error(evaluate(lf.layer, x), want) > 1e-3, feature


def test_gemma4_folds_per_expert_gate_scale_into_w_down() -> None:
    """The per-expert gate scale is in w_down (and said so); without it the numerics break."""
    _, result = load_module(FIXTURES / "gemma4_text.onnx")
    lf = result.lifted[0]
    assert lf.layer.annotations.routing_note == EXPERT_SCALE_NOTE
    values = capture(result.model, {"input_ids": _ids(8, 0)}, [lf.input, lf.output])
    x, want = values[lf.input], values[lf.output]
    assert max_rel_error(evaluate(lf.layer, x), want) <= 1e-4
    model = _model("gemma4_text")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gathered = [n.input[0] for n in model.graph.node if n.op_type in ("Gather", "GatherND")]
    scale = next(inits[v] for v in gathered if v in inits and inits[v].shape == (8,))
    w = lf.layer.weights["w_down"]
    lf.layer.weights["w_down"] = present("w_down", w.array() / scale[:, None, None])
    assert max_rel_error(evaluate(lf.layer, x), want) > 1e-3


def test_gemma4_inspect_json_says_the_gate_scale_is_folded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moec.compiler.cli.main import main

    assert main(["inspect", str(FIXTURES / "gemma4_text.onnx"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["moe_layers"]
    assert [r["routing_note"] for r in rows] == [EXPERT_SCALE_NOTE] * 2
    assert [r["activation"] for r in rows] == ["gelu_tanh"] * 2


def test_gemma4_router_input_is_the_shared_normalization() -> None:
    """The op's input is the normalized residual both sides rescale, not either rescale."""
    _, result = load_module(FIXTURES / "gemma4_text.onnx")
    model = result.model
    producers = {o: n for n in model.graph.node for o in n.output}
    for lf in result.lifted:
        node = producers[lf.input]
        # RMSNorm without weight: x * (mean(x^2) + eps) ** -0.5 (Mul by a computed value).
        assert node.op_type == "Mul"
        assert all(i not in {t.name for t in model.graph.initializer} for i in node.input)


# --- mismatches: a router whose surroundings are not an MoE layer ------------------------------


def _model(arch: str) -> onnx.ModelProto:
    return load_onnx(FIXTURES / f"{arch}.onnx")


def _first(model: onnx.ModelProto, op_type: str, **attrs: object) -> onnx.NodeProto:
    for node in model.graph.node:
        if node.op_type != op_type:
            continue
        have = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if all(have.get(k) == v for k, v in attrs.items()):
            return node
    raise LookupError(op_type)


def _lift_error(model: onnx.ModelProto) -> str:
    with pytest.raises(ModelError) as info:
        lift_model(model, where="mutated.onnx")
    return str(info.value)


def test_slot_sum_replaced_is_a_mismatch() -> None:
    model = _model("mixtral")
    _first(model, "ReduceSum", keepdims=0).op_type = "ReduceMax"
    msg = _lift_error(model)
    assert msg.startswith("mutated.onnx: node ")
    assert "expected the sum over the top-k slots (ReduceSum)" in msg and "found ReduceMax" in msg


def test_unknown_expert_activation_is_a_mismatch() -> None:
    model = _model("mixtral")
    split = _first(model, "Split")
    for node in model.graph.node:
        if node.op_type == "Sigmoid" and node.input[0] in split.output:
            node.op_type = "Tanh"
            break
    msg = _lift_error(model)
    assert "expected act(gate) * up after the gate/up split" in msg


def test_internal_value_used_outside_is_a_mismatch() -> None:
    model = _model("olmoe")
    split = _first(model, "Split")
    model.graph.output.append(helper.make_tensor_value_info(split.output[0], 1, None))
    msg = _lift_error(model)
    assert f"expected {split.output[0]!r} to be used only inside the MoE layer" in msg
    assert "a graph output" in msg


def test_tokens_tiled_instead_of_repeated_is_a_mismatch() -> None:
    """x tiled k times (Unsqueeze axis 0) no longer pairs each token with its own experts."""
    model = _model("qwen3_moe")
    expand = _first(model, "Expand")
    unsq = next(n for n in model.graph.node if n.output[0] == expand.input[0])
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "tiled_axes")
    model.graph.initializer.append(axes)
    unsq.input[1] = "tiled_axes"
    msg = _lift_error(model)
    assert "expected tokens repeated 2 times per token (axis 1)" in msg


def test_unrolled_scatter_with_max_reduction_is_a_mismatch() -> None:
    model = _model("mixtral_unrolled")
    scatter = _first(model, "ScatterElements")
    scatter.attribute.append(helper.make_attribute("reduction", "max"))
    msg = _lift_error(model)
    assert "expected a scatter without max/min/mul reduction" in msg
    assert f"node {scatter.name}" in msg


def test_router_without_experts_is_a_mismatch() -> None:
    """A softmax/top-k router whose ids feed no expert weights is named, not passed through."""
    model = _model("qwen3_moe")
    for node in model.graph.node:
        if node.op_type == "GatherND":
            node.op_type = "GatherElements"
            del node.attribute[:]
    msg = _lift_error(model)
    assert "expected the top-k expert ids to gather stacked expert weights" in msg


def test_separate_gate_and_up_stacks_are_told_apart() -> None:
    """DBRX's w1 (gate, under the activation) and v1 (up) become the layer's w_gate / w_up."""
    _, result = load_module(FIXTURES / "dbrx_unrolled.onnx")
    layer = result.lifted[0].layer
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    stacks = [a for a in inits.values() if a.shape == (8, 24, 32)]
    assert len(stacks) >= 3  # w1, v1, w2 of each layer as [E, F, d]
    w_gate = np.transpose(layer.array("w_gate"), (0, 2, 1))
    w_up = np.transpose(layer.array("w_up"), (0, 2, 1))
    assert any(np.array_equal(w_gate, a) for a in stacks)
    assert any(np.array_equal(w_up, a) for a in stacks)
    assert not np.array_equal(w_gate, w_up)


def _split_gate_up_stack(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite the first batched layer with separate gate and up stacks; returns them.

    ``Split(Squeeze(MatMul(GatherND(gate_up [E, 2F, d], ids), x_k)))`` becomes two such chains
    over ``gate_up[:, :F]`` and ``gate_up[:, F:]``, whose outputs replace the Split's.
    """
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    split = _first(model, "Split")
    squeeze = prod[split.input[0]]
    mm = prod[squeeze.input[0]]
    gather = prod[mm.input[0]]
    inits = {t.name: t for t in g.initializer}
    stack = numpy_helper.to_array(inits[gather.input[0]])
    half = stack.shape[1] // 2
    parts = (stack[:, :half].copy(), stack[:, half:].copy())
    new_nodes = []
    for tag, part, out in zip(("gate", "up"), parts, split.output, strict=True):
        g.initializer.append(numpy_helper.from_array(part, f"sep_{tag}"))
        new_nodes += [
            helper.make_node("GatherND", [f"sep_{tag}", gather.input[1]], [f"sep_{tag}_sel"]),
            helper.make_node("MatMul", [f"sep_{tag}_sel", mm.input[1]], [f"sep_{tag}_mm"]),
            helper.make_node("Squeeze", [f"sep_{tag}_mm", squeeze.input[1]], [out]),
        ]
    at = list(g.node).index(split)
    nodes = [n for n in g.node if n not in (split, squeeze, mm, gather)]
    nodes[at - 3 : at - 3] = new_nodes
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return parts


def test_separate_gate_and_up_stacks_in_batched_form() -> None:
    """batched_mm with a gate stack and an up stack (no fused gate_up) lifts and matches ORT."""
    model = _model("mixtral")
    gate, up = _split_gate_up_stack(model)
    onnx.checker.check_model(model)
    _, result = lift_model(model, where="separate.onnx")
    assert len(result.lifted) == 2
    layer = result.lifted[0].layer
    np.testing.assert_array_equal(layer.array("w_gate"), gate.transpose(0, 2, 1))
    np.testing.assert_array_equal(layer.array("w_up"), up.transpose(0, 2, 1))
    names = [n for lf in result.lifted for n in (lf.input, lf.output)]
    values = capture(result.model, {"input_ids": _ids(8, 0)}, names)
    for lf in result.lifted:
        got = evaluate(lf.layer, values[lf.input])
        assert max_rel_error(got, values[lf.output]) <= 1e-4, lf.layer.name


def test_clamped_sum_with_a_large_floor_is_not_renormalization() -> None:
    """Clip(sum, min=0.5) changes the gate weights: not lifted as a plain renormalization."""
    from moec.compiler.frontend.hf_batched import recognize
    from moec.compiler.frontend.loader import infer_shapes
    from moec.compiler.frontend.patterns import GraphView, Mismatch

    model = _model("ernie4_5_moe")
    clip = _first(model, "Clip")
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "big_floor")
    )
    clip.input[1] = "big_floor"
    _lift_error(model)
    view = GraphView(infer_shapes(model).graph)
    result = recognize(view, next(n for n in view.nodes if n.op_type == "TopK"))
    assert isinstance(result, Mismatch)
    assert "expected the top-k weights divided by their sum" in result.reason


def test_deepseek_zero_fill_variant_matches_onnxruntime() -> None:
    """DeepSeek's reference code masks non-selected groups with 0.0 instead of -inf.

    With a correction bias of -1 every biased score is negative, so the two fills pick
    different experts: the recognized fill must be the one ONNX Runtime uses.
    """
    model = _model("deepseek_v3")
    where = _first(model, "Where")
    inits = {t.name: t for t in model.graph.initializer}
    fill = inits[where.input[1]]
    assert np.isneginf(numpy_helper.to_array(fill))
    fill.CopyFrom(numpy_helper.from_array(np.array(0.0, dtype=np.float32), fill.name))
    add = next(n for n in model.graph.node if n.output[0] == where.input[2])
    bias = inits[next(i for i in add.input if i in inits)]
    bias.CopyFrom(numpy_helper.from_array(np.full(8, -1.0, dtype=np.float32), bias.name))
    _, result = lift_model(model, where="zero_fill.onnx")
    (lf,) = result.lifted
    assert lf.layer.group_fill == 0.0
    values = capture(result.model, {"input_ids": _ids(8, 0)}, [lf.input, lf.output])
    x, want = values[lf.input], values[lf.output]
    assert max_rel_error(evaluate(lf.layer, x), want) <= 1e-4
    lf.layer.group_fill = float("-inf")
    assert max_rel_error(evaluate(lf.layer, x), want) > 1e-3


# --- fresh exports (torch + transformers) -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_fresh_export_is_recognized(arch: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    sys.path.insert(0, str(FIXTURES))
    import make_fixtures

    path = tmp_path / f"{arch}.onnx"
    make_fixtures.export(arch, path)
    _, result = load_module(path)
    _check_layers(result, EXPECTED[arch])
    lf = result.lifted[-1]
    # An unrolled export runs only on inputs reaching every expert (the Split of the hit-expert
    # list needs E entries): seed 0 does for every fixture (test_layer_numerics_match_onnxruntime).
    seed = 0 if EXPECTED[arch].tokens > 8 else 3
    values = capture(
        result.model, {"input_ids": _ids(EXPECTED[arch].tokens, seed)}, [lf.input, lf.output]
    )
    assert max_rel_error(evaluate(lf.layer, values[lf.input]), values[lf.output]) <= 1e-4


@pytest.mark.slow
def test_fresh_export_with_tanh_gelu_is_recognized(tmp_path: Path) -> None:
    """GELU's tanh approximation written out (Pow, Tanh) lifts as ``gelu_tanh``."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    sys.path.insert(0, str(FIXTURES))
    import make_fixtures

    path = tmp_path / "olmoe_gelu_tanh.onnx"
    make_fixtures.export("olmoe_gelu_tanh", path)
    _, result = load_module(path)
    _check_layers(result, dataclasses.replace(EXPECTED["olmoe_gelu"], activation="gelu_tanh"))
    for lf in result.lifted:
        values = capture(result.model, {"input_ids": _ids(8, 3)}, [lf.input, lf.output])
        assert max_rel_error(evaluate(lf.layer, values[lf.input]), values[lf.output]) <= 1e-4


@pytest.mark.slow
def test_partial_unrolled_trace_is_a_mismatch(tmp_path: Path) -> None:
    """A TorchScript trace that reached only some experts unrolls too few slots: an error."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(FIXTURES))
    import make_fixtures

    path = tmp_path / "partial.onnx"
    make_fixtures.export("mixtral_unrolled", path, seq=3)
    with pytest.raises(ModelError, match=r"unrolled for all 8 experts, found [1-7]\b"):
        load_module(path)


def test_squared_relu_experts_have_no_ort_moe_form() -> None:
    from moec.compiler.frontend.export import ort_rows

    _, result = load_module(FIXTURES / "nemotron_h.onnx")
    with pytest.raises(ModelError, match="com.microsoft.MoE has no relu2 activation"):
        ort_rows(result.lifted[0].layer)


def test_hash_routing_is_a_located_refusal() -> None:
    """DeepSeek-V4's hash-routed layers: expert ids = tid2eid[input_ids], a constant table looked
    up by a graph input; the error names the expert gather, the table and the input."""
    table = np.array([[0, 1], [2, 3], [1, 0]], dtype=np.int64)
    stack = np.zeros((4, 6, 5), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["ids"]),
            helper.make_node("Unsqueeze", ["ids", "axis"], ["ids3"]),
            helper.make_node("GatherND", ["stack", "ids3"], ["w"], name="expert_gather"),
        ],
        "hash",
        [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [7])],
        [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(stack, "stack"),
         numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    msg = _lift_error(model)
    assert "node expert_gather" in msg
    assert "constant table 'table' by the graph input 'input_ids' (hash routing)" in msg


def test_topk_over_reshaped_router_logits_says_so() -> None:
    """Doge's product keys: router logits [T, 2n] viewed as [2, T, n] before the TopK (rows mix
    tokens); the generic TopK error adds what the TopK ranks."""
    w = np.ones((6, 4), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Reshape", ["logits", "shape"], ["keys"]),
            helper.make_node("TopK", ["keys", "k"], ["v", "i"], name="key_topk"),
        ],
        "product_keys",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([2, 4, -1], dtype=np.int64), "shape"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "k")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    msg = _lift_error(model)
    assert "node key_topk" in msg
    assert "the 4 outputs of the constant-weight projection 'logits' reshaped to [2, 4, -1]" in msg
