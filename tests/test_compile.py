"""``moec compile``: determinism, the weights companion, and one-line errors that leave nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from moec.compiler.cli.main import main
from moec.compiler.frontend import load_module
from moec.ir.moe import layer_config, layer_from_config, present
from moec.ir.routing import save_trace
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import load_program

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "models" / "tiny_moe.onnx")


def _moec(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_same_input_gives_identical_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        code, out, _ = _moec(capsys, "compile", TINY, "-o", str(tmp_path / d / "prog.msp"))
        assert code == 0 and "wrote" in out
    for name in ("prog.msp", "prog.msp.weights.onnx"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "prog.msp",
        "prog.msp.weights.onnx",
    ]


def test_companion_is_the_residual_model_with_canonical_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prog.msp"
    assert _moec(capsys, "compile", TINY, "-o", str(out))[0] == 0
    prog = load_program(str(out))
    assert prog.weights is not None and prog.weights.path == "prog.msp.weights.onnx"
    data = (tmp_path / prog.weights.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == prog.weights.sha256
    comp = onnx.load_from_string(data)
    assert comp.ir_version == 10
    assert [i.name for i in comp.graph.input] == ["tokens"]
    assert [o.name for o in comp.graph.output] == ["lm_head_1_1"]
    moe_nodes = [n for n in comp.graph.node if n.domain == "ai.moec"]
    assert [n.op_type for n in moe_nodes] == ["MoE", "MoE"]
    module, _ = load_module(TINY)
    inits = {t.name: numpy_helper.to_array(t) for t in comp.graph.initializer}
    for node, op in zip(moe_nodes, module.moe_ops(), strict=True):
        layer = op.layer
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.pop("layer") == layer.name.encode()
        assert set(attrs) == set(layer_config(layer))
        assert list(node.input) == [op.inputs[0].name] and list(node.output) == [op.outputs[0].name]
        weights = {
            k: present(f"{layer.name}.{k}", inits[f"{layer.name}.{k}"]) for k in layer.weights
        }
        rebuilt = layer_from_config(layer.name, layer_config(layer), weights)
        for k in layer.weights:
            np.testing.assert_array_equal(rebuilt.array(k), layer.array(k))
    # dense weights stay, MoE-only weights of the original graph are gone
    assert "lm_head" in inits and "embed" in inits
    assert not any(n.op_type == "MoE" and n.domain == "com.microsoft" for n in comp.graph.node)


def test_shape_only_model_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.msp"
    code, _, err = _moec(capsys, "compile", "qwen3-30b-a3b", "--tokens", "64", "-o", str(out))
    assert code == 0, err
    prog = load_program(str(out))
    assert prog.weights is None and len(prog.layers) == 48 and prog.layers[0].tokens == 64
    assert [p.name for p in tmp_path.iterdir()] == ["q.msp"]


def test_toml_target_is_relative_to_the_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "out").mkdir()
    toml = tmp_path / "targets" / "t.toml"
    toml.write_text(
        'name = "two"\ntopology = "ring"\nnum_dies = 2\n[dram]\ngbps_per_channel = 25.6\n'
    )
    out = tmp_path / "out" / "p.msp"
    code, _, err = _moec(capsys, "compile", TINY, "--target", str(toml), "-o", str(out))
    assert code == 0, err
    prog = load_program(str(out))
    assert prog.target is not None and prog.target.spec == "../targets/t.toml"
    assert len(prog.streams) == 2


def test_set_overrides_and_strategy_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.msp"
    code, _, err = _moec(
        capsys, "compile", TINY, "--set", "sram_bytes_per_die=20000", "--set", "d2d_gbps=100",
        "--strategy", "ep{placement=blocks,slots=2}", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    prog = load_program(str(out))
    assert prog.target is not None
    assert prog.target.overrides == (("d2d_gbps", 100), ("sram_bytes_per_die", 20000))
    assert prog.slot_pool(0).count == 2
    assert prog.policy("moe0").params["placement"] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_routing_trace_sets_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = synth_zipf(2, 8, 2, 16, num_dies=4, model="tiny", layer_names=["moe0", "moe1"])
    save_trace(trace, tmp_path / "t.json")
    out = tmp_path / "p.msp"
    code, _, err = _moec(
        capsys, "compile", TINY, "--routing", str(tmp_path / "t.json"), "-o", str(out)
    )
    assert code == 0, err
    assert {m.tokens for m in load_program(str(out)).layers} == {16}


def test_print_ir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _moec(capsys, "compile", TINY, "--print-ir", "-o", str(tmp_path / "p.msp"))
    assert code == 0
    assert out.startswith('module "tiny_moe" {') and "= moe(" in out


def _error_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    bad_trace = synth_zipf(2, 16, 4, 8, num_dies=4, model="other", layer_names=["a", "b"])
    save_trace(bad_trace, tmp_path / "bad.json")
    return {
        "unknown target": (["--target", "fsedp-9x9"], "unknown target 'fsedp-9x9'"),
        "trace mismatch": (
            ["--routing", str(tmp_path / "bad.json")],
            "model layer has 8 experts top-2, trace has 16 experts top-4",
        ),
        "sram": (["--set", "sram_bytes_per_die=1000"], "does not fit SRAM: die 0 needs 2784 bytes"),
        "unknown strategy": (["--strategy", "zigzag"], "unknown strategy 'zigzag'"),
        "bad pass": (["--passes", "no-such-pass"], "unknown pass 'no-such-pass'"),
        "bad override": (["--set", "warp_speed=9"], "unknown target override 'warp_speed'"),
    }


@pytest.mark.parametrize(
    "case",
    ["unknown target", "trace mismatch", "sram", "unknown strategy", "bad pass", "bad override"],
)
def test_errors_are_one_line_and_write_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, message = _error_cases(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "prog.msp"
    code, stdout, err = _moec(capsys, "compile", TINY, "-o", str(out), *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moec: error: ") and message in lines[0], err
    assert not out.exists()
    assert list(out_dir.iterdir()) == []  # no companion, no temporaries


def test_bad_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    out = tmp_path / "out.msp"
    code, _, err = _moec(capsys, "compile", str(junk), "-o", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "junk.onnx" in err
    code, _, err = _moec(capsys, "compile", "no-such-model", "-o", str(out))
    assert code == 2 and "no such file or model name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_passes_reach_the_runtime_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.msp"
    code, _, err = _moec(
        capsys, "compile", TINY, "--passes", "annotate-importance", "--debug", "-o", str(out)
    )
    assert code == 0, err
    policy = load_program(str(out)).policy("moe0")
    assert policy is not None and len(policy.annotations["importance"]) == 8
    assert sum(policy.annotations["gate_mass"]) == pytest.approx(1.0, abs=1e-4)
