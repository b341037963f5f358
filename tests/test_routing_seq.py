"""Multi-iteration routing: drifting synthetic sequences, version-2 files, LM decode routing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moec.ir.errors import TraceError
from moec.ir.routing import load_trace, save_trace
from moec.ir.routing_seq import (
    RoutingSequence,
    load_sequence,
    save_sequence,
    spec_sequence,
    synth_sequence,
)
from moec.ir.routing_synth import parse_routing_spec, synth_layers

ROOT = Path(__file__).resolve().parents[1]


def _same(a: RoutingSequence, b: RoutingSequence) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.ids, y.ids) and np.array_equal(x.gates, y.gates)
        and np.array_equal(x.home_die, y.home_die)
        for s, t in zip(a, b, strict=True) for x, y in zip(s.layers, t.layers, strict=True)
    )  # fmt: skip


def test_iteration_zero_is_synth_layers_and_prefixes_are_stable() -> None:
    seq = synth_sequence([(16, 2), (8, 1)], 32, 6, drift=0.3, burst=0.2, seed=3)
    one = synth_layers([(16, 2), (8, 1)], 32, seed=3)
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(seq[0].layers, one.layers, strict=True))
    short = synth_sequence([(16, 2), (8, 1)], 32, 3, drift=0.3, burst=0.2, seed=3)
    assert _same(seq.head(3), short)
    assert _same(seq, synth_sequence([(16, 2), (8, 1)], 32, 6, drift=0.3, burst=0.2, seed=3))


def test_drift_moves_popularity_and_zero_drift_does_not() -> None:
    def loads(drift: float) -> np.ndarray:
        seq = synth_sequence([(16, 2)], 2048, 40, drift=drift, seed=0)
        return np.array([t.layers[0].expert_load() for t in seq], dtype=np.float64)

    def change(load: np.ndarray) -> float:  # total-variation distance, first vs last iteration
        p = load / load.sum(axis=1, keepdims=True)
        return float(np.abs(p[0] - p[-1]).sum() / 2)

    assert change(loads(0.0)) < 0.06  # sampling noise only
    assert change(loads(0.3)) > 0.2


def test_bursts_make_hot_iterations() -> None:
    calm = synth_sequence([(32, 1)], 512, 30, zipf=0.0, seed=1)
    bursty = synth_sequence([(32, 1)], 512, 30, zipf=0.0, burst=0.5, burst_factor=30.0, seed=1)
    peak = [max(int(t.layers[0].expert_load().max()) for t in s) for s in (calm, bursty)]
    assert peak[1] > 3 * peak[0]


@pytest.mark.parametrize("ext", ["json", "npz"])
def test_files_round_trip_and_are_deterministic(tmp_path: Path, ext: str) -> None:
    seq = synth_sequence([(16, 2), (8, 2)], 8, 4, drift=0.2, seed=1)
    a, b = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
    save_sequence(seq, a)
    save_sequence(seq, b)
    assert a.read_bytes() == b.read_bytes()
    assert _same(load_sequence(a), seq)


def test_version_1_files_are_one_iteration(tmp_path: Path) -> None:
    t = synth_layers([(8, 2)], 4, seed=0)
    save_trace(t, tmp_path / "t.json")
    seq = load_sequence(tmp_path / "t.json")
    assert len(seq) == 1 and np.array_equal(seq[0].layers[0].ids, t.layers[0].ids)


def test_bad_sequence_files_are_located_errors(tmp_path: Path) -> None:
    seq = synth_sequence([(8, 2)], 4, 2, seed=0)
    path = tmp_path / "s.json"
    save_sequence(seq, path)
    doc = json.loads(path.read_text())
    doc["steps"][1]["layers"][0]["ids"][2] = [1, 9]
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceError, match=r"steps\[1\]: layers\[0\] \(layer0\): ids\[2\]\[1\]"):
        load_sequence(path)
    doc["iterations"] = 3
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceError, match="steps: expected a list of 3 iterations, found 2"):
        load_sequence(path)


def test_routing_spec_drift_and_burst() -> None:
    spec = parse_routing_spec("synth:zipf=1.2,seed=4,drift=0.1,burst=0.05")
    assert not isinstance(spec, str) and (spec.drift, spec.burst) == (0.1, 0.05)
    seq = spec_sequence(spec, [(8, 2)], 16, 4, 3)
    assert len(seq) == 3 and seq.provenance["drift"] == 0.1
    with pytest.raises(TraceError, match="burst: expected a probability"):
        parse_routing_spec("synth:burst=2")


def test_lm_decode_routing(tmp_path: Path) -> None:
    from moec.decode import decode_sequence

    seq = decode_sequence(str(ROOT / "models/tiny_moe_lm.onnx"), batch=4, steps=6, num_dies=2)
    assert len(seq) == 6 and seq.tokens == 4 and seq.num_dies == 2
    assert seq.provenance["source"] == "decode"
    assert [lr.name for lr in seq[0].layers] == ["moe0", "moe1"]
    # decoding moves on: the routing of later steps is not the first step's
    assert any(not np.array_equal(seq[0].layers[0].ids, t.layers[0].ids) for t in seq)
    out = tmp_path / "d.json"
    r = subprocess.run(
        [sys.executable, "-m", "moec.compiler.cli.main", "trace", "dump",
         str(ROOT / "models/tiny_moe_lm.onnx"), "--decode", "6", "--batch", "4", "--dies", "2",
         "-o", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _same(load_sequence(out), seq)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids_0_0": np.zeros(2)}, "NPZ trace has no 'meta' array"),
        ({"meta": np.array([1, 2])}, "meta: expected one JSON text"),
        ({"meta": np.array("{")}, "meta: invalid JSON"),
        ({"meta": np.array('{"layers": 1}')}, "expected an object with a 'layers' list"),
    ],
)
def test_bad_npz_headers_are_located_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    for load in (load_sequence, load_trace):
        with pytest.raises(TraceError, match=message) as err:
            load(path)
        assert str(path) in str(err.value.where)
