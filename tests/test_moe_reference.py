"""The canonical MoE layer's numpy reference on small hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from moec.ir.moe import MoELayer, evaluate, present, route


def _sig(v: float) -> float:
    return float(1 / (1 + np.exp(-v)))


def router_layer(**kw: object) -> MoELayer:
    """4 experts over d=4 with router_w = I, so a token's logits are the token itself."""
    E = d = F = 4
    weights = {
        "router_w": present("router_w", np.eye(E, d, dtype=np.float32)),
        "w_up": present("w_up", np.ones((E, d, F), np.float32)),
        "w_down": present("w_down", np.ones((E, F, d), np.float32)),
    }
    if "score_bias" in kw:
        weights["score_bias"] = present("score_bias", np.asarray(kw.pop("score_bias"), np.float32))
    base: dict[str, object] = {
        "num_experts": E,
        "top_k": 2,
        "hidden": d,
        "ffn": F,
        "gated": False,
        "activation": "identity",
    }
    base.update(kw)
    return MoELayer("t", weights=weights, **base)  # type: ignore[arg-type]


LOGITS = np.array([[3.0, -3.0, 2.0, 1.9]], np.float32)  # groups {0,1} and {2,3}


def test_plain_sigmoid_top2() -> None:
    ids, gates = route(router_layer(scoring="sigmoid", normalize_topk=False), LOGITS)
    assert ids.tolist() == [[0, 2]]
    np.testing.assert_allclose(gates, [[_sig(3.0), _sig(2.0)]], rtol=1e-6)


def test_group_limited_max_keeps_the_group_with_the_best_expert() -> None:
    # group max: {0,1} -> sig(3), {2,3} -> sig(2); keep group 0, so its weak expert 1 is chosen.
    layer = router_layer(scoring="sigmoid", normalize_topk=False, n_group=2, topk_group=1)
    ids, gates = route(layer, LOGITS)
    assert ids.tolist() == [[0, 1]]
    np.testing.assert_allclose(gates, [[_sig(3.0), _sig(-3.0)]], rtol=1e-6)


def test_group_limited_top2_sum_prefers_the_stronger_pair() -> None:
    # top-2 sums: {0,1} -> sig(3)+sig(-3) = 1.0, {2,3} -> sig(2)+sig(1.9) ~ 1.75: keep group 1.
    layer = router_layer(
        scoring="sigmoid", normalize_topk=False, n_group=2, topk_group=1, group_score="top2_sum"
    )
    ids, _ = route(layer, LOGITS)
    assert ids.tolist() == [[2, 3]]


def test_score_bias_changes_the_choice_not_the_gate() -> None:
    layer = router_layer(
        scoring="sigmoid", normalize_topk=False, top_k=1, score_bias=[0.0, 0.0, 0.0, 2.0]
    )
    ids, gates = route(layer, LOGITS)
    assert ids.tolist() == [[3]]  # sig(1.9) + 2 beats sig(3)
    np.testing.assert_allclose(gates, [[_sig(1.9)]], rtol=1e-6)  # the gate is the unbiased score


def test_renormalized_gates_times_routed_scaling() -> None:
    layer = router_layer(scoring="sigmoid", normalize_topk=True, routed_scaling=2.5)
    ids, gates = route(layer, LOGITS)
    a, b = _sig(3.0), _sig(2.0)
    assert ids.tolist() == [[0, 2]]
    np.testing.assert_allclose(gates, [[2.5 * a / (a + b), 2.5 * b / (a + b)]], rtol=1e-6)
    assert float(gates.sum()) == pytest.approx(2.5)


def test_softmax_without_renormalization() -> None:
    ids, gates = route(router_layer(scoring="softmax", normalize_topk=False), LOGITS)
    e = np.exp(LOGITS[0] - LOGITS[0].max())
    p = e / e.sum()
    assert ids.tolist() == [[0, 2]]
    np.testing.assert_allclose(gates, [[p[0], p[2]]], rtol=1e-6)


def test_evaluate_weights_expert_outputs_by_gates() -> None:
    """Expert e multiplies by (e + 1); top-1 routing with a known gate gives gate * (e + 1) * x."""
    E = 2
    weights = {
        "router_w": present("router_w", np.array([[0.0], [1.0]], np.float32)),  # logits [0, x]
        "w_up": present("w_up", np.ones((E, 1, 1), np.float32)),
        "w_down": present("w_down", np.array([[[1.0]], [[2.0]]], np.float32)),
    }
    layer = MoELayer(
        "t",
        E,
        1,
        1,
        1,
        weights,
        scoring="sigmoid",
        normalize_topk=False,
        gated=False,
        activation="identity",
    )
    x = np.array([[3.0], [-3.0]], np.float32)
    y = evaluate(layer, x)
    # token 0: sig(3) > sig(0) -> expert 1 (x2); token 1: sig(0) > sig(-3) -> expert 0 (x1).
    np.testing.assert_allclose(y, [[_sig(3.0) * 2 * 3.0], [_sig(0.0) * 1 * -3.0]], rtol=1e-6)


def test_bias_on_logits_ranks_logits_plus_bias() -> None:
    # Scores + bias: sig(1.9) + 0.5 ~ 1.37 beats sig(3) ~ 0.95; logits + bias: 2.4 loses to 3.
    bias = [0.0, 0.0, 0.0, 0.5]
    on_scores = router_layer(scoring="sigmoid", normalize_topk=False, top_k=1, score_bias=bias)
    assert route(on_scores, LOGITS)[0].tolist() == [[3]]
    layer = router_layer(
        scoring="sigmoid", normalize_topk=False, top_k=1, score_bias=bias, bias_on_logits=True
    )
    ids, gates = route(layer, LOGITS)
    assert ids.tolist() == [[0]]
    np.testing.assert_allclose(gates, [[_sig(3.0)]], rtol=1e-6)


def test_bias_on_logits_is_stored_only_when_set() -> None:
    from moec.ir.errors import ModelError
    from moec.ir.moe import layer_config, layer_from_config

    plain = router_layer(scoring="sigmoid", score_bias=[0.0] * 4)
    assert "bias_on_logits" not in layer_config(plain)
    layer = router_layer(scoring="sigmoid", score_bias=[0.0] * 4, bias_on_logits=True)
    config = layer_config(layer)
    assert config["bias_on_logits"] == 1
    assert layer_from_config("t", config, layer.weights).bias_on_logits is True
    grouped = router_layer(scoring="sigmoid", bias_on_logits=True, n_group=2, topk_group=1)
    with pytest.raises(ModelError, match="bias_on_logits"):
        grouped.verify()


def _joint_layer() -> MoELayer:
    """Two shared experts (one column each) whose scores read logits 1 and 3 of the token."""
    layer = router_layer(scoring="sigmoid", routed_scaling=2.0, shared_in_norm=True)
    sh_router = np.zeros((4, 2), np.float32)
    sh_router[1, 0] = sh_router[3, 1] = 1.0
    rng = np.random.default_rng(0)
    layer.weights["sh_router"] = present("sh_router", sh_router)
    layer.weights["sh_up"] = present("sh_up", rng.normal(size=(4, 2)).astype(np.float32))
    layer.weights["sh_down"] = present("sh_down", rng.normal(size=(2, 4)).astype(np.float32))
    layer.num_shared, layer.shared_ffn, layer.shared_activation = 2, 2, "identity"
    layer.verify()
    return layer


def test_shared_in_norm_joins_the_shared_scores_to_the_renormalization() -> None:
    from moec.ir.moe import shared_gate

    layer = _joint_layer()
    ids, gates = route(layer, LOGITS)
    assert ids.tolist() == [[0, 2]]
    a, b, s1, s2 = _sig(3.0), _sig(2.0), _sig(-3.0), _sig(1.9)
    denom = a + b + s1 + s2
    np.testing.assert_allclose(gates, [[2 * a / denom, 2 * b / denom]], rtol=1e-6)
    np.testing.assert_allclose(
        shared_gate(layer, LOGITS), [[2 * s1 / denom, 2 * s2 / denom]], rtol=1e-6
    )


def test_shared_in_norm_gates_each_shared_expert_and_slices_add_up() -> None:
    from moec.ir.moe import shared_ffn, shared_gate

    layer = _joint_layer()
    g = shared_gate(layer, LOGITS)
    h = LOGITS @ layer.array("sh_up")  # identity activation, not gated
    want = (h * g) @ layer.array("sh_down")
    np.testing.assert_allclose(shared_ffn(layer, LOGITS), want, rtol=1e-5)
    parts = shared_ffn(layer, LOGITS, slice(0, 1)) + shared_ffn(layer, LOGITS, slice(1, 2))
    np.testing.assert_allclose(parts, want, rtol=1e-5)


def test_softcapped_silu_expert() -> None:
    from moec.ir.moe import expert_hidden

    layer = router_layer(gated=True, activation="silu", gate_softcap=4.0, up_softcap=25.0)
    layer.weights["w_gate"] = present("w_gate", np.full((4, 4, 4), 2.0, np.float32))
    layer.verify()
    x = np.array([[1.0, 0.5, 0.0, 0.0]], np.float32)  # gate 3.0, up 1.5 in every column
    want = 4 * np.tanh(3.0 / 4) * _sig(3.0) * 25 * np.tanh(1.5 / 25)
    np.testing.assert_allclose(expert_hidden(layer, 0, x), np.full((1, 4), want), rtol=1e-6)
    layer.up_softcap = None
    want = 4 * np.tanh(3.0 / 4) * _sig(3.0) * 1.5
    np.testing.assert_allclose(expert_hidden(layer, 0, x), np.full((1, 4), want), rtol=1e-6)
    with pytest.raises(Exception, match="gated SiLU"):
        router_layer(activation="identity", gate_softcap=4.0).verify()
