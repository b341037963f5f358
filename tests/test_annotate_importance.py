"""``annotate-importance``: per-expert statistics from numerics or a trace, in the IR and program."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moec.compiler.calibration import calibrate
from moec.compiler.frontend.lift import load_module
from moec.compiler.lower.common import carry_pass_annotations
from moec.compiler.passes import parse_pipeline
from moec.compiler.passes.annotate_importance import expert_stats
from moec.compiler.passes.pipeline import PassError
from moec.ir.moe import evaluate, route
from moec.ir.stream import RuntimePolicy

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx"


def _annotated(pipeline: str = "annotate-importance"):
    module, _ = load_module(TINY)
    return parse_pipeline(pipeline).run(module)


def test_statistics_from_numerics():
    module = _annotated("annotate-importance{seed=3,tokens=32}")
    for op in module.moe_ops():
        layer = op.layer
        a = layer.annotations
        E = layer.num_experts
        assert all(
            len(getattr(a, k)) == E
            for k in ("routed_frac", "gate_mass", "contribution", "importance")
        )
        assert sum(a.routed_frac) == pytest.approx(layer.top_k)  # k experts per token
        assert sum(a.gate_mass) == pytest.approx(1.0, abs=1e-5)
        assert sum(a.importance) == pytest.approx(1.0, abs=1e-5)
        assert module.metadata["moec.calibration"] == "numerics:seed=3,tokens=32"


def test_contribution_is_gate_times_output_norm():
    module, _ = load_module(TINY)
    cal = calibrate(module, seed=0, tokens=16)[0]
    layer = module.moe_ops()[0].layer
    stats = expert_stats(layer, cal)
    ids, gates = route(layer, cal.x)
    # the sum over experts of gate x ||expert output||, bounded below by ||routed output||
    y = evaluate(layer, cal.x)
    assert stats.contribution is not None
    assert stats.contribution.sum() * 16 >= np.linalg.norm(y, axis=1).sum() * (1 - 1e-5)
    e = int(ids[0, 0])
    assert stats.routed_frac[e] == pytest.approx(np.count_nonzero(ids == e) / 16)


def test_trace_statistics_and_printing_are_deterministic():
    text1 = _annotated("annotate-importance{trace=synth:zipf=1.2;seed=3}").print()
    text2 = _annotated("annotate-importance{trace=synth:zipf=1.2;seed=3}").print()
    assert text1 == text2
    assert "importance=[" in text1 and "contribution=" not in text1
    module = _annotated("annotate-importance{trace=synth:zipf=1.2;seed=3}")
    a = module.moe_ops()[0].layer.annotations
    assert a.importance == a.gate_mass  # no numerics: importance is the gate share
    assert module.metadata["moec.calibration"].startswith("trace:synth:zipf=1.2,seed=3")


def test_carried_into_the_runtime_policy():
    module = _annotated()
    layer = module.moe_ops()[0].layer
    r = RuntimePolicy(layer.name, "ep")
    carry_pass_annotations(layer, r)
    assert r.annotations["importance"] == layer.annotations.importance
    assert set(r.annotations) == {"importance", "gate_mass", "routed_frac", "contribution"}


def test_bad_options():
    with pytest.raises(
        PassError, match=r"--passes:1: pass annotate-importance: tokens must be >= 1"
    ):
        parse_pipeline("annotate-importance{tokens=0}")
    with pytest.raises(PassError, match=r"--passes:1: option seed: expected int, found 'x'"):
        parse_pipeline("annotate-importance{seed=x}")
