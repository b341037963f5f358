"""`moec inspect`: right experts / top-k / hidden / ffn / shared counts for every model and preset."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from moec.compiler.cli.main import main
from moec.models.catalog import catalog

# name: (MoE layers, experts, top_k, hidden, ffn, shared, scoring, normalize) from the papers'
# and Hugging Face configs (not from the builders), so a wrong preset fails here.
EXPECTED = {
    "phi3.5-moe": (32, 16, 2, 4096, 6400, 0, "sparsemixer", False),
    "yuan2-m32": (24, 32, 2, 2048, 4096, 0, "softmax", True),
    "deepseek-moe-16b": (27, 64, 6, 2048, 1408, 2, "softmax", False),
    "qwen3-30b-a3b": (48, 128, 8, 2048, 768, 0, "softmax", True),
    "mixtral-8x7b": (32, 8, 2, 4096, 14336, 0, "softmax", True),
    "deepseek-v3": (58, 256, 8, 7168, 2048, 1, "sigmoid", True),
    "tiny_moe": (2, 8, 2, 32, 64, 0, "softmax", True),
    "tiny_moe_decomposed": (2, 8, 2, 32, 64, 0, "softmax", True),
    "tiny_moe_shared": (2, 8, 2, 32, 64, 1, "softmax", False),
    "tiny_deepseek": (2, 16, 4, 32, 64, 1, "sigmoid", True),
    "tiny_qmoe4": (2, 8, 2, 32, 64, 0, "softmax", True),
    "tiny_qmoe8": (2, 8, 2, 32, 64, 0, "softmax", True),
}


def test_every_model_is_covered() -> None:
    assert sorted(EXPECTED) == sorted(catalog())


def _inspect(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_json(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{name}.onnx"
    onnx.save(catalog()[name].build(0), path)
    got = _inspect(path, capsys)
    n_layers, experts, k, d, F, shared, scoring, norm = EXPECTED[name]
    assert got["model"] == str(path)
    assert len(got["moe_layers"]) == n_layers
    assert [layer["name"] for layer in got["moe_layers"]] == [f"moe{i}" for i in range(n_layers)]
    for layer in got["moe_layers"]:
        assert (layer["experts"], layer["top_k"], layer["hidden"], layer["ffn"]) == (
            experts,
            k,
            d,
            F,
        )
        assert (layer["shared_experts"], layer["scoring"], layer["normalize_topk"]) == (
            shared,
            scoring,
            norm,
        )
        assert layer["activation"] == "silu"
        assert layer["weight_bytes_per_expert"] == 3 * d * F * 4
    assert 0 < got["active_params_per_token"] < got["total_params"]


def test_param_counts_of_presets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without attention, the presets land just under the published sizes."""
    published = {
        "deepseek-v3": (671e9, 37e9),
        "mixtral-8x7b": (46.7e9, 12.9e9),
        "qwen3-30b-a3b": (30.5e9, 3.3e9),
    }
    for name, (total, active) in published.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(catalog()[name].build(0), path)
        got = _inspect(path, capsys)
        assert 0.85 * total < got["total_params"] <= total
        assert 0.5 * active < got["active_params_per_token"] <= active


def test_human_table(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx"
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 MoE layers" in out and "moe0" in out and "moe1" in out
    assert "experts" in out and "total params" in out and "\x1b[" not in out


def test_inspect_routing_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DeepSeek-style routing (correction bias, group-limited top-k, scaling) is shown."""
    want = {
        "deepseek-v3": (True, 8, 4, "top2_sum", 2.5, "bias, groups 8/4, x2.5"),
        "tiny_deepseek": (True, 4, 2, "top2_sum", 2.5, "bias, groups 4/2, x2.5"),
        "tiny_moe": (False, 1, 1, None, 1.0, "-"),
    }
    for name, (bias, groups, topk_groups, group_score, scaling, text) in want.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(catalog()[name].build(0), path)
        for layer in _inspect(path, capsys)["moe_layers"]:
            assert (
                layer["score_bias"], layer["groups"], layer["topk_groups"], layer["group_score"],
                layer["routed_scaling"],
            ) == (bias, groups, topk_groups, group_score, scaling)  # fmt: skip
        assert main(["inspect", str(path)]) == 0
        rows = [ln for ln in capsys.readouterr().out.splitlines() if "moe0" in ln]
        assert len(rows) == 1 and f" {text} " in rows[0]
