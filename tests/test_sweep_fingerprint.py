"""Sweep journals that cannot go stale: rows carry what computed them, and a resume reuses only
rows the current code and input files would write (``moec.sweep.fingerprint``)."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from moec.compiler.cli.main import main
from moec.sweep import fingerprint
from moec.sweep.fingerprint import code_fingerprint

SPEC = """\
[sweep]
routing = "synth:zipf=1.0,seed=0"

[fixed]
models = "tiny_moe"
targets = "TARGET"
tokens = 16

[axes]
strategies = ["ep", "fsedp-paired"]
"""
OTHER = "0123456789abcdef"


def _rows(folder: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(folder / "sweep.sqlite")
    try:
        cur = db.execute("SELECT * FROM points ORDER BY point_index")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]
    finally:
        db.close()


def _sql(folder: Path, statement: str) -> None:
    db = sqlite3.connect(folder / "sweep.sqlite")
    try:
        db.execute(statement)
        db.commit()
    finally:
        db.close()


def _numbers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the columns that say when and by what they were computed."""
    drop = {"elapsed_s", "fingerprint", "inputs_hash"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def _sweep(tmp_path: Path, *extra: str, target: str = "fsedp-2x2") -> list[str]:
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.replace("TARGET", target))
    return ["sweep", str(spec), "-o", str(tmp_path / "r"), "--local", *extra]


def test_rows_carry_the_code_fingerprint_and_a_rerun_reuses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _sweep(tmp_path)
    assert main(argv) == 0
    rows = _rows(tmp_path / "r")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["fingerprint"] for r in rows} == {code_fingerprint()}
    assert len({r["inputs_hash"] for r in rows}) == 1
    capsys.readouterr()
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "2 points, 2 already stored, ran 0" in cap.out and "recomputing" not in cap.err
    assert _rows(tmp_path / "r") == rows
    # a fresh folder gives the same rows (determinism), fingerprint included
    assert main([*argv[:3], str(tmp_path / "again"), "--local"]) == 0
    again = _rows(tmp_path / "again")
    assert _numbers(again) == _numbers(rows)
    assert [r["fingerprint"] for r in again] == [r["fingerprint"] for r in rows]


def test_rows_of_another_moec_are_recomputed_unless_reuse_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _sweep(tmp_path)
    assert main(argv) == 0
    fresh = _rows(tmp_path / "r")
    # what another build would have left: its own fingerprint, other (wrong) numbers
    _sql(tmp_path / "r", f"UPDATE points SET fingerprint = '{OTHER}', latency_s = 1.0")
    capsys.readouterr()
    assert main([*argv, "--reuse-stale"]) == 0
    cap = capsys.readouterr()
    journal = str(tmp_path / "r" / "sweep.sqlite")
    assert (
        f"moec sweep: 2 rows of {journal} were computed by another moec (fingerprint {OTHER}, "
        f"this one is {code_fingerprint()}); kept (--reuse-stale)\n"
    ) in cap.err
    assert "2 points, 2 already stored, ran 0" in cap.out
    assert {r["latency_s"] for r in _rows(tmp_path / "r")} == {1.0}
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert f"(fingerprint {OTHER}, this one is {code_fingerprint()}); recomputing" in cap.err
    assert "2 points, 0 already stored, ran 2 (2 ok, 0 error)" in cap.out
    rows = _rows(tmp_path / "r")
    assert _numbers(rows) == _numbers(fresh) and {r["fingerprint"] for r in rows} == {
        code_fingerprint()
    }


def test_a_journal_from_before_fingerprints_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _sweep(tmp_path)
    assert main(argv) == 0
    fresh = _rows(tmp_path / "r")
    for col in ("fingerprint", "inputs_hash"):  # the table as an older moec created it
        _sql(tmp_path / "r", f"ALTER TABLE points DROP COLUMN {col}")
    _sql(tmp_path / "r", "UPDATE points SET latency_s = 1.0 WHERE point_index = 0")
    capsys.readouterr()
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "2 rows of" in cap.err and "by an older moec (no fingerprint); recomputing" in cap.err
    assert "ran 2 (2 ok, 0 error)" in cap.out
    assert _numbers(_rows(tmp_path / "r")) == _numbers(fresh)


def test_a_changed_target_file_makes_its_rows_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(__file__).resolve().parent.parent
    target = tmp_path / "pkg.toml"
    shutil.copy(root / "examples" / "targets" / "my_2x2.toml", target)
    argv = _sweep(tmp_path, target="pkg.toml")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "ran 0" in capsys.readouterr().out
    target.write_text(target.read_text() + "\n# edited\n")
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "computed from other contents of their input files" in cap.err
    assert "ran 2 (2 ok, 0 error)" in cap.out


def test_the_code_fingerprint_changes_with_any_source_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {n for p in fingerprint.PACKAGES for n, _ in fingerprint._package_files(p)}
    # the cost model, the presets, the lowering, the interpreter and the trained models
    for name in ("cost/__init__.py", "target.py", "catalog.py", "tiny_moe_lm.onnx"):
        assert name in names
    assert not any("__pycache__" in n for n in names)
    copy = tmp_path / "ir"
    shutil.copytree(fingerprint._folder("moec.ir"), copy)
    real = fingerprint._folder
    monkeypatch.setattr(fingerprint, "_folder", lambda p: str(copy) if p == "moec.ir" else real(p))
    fingerprint.code_fingerprint.cache_clear()
    try:
        before = code_fingerprint()
        fingerprint.code_fingerprint.cache_clear()
        assert code_fingerprint() == before  # stable
        (copy / "target.py").write_text((copy / "target.py").read_text() + "# a comment\n")
        fingerprint.code_fingerprint.cache_clear()
        assert code_fingerprint() != before
    finally:
        monkeypatch.undo()
        fingerprint.code_fingerprint.cache_clear()


def _fake_ray(foreign: str | None) -> types.ModuleType:
    """An in-process stand-in for ``ray`` (tasks run when submitted), enough for the runner's
    Ray path; ``foreign``: the fingerprint its workers report (a node with other code)."""
    ray = types.ModuleType("ray")

    class Ref:
        def __init__(self, value: Any) -> None:
            self.value = value

    def remote(num_cpus: int = 1) -> Any:
        def wrap(fn: Any) -> Any:
            def submit(task: Any) -> Ref:
                result = fn(task)
                return Ref({**result, "fingerprint": foreign} if foreign else result)

            return types.SimpleNamespace(remote=submit)

        return wrap

    ray.remote = remote  # type: ignore[attr-defined]
    ray.wait = lambda refs, num_returns=1: (refs[:num_returns], refs[num_returns:])  # type: ignore[attr-defined]
    ray.get = lambda ref: ref.value  # type: ignore[attr-defined]
    ray.cluster_resources = lambda: {"CPU": 2}  # type: ignore[attr-defined]
    ray.is_initialized = lambda: False  # type: ignore[attr-defined]
    ray.init = lambda **kw: None  # type: ignore[attr-defined]
    ray.shutdown = lambda: None  # type: ignore[attr-defined]
    return ray


def test_the_ray_path_recomputes_stale_rows_and_flags_foreign_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import moec.sweep.runner as runner

    monkeypatch.setattr(runner, "ray_available", lambda: True)
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(foreign=None))
    argv = [a for a in _sweep(tmp_path) if a != "--local"]
    assert main(argv) == 0
    assert "[ray local]" in capsys.readouterr().out
    _sql(tmp_path / "r", f"UPDATE points SET fingerprint = '{OTHER}' WHERE point_index = 1")
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert f"1 row of {tmp_path / 'r' / 'sweep.sqlite'} was computed by another moec" in cap.err
    assert "2 points, 1 already stored, ran 1 (1 ok, 0 error)" in cap.out
    assert {r["fingerprint"] for r in _rows(tmp_path / "r")} == {code_fingerprint()}
    # a worker whose code differs from the driver's: its rows say so, and the run warns
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(foreign=OTHER))
    assert main([*argv[:3], str(tmp_path / "r2")]) == 0
    cap = capsys.readouterr()
    assert f"2 points ran on a worker with another moec (fingerprint {OTHER})" in cap.err
    assert {r["fingerprint"] for r in _rows(tmp_path / "r2")} == {OTHER}


def test_reuse_stale_is_not_a_plot_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sweep", "plot", str(tmp_path), "--x", "tokens", "--y", "latency_s"]
    assert main([*argv, "-o", str(tmp_path / "p.png"), "--reuse-stale"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reuse-stale belongs to a sweep run" in err
    assert "Traceback" not in err and not (tmp_path / "p.png").exists()


def test_plot_says_when_it_draws_rows_of_another_moec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    assert main(_sweep(tmp_path)) == 0
    res = str(tmp_path / "r")
    argv = ["sweep", "plot", res, "--x", "latency_s", "--y", "peak_sram_bytes_max"]
    capsys.readouterr()
    assert main([*argv, "-o", str(tmp_path / "a.png")]) == 0
    assert "another moec" not in capsys.readouterr().err
    _sql(tmp_path / "r", f"UPDATE points SET fingerprint = '{OTHER}' WHERE point_index = 0")
    assert main([*argv, "-o", str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert f"1 of the 2 rows drawn from {res}/sweep.sqlite were computed by another moec" in err
    assert f"(fingerprint {OTHER}; this one is {code_fingerprint()})" in err
    assert (tmp_path / "b.png").exists()
