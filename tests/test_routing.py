"""Routing traces: synthesis, file round trips, determinism, validation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moec.compiler.cli.main import main
from moec.ir.errors import TraceError
from moec.ir.routing import (
    RoutingTrace,
    assign_home_dies,
    layer_stats,
    load_trace,
    save_trace,
    validate,
)
from moec.ir.routing_synth import SynthSpec, _top_k, gumbel_top_k, parse_routing_spec, synth_zipf


def _same(a: RoutingTrace, b: RoutingTrace) -> None:
    assert (a.model, a.num_dies, a.provenance, len(a.layers)) == (
        b.model, b.num_dies, b.provenance, len(b.layers),
    )  # fmt: skip
    for x, y in zip(a.layers, b.layers, strict=True):
        assert (x.name, x.num_experts, x.top_k) == (y.name, y.num_experts, y.top_k)
        assert x.ids.dtype == np.int64 and y.gates.dtype == np.float32
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.gates, y.gates)
        np.testing.assert_array_equal(x.home_die, y.home_die)


def test_synth_shapes_and_invariants() -> None:
    t = synth_zipf(3, 16, 4, 50, zipf=1.2, seed=7, num_dies=4)
    assert t.tokens == 50 and t.num_experts == 16 and t.top_k == 4
    for lr in t.layers:
        assert lr.ids.shape == (50, 4) and lr.gates.shape == (50, 4)
        assert all(len(set(row)) == 4 for row in lr.ids.tolist())  # distinct experts
        assert lr.ids.min() >= 0 and lr.ids.max() < 16
        np.testing.assert_allclose(lr.gates.sum(axis=1), 1.0, rtol=1e-5)
        assert np.all(np.diff(lr.gates, axis=1) <= 0)  # column 0 is the top-1
    validate(t, [(16, 4)] * 3, tokens=50, num_dies=4)


def test_synth_is_seeded_and_layers_independent_of_count() -> None:
    a = synth_zipf(4, 32, 2, 64, seed=3)
    _same(a, synth_zipf(4, 32, 2, 64, seed=3))
    b = synth_zipf(2, 32, 2, 64, seed=3)
    np.testing.assert_array_equal(a.layers[1].ids, b.layers[1].ids)
    assert not np.array_equal(a.layers[0].ids, synth_zipf(1, 32, 2, 64, seed=4).layers[0].ids)


def test_zipf_skew_is_measurable() -> None:
    uniform = layer_stats(synth_zipf(1, 64, 2, 4096, zipf=0.0, seed=0).layers[0])
    skewed = layer_stats(synth_zipf(1, 64, 2, 4096, zipf=1.2, seed=0).layers[0])
    assert uniform["entropy_normalized"] > 0.99 and uniform["max_over_mean"] < 1.3
    assert skewed["entropy_normalized"] < 0.85 and skewed["max_over_mean"] > 5
    # Without per-layer permutation expert 0 is the hottest; with it, layers differ.
    same = synth_zipf(2, 64, 2, 2048, zipf=1.0, seed=1, per_layer_permutation=False)
    assert [int(np.argmax(lr.expert_load())) for lr in same.layers] == [0, 0]
    perm = synth_zipf(2, 64, 2, 2048, zipf=1.0, seed=1)
    hot = [int(np.argmax(lr.expert_load())) for lr in perm.layers]
    assert hot[0] != hot[1]


def test_home_dies() -> None:
    assert assign_home_dies(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert assign_home_dies(6, 4, "round_robin").tolist() == [0, 1, 2, 3, 0, 1]
    assert assign_home_dies(5, 2).tolist() == [0, 0, 0, 1, 1]
    t = synth_zipf(1, 8, 2, 16, num_dies=4).rehome(16)
    assert t.num_dies == 16 and t.layers[0].home_die.tolist() == list(range(16))
    with pytest.raises(TraceError, match="unknown home-die scheme 'x'"):
        assign_home_dies(4, 2, "x")


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_round_trip_and_byte_determinism(tmp_path: Path, suffix: str) -> None:
    t = synth_zipf(3, 16, 2, 33, zipf=1.0, seed=5, num_dies=3, model="tiny")
    p1, p2 = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    save_trace(t, p1)
    save_trace(synth_zipf(3, 16, 2, 33, zipf=1.0, seed=5, num_dies=3, model="tiny"), p2)
    assert p1.read_bytes() == p2.read_bytes()
    back = load_trace(p1)
    _same(t, back)
    p3 = tmp_path / f"c{suffix}"
    save_trace(back, p3)
    assert p3.read_bytes() == p1.read_bytes()


def test_json_is_documented_shape(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    save_trace(synth_zipf(1, 8, 2, 4, seed=0, num_dies=2), p)
    doc = json.loads(p.read_text())
    assert doc["format"] == "moec-routing" and doc["version"] == 1
    assert (doc["num_experts"], doc["top_k"], doc["tokens"], doc["num_dies"]) == (8, 2, 4, 2)
    assert doc["provenance"]["seed"] == 0 and doc["provenance"]["zipf"] == 1.0
    layer = doc["layers"][0]
    assert (
        len(layer["ids"]) == 4 and len(layer["gates"][0]) == 2 and layer["home_die"] == [0, 0, 1, 1]
    )


def test_validate_mismatches() -> None:
    t = synth_zipf(2, 16, 2, 8)
    with pytest.raises(TraceError, match=r"trace has 2 MoE layers, the model has 3"):
        validate(t, [(16, 2)] * 3)
    with pytest.raises(
        TraceError, match=r"layers\[1\] \(layer1\): model layer has 32 experts top-2, trace has 16"
    ):
        validate(t, [(16, 2), (32, 2)])
    with pytest.raises(TraceError, match="trace has 8 tokens per layer, expected 16"):
        validate(t, [(16, 2)] * 2, tokens=16)
    with pytest.raises(TraceError, match=r"home_die\[6\] = 3, the target has 3 dies"):
        validate(t, [(16, 2)] * 2, num_dies=3)
    validate(t.head(1), [(16, 2)])


def _write(tmp_path: Path, doc: object, name: str = "t.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _doc() -> dict:
    return {
        "format": "moec-routing", "version": 1, "model": "m", "num_dies": 2,
        "layers": [{
            "name": "l0", "num_experts": 4, "top_k": 2, "home_die": [0, 1],
            "ids": [[0, 1], [2, 3]], "gates": [[0.6, 0.4], [0.5, 0.5]],
        }],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["layers"][0]["ids"].__setitem__(1, [2, 2]),
            r"ids\[1\]: expected distinct experts",
        ),
        (
            lambda d: d["layers"][0]["ids"].__setitem__(0, [0, 4]),
            r"ids\[0\]\[1\]: expected an expert id in 0..3, found 4",
        ),
        (
            lambda d: d["layers"][0]["ids"].__setitem__(0, [0]),
            r"layers\[0\].ids: expected a rectangular array",
        ),
        (
            lambda d: d["layers"][0]["gates"].__setitem__(0, [-1, 0.4]),
            r"gates\[0\]\[0\]: expected a finite weight >= 0",
        ),
        (
            lambda d: d["layers"][0].__setitem__("home_die", [0, 2]),
            r"home_die\[1\]: expected a die in 0..1, found 2",
        ),
        (
            lambda d: d["layers"][0].__setitem__("top_k", 3),
            r"ids: expected shape \[tokens, 3\], found \[2, 2\]",
        ),
        (lambda d: d["layers"][0].pop("gates"), r"layers\[0\].gates: missing"),
        (
            lambda d: d.__setitem__("format", "other"),
            r"format: expected 'moec-routing', found 'other'",
        ),
        (lambda d: d.__setitem__("num_dies", "2"), r"num_dies: expected int, found str"),
        (lambda d: d.__setitem__("tokens", 3), r"tokens: header says 3, layers have 2"),
    ],
)
def test_load_errors_are_located(tmp_path: Path, edit: object, message: str) -> None:
    doc = _doc()
    edit(doc)  # type: ignore[operator]
    p = _write(tmp_path, doc)
    with pytest.raises(TraceError, match=message) as err:
        load_trace(p)
    assert str(err.value).startswith(str(p)) and "\n" not in str(err.value)


def test_load_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    p = _write(tmp_path, '{\n  "format": "moec-routing",\n  "version": 1,,\n}')
    with pytest.raises(TraceError, match=r"t\.json:3:16: invalid JSON"):
        load_trace(p)
    with pytest.raises(TraceError, match="routing trace not found"):
        load_trace(tmp_path / "missing.json")
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TraceError, match="not a readable NPZ trace"):
        load_trace(bad)


def test_save_refuses_bad_suffix_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="ending in .json or .npz"):
        save_trace(synth_zipf(1, 4, 1, 2), tmp_path / "t.txt")
    assert list(tmp_path.iterdir()) == []


def test_parse_routing_spec() -> None:
    assert parse_routing_spec("synth:zipf=1.0,seed=0") == SynthSpec(1.0, 0)
    assert parse_routing_spec("synth") == SynthSpec()
    assert parse_routing_spec("synth:seed=3,home=round_robin,permute=0") == SynthSpec(
        1.0, 3, "round_robin", False
    )
    assert parse_routing_spec("runs/trace.json") == "runs/trace.json"
    with pytest.raises(TraceError, match=r"zipf: expected a number >= 0, found 'x'"):
        parse_routing_spec("synth:zipf=x")
    with pytest.raises(TraceError, match=r"bad item 'alpha=1'"):
        parse_routing_spec("synth:alpha=1")
    t = SynthSpec(0.5, 2).make([(8, 2), (16, 4)], tokens=10, num_dies=2)
    assert [(lr.num_experts, lr.top_k) for lr in t.layers] == [(8, 2), (16, 4)]


def test_cli_synth_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    args = ["trace", "synth", "--experts", "16", "--top-k", "2", "--layers", "2", "--tokens", "32"]
    assert (
        main([*args, "--zipf", "1.1", "--seed", "4", "--target", "fsedp-3x3", "-o", str(out)]) == 0
    )
    t = load_trace(out)
    assert t.num_dies == 9 and t.tokens == 32 and t.provenance["zipf"] == 1.1
    capsys.readouterr()
    assert main(["trace", "stats", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["layers"]) == 2 and sum(doc["layers"][0]["load"]) == 64
    assert main(["trace", "stats", str(out)]) == 0
    assert "max/mean" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "stats", "missing.json"], "routing trace not found"),
        (["trace", "synth", "--experts", "4", "--top-k", "8", "--layers", "1", "--tokens", "4",
          "-o", "OUT"], "top_k=8 must be in 1..num_experts=4"),
        (["trace", "synth", "--experts", "4", "--top-k", "2", "--layers", "1", "--tokens", "0",
          "-o", "OUT"], "--tokens: expected an integer >= 1, found 0"),
        (["trace", "synth", "--experts", "4", "--top-k", "2", "--layers", "1", "--tokens", "4",
          "--target", "nope", "-o", "OUT"], "unknown target 'nope'"),
        (["trace", "synth", "--tokens", "4", "-o", "OUT"], "give --model"),
    ],
)  # fmt: skip
def test_cli_errors_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "t.json"
    argv = [str(out) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_docs_example_is_real_output() -> None:
    from moec.ir.routing import to_json

    text = (Path(__file__).resolve().parents[1] / "docs" / "routing.md").read_text()
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    t = synth_zipf(1, 8, 2, 4, num_dies=2, model="tiny", layer_names=["moe0"])
    assert block == to_json(t)


def test_cli_synth_from_onnx_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --model FILE.onnx path reads (num_experts, top_k) from the frontend's moe ops."""
    import types

    import moec.compiler.frontend as frontend

    def op(name: str, E: int, k: int) -> object:
        layer = types.SimpleNamespace(name=name, num_experts=E, top_k=k)
        return types.SimpleNamespace(attrs={"layer": layer}, layer=layer)

    module = types.SimpleNamespace(moe_ops=lambda: [op("moe0", 8, 2), op("moe1", 16, 4)])
    seen: list[str] = []

    def fake_load_module(path: str, *, load_weights: bool = True) -> tuple[object, None]:
        seen.append(path)
        assert not load_weights
        return module, None

    monkeypatch.setattr(frontend, "load_module", fake_load_module)
    out = tmp_path / "t.npz"
    argv = ["trace", "synth", "--model", "m/tiny.onnx", "--tokens", "8", "--dies", "2", "-o"]
    assert main([*argv, str(out)]) == 0
    t = load_trace(out)
    assert seen == ["m/tiny.onnx"] and t.model == "tiny"
    assert [(lr.name, lr.num_experts, lr.top_k) for lr in t.layers] == [
        ("moe0", 8, 2), ("moe1", 16, 4),
    ]  # fmt: skip
    validate(t, [(8, 2), (16, 4)], tokens=8, num_dies=2)


def test_cli_synth_from_model_name(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    assert main(["trace", "synth", "--model", "tiny_moe", "--tokens", "6", "-o", str(out)]) == 0
    t = load_trace(out)
    assert t.model == "tiny_moe" and [lr.name for lr in t.layers] == ["moe0", "moe1"]
    assert (t.num_experts, t.top_k, t.num_dies) == (8, 2, 4)


def test_cli_synth_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "synth", "--model", "gpt-9", "--tokens", "6", "-o", "x.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'gpt-9', expected a .onnx file or one of" in err


def test_synth_docstring_example() -> None:
    import doctest

    import moec.ir.routing_synth as routing_synth

    failed, attempted = doctest.testmod(routing_synth)
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize(("experts", "k"), [(16, 3), (256, 8), (5, 1), (5, 4), (5, 5)])
def test_top_k_is_the_stable_descending_sort_even_with_ties(experts: int, k: int) -> None:
    # small integer logits tie often, at the k-th place too (-0.0 and 0.0 are a tie)
    logits = np.random.default_rng(1).integers(0, 4, size=(500, experts)).astype(np.float64)
    logits[::7] *= -1
    logits[::11] = 0.0
    logits[::13, 0] = -0.0
    want = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    assert np.array_equal(_top_k(logits, k), want)


def test_gumbel_top_k_matches_a_full_sort_of_the_same_draws() -> None:
    log_p = -1.2 * np.log(np.arange(1.0, 65.0))
    ids, gates = gumbel_top_k(log_p, 300, 6, np.random.default_rng([7, 2]))
    logits = log_p[None, :] + np.random.default_rng([7, 2]).gumbel(size=(300, 64))
    want = np.argsort(-logits, axis=1, kind="stable")[:, :6]
    chosen = np.take_along_axis(logits, want, axis=1)
    z = np.exp(chosen - chosen[:, :1])
    assert np.array_equal(ids, want)
    assert np.array_equal(gates, (z / z.sum(axis=1, keepdims=True)).astype(np.float32))
