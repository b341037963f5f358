"""``moec sweep``: spec errors, points, journaling, resume after SIGKILL, plots, Ray."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from moec.compiler.cli.main import main
from moec.sweep.plot import pareto_front
from moec.sweep.spec import SweepSpecError, load_spec, parse_spec
from moec.sweep.store import flatten_metrics, with_speedups

FIXED = """\
[fixed]
models = "tiny_moe"
targets = "fsedp-2x2"
strategies = "ep"
tokens = 16
"""

TINY = """\
[sweep]
routing = "synth:zipf=1.0,seed=0"

[fixed]
models = "tiny_moe"
targets = "fsedp-2x2"

[axes]
strategies = ["ep", "fsedp-paired"]
tokens = [16]
sram_mib_per_die = [0.001, 16]
"""


def _rows(folder: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(folder / "sweep.sqlite")
    try:
        cur = db.execute("SELECT * FROM points ORDER BY point_index")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]
    finally:
        db.close()


# --- the spec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (FIXED + "[axes]\nd2d_gbs = [128, 256]\n", "spec.toml:7:1: [axes] d2d_gbs: unknown axis"),
        (
            FIXED + '[axes]\nd2d_gbps = [128, "fast"]\n',
            "spec.toml:7:1: [axes] d2d_gbps: expected a number, found 'fast'",
        ),
        (
            FIXED + "[axes]\nd2d_gbps = []\n",
            "spec.toml:7:1: [axes] d2d_gbps: expected at least one value, found an empty list",
        ),
        (
            FIXED + "[axes]\nd2d_gbps = 128\n",
            "spec.toml:7:1: [axes] d2d_gbps: expected a list of values, found 128",
        ),
        (
            FIXED + "[axes]\ndies_x = [2, 2.5]\n",
            "spec.toml:7:1: [axes] dies_x: expected an integer, found 2.5",
        ),
        (
            FIXED + "[axes]\n  tokens = [16, true]\n",
            "spec.toml:7:3: [axes] tokens: expected integers >= 1, found true",
        ),
        (
            FIXED.replace("tiny_moe", "tiny_mo"),
            "spec.toml:2:1: [fixed] models: expected a .onnx file or one of",
        ),  # fmt: skip
        (FIXED.replace('"ep"', '"epp"'), "spec.toml:4:1: [fixed] strategies: expected one of ep,"),
        (
            FIXED.replace("fsedp-2x2", "fsedp-9x9"),
            "spec.toml:3:1: [fixed] targets: unknown target 'fsedp-9x9'",
        ),  # fmt: skip
        (
            FIXED.replace("models", "model"),
            "spec.toml:2:1: [fixed] model: unknown axis (did you mean 'models'?)",
        ),  # fmt: skip
        (
            FIXED.replace("tokens = 16\n", ""),
            "spec.toml: tokens: expected in [axes] (a list) or [fixed]",
        ),  # fmt: skip
        (
            FIXED + "[axes]\ntokens = [16]\n",
            "spec.toml:5:1: [fixed] tokens: given in both [axes] and [fixed]",
        ),  # fmt: skip
        (
            FIXED.replace('"ep"', '"ep{slot=2}"'),
            "spec.toml:4:1: [fixed] strategies: ep{slot=2}: expected options among",
        ),
        (
            FIXED.replace('"ep"', '"ep{slots=0}"'),
            "spec.toml:4:1: [fixed] strategies: ep{slots=0}: option slots: expected an integer >= 1",
        ),
        (
            "[sweep]\nlayers = 0\n" + FIXED,
            "spec.toml:2:1: [sweep] layers: expected an integer >= 1",
        ),
        (
            "[sweep]\naccuracy = 1\n" + FIXED,
            'spec.toml:2:1: [sweep] accuracy: expected true, false or "auto", found 1',
        ),  # fmt: skip
        ('[sweep]\nroutng = "x"\n' + FIXED, "spec.toml:2:1: [sweep] routng: unknown key"),
        ("[fixed\nmodels = 1\n", "spec.toml:1:7: invalid TOML: "),
        (
            FIXED + '[axes]\npasses = ["none", "no-such-pass"]\n',
            "spec.toml:7:1: [axes] passes: unknown pass 'no-such-pass'",
        ),  # fmt: skip
    ],
)
def test_spec_error_is_one_located_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    expected: str,
) -> None:
    (tmp_path / "spec.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "spec.toml", "-o", "out", "--local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moec: error: {expected}"), err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_spec_points_order_ids_and_hash() -> None:
    text = FIXED.replace("tokens = 16\n", "") + "[axes]\nd2d_gbps = [128, 256]\ntokens = [16, 64]\n"
    spec = parse_spec(text, "s.toml")
    assert spec.columns() == ["model", "target", "tokens", "passes", "strategy", "d2d_gbps"]
    points = list(spec.points())
    assert [(p.get("tokens"), p.get("d2d_gbps")) for p in points] == [
        (16, 128), (16, 256), (64, 128), (64, 256),
    ]  # fmt: skip
    assert points[1].overrides == {"d2d_gbps": 256}
    assert len({p.point_id for p in points}) == 4
    # The same point in a larger spec has the same id (so extending a sweep reuses it) and the
    # axis order in the file does not change the points.
    bigger = parse_spec(text.replace("[128, 256]", "[128, 256, 512]"), "s.toml")
    assert {p.point_id for p in points} < {p.point_id for p in bigger.points()}
    assert spec.spec_hash != bigger.spec_hash
    moved = "[axes]\ntokens = [16, 64]\nd2d_gbps = [128, 256]\n"
    assert (
        parse_spec(FIXED.replace("tokens = 16\n", "") + moved, "s.toml").spec_hash == spec.spec_hash
    )
    # A different fixed routing is a different point.
    other = parse_spec('[sweep]\nrouting = "synth:zipf=1.2,seed=0"\n' + text, "s.toml")
    assert not {p.point_id for p in points} & {p.point_id for p in other.points()}


def test_spec_error_type_carries_location() -> None:
    with pytest.raises(SweepSpecError) as info:
        parse_spec(FIXED + "[axes]\nsram_mib_per_die = [16, -1]\n", "x.toml")
    assert str(info.value).startswith("x.toml:7:1: [axes] sram_mib_per_die: expected a finite")


# --- running, journaling, resuming ---------------------------------------------------------------


def test_tiny_local_sweep_records_errors_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "res"
    assert main(["sweep", str(tmp_path / "tiny.toml"), "-o", str(out), "--local"]) == 0
    first = capsys.readouterr().out
    assert "4 points, 0 already stored, ran 4 (2 ok, 2 error)" in first
    rows = _rows(out)
    assert [(r["strategy"], r["sram_mib_per_die"], r["status"]) for r in rows] == [
        ("ep", 0.001, "error"), ("ep", 16, "ok"),
        ("fsedp-paired", 0.001, "error"), ("fsedp-paired", 16, "ok"),
    ]  # fmt: skip
    bad, good = rows[0], rows[1]
    assert "does not fit SRAM" in bad["error"] and bad["latency_s"] is None
    assert good["error"] is None and good["latency_s"] > 0
    assert 0 < good["utilization_compute"] <= 1 and good["peak_sram_bytes_max"] > 0
    assert good["model"] == "tiny_moe" and good["tokens"] == 16 and good["passes"] == ""
    assert len({r["spec_hash"] for r in rows}) == 1 and rows[0]["moec_version"]
    # Again: nothing to run, nothing changed.
    assert main(["sweep", str(tmp_path / "tiny.toml"), "-o", str(out), "--local"]) == 0
    assert "4 points, 4 already stored, ran 0" in capsys.readouterr().out
    assert _rows(out) == rows
    # --retry-errors runs the failed points again (and they fail the same way).
    assert main(["sweep", str(tmp_path / "tiny.toml"), "-o", str(out), "--local", "--retry-errors"]) == 0  # fmt: skip
    assert "ran 2 (0 ok, 2 error)" in capsys.readouterr().out


def test_extending_a_spec_runs_only_the_new_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.toml").write_text(TINY.replace("[0.001, 16]", "[16]"))
    (tmp_path / "b.toml").write_text(TINY.replace("[0.001, 16]", "[16, 32]"))
    out = str(tmp_path / "r")
    assert main(["sweep", str(tmp_path / "a.toml"), "-o", out, "--local"]) == 0
    first = {r["point_id"]: r for r in _rows(tmp_path / "r")}
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "b.toml"), "-o", out, "--local"]) == 0
    assert "4 points, 2 already stored, ran 2 (2 ok, 0 error)" in capsys.readouterr().out
    rows = _rows(tmp_path / "r")
    assert len(rows) == 4 and all(first[r["point_id"]] == r for r in rows if r["point_id"] in first)
    assert {r["spec_hash"] for r in rows if r["sram_mib_per_die"] == 32} != {
        r["spec_hash"] for r in first.values()
    }


def _task(strategy: str) -> Any:
    """One tiny_moe point on fsedp-2x2 at 16 tokens."""
    from moec.sweep.runner import PointTask

    return PointTask(
        point_id="x", index=0, model="tiny_moe", target="fsedp-2x2", tokens=16,
        strategy=strategy, passes="", overrides=(), routing="synth:zipf=1.0,seed=0",
        layers=1, calibration="sample",
    )  # fmt: skip


def test_a_point_that_cannot_run_is_an_error_result_not_an_exception() -> None:
    from moec.sweep.runner import evaluate_point

    result = evaluate_point(_task("ep{slots=0}"))
    assert result["status"] == "error" and result["metrics"] == {}
    assert "slots" in result["error"] and "\n" not in result["error"]


def test_a_point_past_sram_is_an_error_unless_overflow_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Phi-3.5-MoE EP at 256 tokens, slots sized by the uniform-routing estimate, passes 16 MiB
    # at run time with the lowering's own count (test_bench_failures.py; the default count is
    # measured among those that do not overfill a die, moec/expert_slices.py)
    import dataclasses

    from sram_cases import under_reserve

    from moec.sweep.runner import evaluate_point

    under_reserve(monkeypatch)
    task = dataclasses.replace(_task("ep{slices=fit}"), model="phi3.5-moe", tokens=256)
    result = evaluate_point(task)
    assert result["status"] == "error" and "does not fit SRAM: die" in result["error"]
    allowed = evaluate_point(dataclasses.replace(task, allow_overflow=True))
    assert allowed["status"] == "ok" and allowed["metrics"]["sram_over_bytes"] > 0


def test_without_ray_the_sweep_runs_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import moec.sweep.runner as runner

    monkeypatch.setattr(runner, "ray_available", lambda: False)
    (tmp_path / "tiny.toml").write_text(TINY.replace("[0.001, 16]", "[16]"))
    assert main(["sweep", str(tmp_path / "tiny.toml"), "-o", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    assert "Ray is not installed" in cap.err and "[local]" in cap.out
    assert main(["sweep", str(tmp_path / "tiny.toml"), "-o", "r", "--address", "x:1"]) == 2
    assert "--address needs Ray" in capsys.readouterr().err


def test_parquet_export_matches_the_journal(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "tiny.toml").write_text(TINY)
    assert main(["sweep", str(tmp_path / "tiny.toml"), "-o", str(tmp_path / "r"), "--local"]) == 0
    table = pq.read_table(tmp_path / "r" / "sweep.parquet").to_pylist()
    rows = _rows(tmp_path / "r")
    assert [r["point_id"] for r in table] == [r["point_id"] for r in rows]
    assert [r["latency_s"] for r in table] == [r["latency_s"] for r in rows]
    # speedup over ep is derived across points: fsedp-paired at 16 MiB has an ep partner.
    ok = {r["strategy"]: r for r in table if r["status"] == "ok"}
    assert ok["ep"]["speedup_vs_ep"] == 1.0
    assert ok["fsedp-paired"]["speedup_vs_ep"] == pytest.approx(
        ok["ep"]["latency_s"] / ok["fsedp-paired"]["latency_s"], rel=1e-5
    )


KILL_SPEC = """\
[sweep]
routing = "synth:zipf=1.0,seed=0"

[fixed]
models = "qwen3-30b-a3b"
targets = "fsedp-2x2"
strategies = "fsedp-paired"
tokens = 16

[axes]
d2d_gbps = [128, 256, 384, 512, 768, 1024]
ddr_gbps_per_die = [8, 16, 32, 64]
"""


def test_sigkill_mid_run_then_rerun_stores_every_point_exactly_once(tmp_path: Path) -> None:
    spec, out = tmp_path / "kill.toml", tmp_path / "res"
    spec.write_text(KILL_SPEC)
    cmd = [sys.executable, "-m", "moec.compiler.cli.main", "sweep", str(spec), "-o", str(out), "--local"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    stored = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "sweep.sqlite").exists():
                try:
                    stored = len(_rows(out))
                except sqlite3.OperationalError:  # the table is being created
                    stored = 0
                if stored >= 4:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = _rows(out)
    assert 4 <= len(before) < 24
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"24 points, {len(before)} already stored, ran {24 - len(before)}" in done.stdout
    after = _rows(out)
    assert len(after) == 24 and len({r["point_id"] for r in after}) == 24
    assert sorted((r["d2d_gbps"], r["ddr_gbps_per_die"]) for r in after) == sorted(
        (d, m) for d in (128, 256, 384, 512, 768, 1024) for m in (8, 16, 32, 64)
    )
    by_id = {r["point_id"]: r for r in after}
    assert all(by_id[r["point_id"]] == r for r in before)
    assert [r["error"] for r in after if r["status"] != "ok"] == []


# --- plots and helpers ---------------------------------------------------------------------------


def test_flatten_and_speedups() -> None:
    row = {"model": "m", "tokens": 1, "latency_s": 2.0, "utilization": {"dram": 0.5, "compute": 0.25},
           "layers_s": [1.0, 1.0], "flag": True, "overrides": {"d2d_gbps": 1}}  # fmt: skip
    assert flatten_metrics(row) == {
        "flag": 1, "latency_s": 2.0, "layers_s": "[1.0, 1.0]",
        "utilization_compute": 0.25, "utilization_dram": 0.5,
    }  # fmt: skip
    rows = [
        {"strategy": "ep", "x": 1, "status": "ok", "latency_s": 4.0},
        {"strategy": "f", "x": 1, "status": "ok", "latency_s": 2.0},
        {"strategy": "f", "x": 2, "status": "ok", "latency_s": 2.0},
    ]
    assert [r["speedup_vs_ep"] for r in with_speedups(rows, ["strategy", "x"])] == [1.0, 2.0, None]


def test_pareto_front() -> None:
    pts = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (4.0, 1.0), (2.0, 2.0)]
    assert pareto_front(pts, [False, False]) == [0, 1, 3]
    assert pareto_front(pts, [True, True]) == [0, 2, 3]
    assert pareto_front([(1.0, 1.0, 0.5), (1.0, 1.0, 0.9)], [False, False, True]) == [1]


def test_plot_heatmap_and_pareto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    spec = TINY.replace("[0.001, 16]", "[0.001, 16]\nd2d_gbps = [128, 512]")
    (tmp_path / "s.toml").write_text(spec)
    res = str(tmp_path / "r")
    assert main(["sweep", str(tmp_path / "s.toml"), "-o", res, "--local"]) == 0
    png = tmp_path / "h.png"
    args = ["sweep", "plot", res, "--x", "d2d_gbps", "--y", "sram_mib_per_die", "-o", str(png)]
    assert main([*args, "--facet", "strategy", "--contour", "0.01"]) == 0
    assert "(heatmap)" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without a facet the two strategies would share a cell: a one-line error naming the axis.
    assert main(args) == 2
    assert "axis strategy has 2 values (ep, fsedp-paired)" in capsys.readouterr().err
    assert main([*args, "--where", "strategy=ep"]) == 0
    capsys.readouterr()
    pareto = tmp_path / "p.png"
    argv = ["sweep", "plot", res, "--x", "latency_s", "--y", "peak_sram_bytes_max",
            "--color", "strategy", "-o", str(pareto)]  # fmt: skip
    assert main(argv) == 0
    assert "(pareto)" in capsys.readouterr().out and pareto.exists()
    assert main(["sweep", "plot", res, "--x", "nope", "--y", "latency_s", "-o", str(pareto)]) == 2
    assert "--x nope: unknown column" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_sweep_equals_local_sweep(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    (tmp_path / "s.toml").write_text(TINY)
    for mode, extra in (("local", ["--local"]), ("ray", ["--workers", "2"])):
        assert main(["sweep", str(tmp_path / "s.toml"), "-o", str(tmp_path / mode), *extra]) == 0

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    assert strip(_rows(tmp_path / "ray")) == strip(_rows(tmp_path / "local"))


def test_unreachable_cluster_fails_fast_and_leaves_no_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--address` with nothing listening is a one-line error within the connect timeout, and
    the results folder gets no journal (the journal opens only once the engine is up)."""
    import moec.sweep.runner as runner

    start = time.perf_counter()
    with pytest.raises(runner.SweepRunError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        runner._probe("127.0.0.1:1", 5.0)
    assert time.perf_counter() - start < 5.0
    runner._probe("auto", 5.0)  # not host:port: left to Ray
    (tmp_path / "tiny.toml").write_text(TINY.replace("[0.001, 16]", "[16]"))
    out = tmp_path / "r"
    if not runner.ray_available():  # the same path with Ray's start replaced by the probe
        monkeypatch.setattr(runner, "ray_available", lambda: True)
        monkeypatch.setattr(
            runner, "start_ray", lambda address, workers, timeout: runner._probe(address, timeout)
        )
    args = ["sweep", str(tmp_path / "tiny.toml"), "-o", str(out), "--address", "127.0.0.1:1"]
    assert main([*args, "--connect-timeout", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moec: error: ") and "cannot reach" in err and "\n" not in err
    assert not (out / "sweep.sqlite").exists()
    assert main([*args, "--connect-timeout", "0"]) == 2
    assert "--connect-timeout" in capsys.readouterr().err


def test_rows_record_the_version_of_the_process_that_ran_them() -> None:
    from moec import __version__
    from moec.sweep.runner import evaluate_point, result_row
    from moec.sweep.spec import parse_spec

    result = evaluate_point(_task("ep"))
    assert result["status"] == "ok" and result["moec_version"] == __version__
    spec = parse_spec(TINY, "tiny.toml")
    point = next(iter(spec.points()))
    assert result_row(spec, point, {**result, "moec_version": "9.9.9"})["moec_version"] == "9.9.9"


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parent.parent / "examples" / "sweeps").glob("*.toml"))
)
def test_every_shipped_sweep_spec_parses(path: Path) -> None:
    spec = load_spec(str(path))
    assert spec.size() > 0 and spec.name == path.stem
