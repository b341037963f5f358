"""``moec validate compute``: moec's GEMM cycles against SCALE-Sim v3 (a test extra).

SCALE-Sim is installed by ``pip install -e '.[test]'``, so in CI these tests run; they skip only
where it is absent (a base install).
"""

from __future__ import annotations

import json
import sys

import pytest

from moec.compiler.cli.main import main


def test_validate_compute_json_within_five_percent(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("scalesim")
    rc = main(["validate", "compute", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rc == 0
    assert len(rows) >= 30
    keys = {"m", "k", "n", "array_rows", "array_cols", "dataflow", "moec_cycles",
            "reference_cycles", "rel_err"}  # fmt: skip
    assert all(keys <= set(r) for r in rows)
    assert {r["dataflow"] for r in rows} == {"ws", "os"}
    assert {1, 4, 16, 64, 256, 1024} <= {r["m"] for r in rows}
    assert all(r["rel_err"] <= 0.05 for r in rows)
    assert all(r["reference_cycles"] > 0 for r in rows)


def test_reference_differs_from_peak_so_the_check_can_fail() -> None:
    pytest.importorskip("scalesim")
    from moec.backends.scalesim.compute_check import reference_cycles

    # a 1-token GEMM: SCALE-Sim charges the fill/drain of every fold, far above 2mkn / 2 PEs
    ref = reference_cycles(1, 2048, 128, 32, 64, "ws")
    assert ref == 16256
    assert ref > 100 * (1 * 2048 * 128) // (32 * 64)


def test_missing_scalesim_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "scalesim", None)
    monkeypatch.setitem(sys.modules, "scalesim.compute.systolic_compute_ws", None)
    assert main(["validate", "compute"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moec: error: validate: SCALE-Sim is not installed")
    assert "\n" not in err


def test_bad_array_geometry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "compute", "--array", "32by64"]) == 2
    assert "--array: expected ROWSxCOLS" in capsys.readouterr().err
