"""moec's model builders: `moec models list/build`, committed files, shape-only presets."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from moec.compiler.cli.main import main
from moec.models.catalog import catalog

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_list_names_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    names = [r[0] for r in rows if r[1] in ("tiny", "preset")]
    assert sorted(names) == sorted(catalog())
    assert {r[1] for r in rows} == {"tiny", "preset", "file", "group"}
    assert "deepseek-v3" in names and "tiny_moe" in names


@pytest.mark.parametrize("name", ["tiny_moe", "tiny_moe_decomposed"])
def test_committed_files_are_what_the_builder_writes(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.onnx"
    assert main(["models", "build", name, "-o", str(out)]) == 0
    committed = MODELS / f"{name}.onnx"
    assert committed.stat().st_size < 1_000_000
    assert out.read_bytes() == committed.read_bytes()


def test_seed_changes_weights_not_structure(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert main(["models", "build", "tiny_moe", "-o", str(a), "--seed", "1"]) == 0
    assert main(["models", "build", "tiny_moe", "-o", str(b), "--seed", "2"]) == 0
    ma, mb = onnx.load(a), onnx.load(b)
    assert [n.op_type for n in ma.graph.node] == [n.op_type for n in mb.graph.node]
    assert a.read_bytes() != b.read_bytes()


def test_unknown_model_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "build", "gpt-5", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moec: error: unknown model 'gpt-5' (expected one of: deepseek-moe-16b,")
    assert not (tmp_path / "x.onnx").exists()


def test_unwritable_output_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing_dir" / "x.onnx"
    assert main(["models", "build", "tiny_moe", "-o", str(target)]) == 2
    assert "no such folder for the output" in capsys.readouterr().err
    assert not target.exists()


@pytest.mark.parametrize("name", sorted(n for n, e in catalog().items() if e.kind == "preset"))
def test_presets_are_small_valid_and_shape_only(name: str) -> None:
    model = catalog()[name].build(0)
    assert len(model.SerializeToString()) < 1_000_000
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["moec.shape_only"] == "1" and meta["moec.preset"] == name
    big = [t for t in model.graph.initializer if len(t.dims) >= 2]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data for t in big)
