"""``scripts/serving_tables.py --update``: each (target, section) rewrites only its own tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "serving_tables", ROOT / "scripts" / "serving_tables.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _block(st: ModuleType, target: str, section: str, body: str) -> str:
    begin, end = st.markers(target, section)
    return f"{begin}\n{body}\n{end}\n"


def test_calibrated_and_ideal_sections_are_separate() -> None:
    st = _script()
    # the 2x2 ideal tables keep the original unnamed markers; calibrated ones are named
    assert st.markers("fsedp-2x2", "ideal") == (st.BEGIN, st.END)
    assert st.markers("fsedp-2x2") == (
        "<!-- serving-tables:fsedp-2x2:begin -->",
        "<!-- serving-tables:fsedp-2x2:end -->",
    )
    assert st.markers("fsedp-3x3", "ideal")[0] == "<!-- serving-tables:fsedp-3x3:ideal:begin -->"
    assert st.overrides("ideal") == {"ideal": "true"} and st.overrides("calibrated") == {}
    doc = (
        "# r\n\n"
        + _block(st, "fsedp-2x2", "calibrated", "old calibrated")
        + "\ntext between\n\n"
        + _block(st, "fsedp-2x2", "ideal", "old ideal")
    )
    new = st.replace_section(
        doc, _block(st, "fsedp-2x2", "calibrated", "new calibrated"), "fsedp-2x2", "calibrated"
    )
    assert "new calibrated" in new and "old calibrated" not in new
    assert "old ideal" in new and "text between" in new
    new = st.replace_section(
        new, _block(st, "fsedp-2x2", "ideal", "new ideal"), "fsedp-2x2", "ideal"
    )
    assert "new calibrated" in new and "new ideal" in new and "old ideal" not in new
    # a section not there yet goes after the last tables
    added = st.replace_section(
        new, _block(st, "fsedp-3x3", "calibrated", "3x3"), "fsedp-3x3", "calibrated"
    )
    assert added.index("3x3") > added.index("new ideal")
    assert added.replace(_block(st, "fsedp-3x3", "calibrated", "3x3"), "") == new + "\n"


def test_cached_only_marks_missing_rows_without_running() -> None:
    st = _script()
    st.CACHED_ONLY[:] = [True]
    try:
        rows = st.rows_for("qwen3-30b-a3b", st.DRIFT, 16, 4, "fsedp-2x2")
    finally:
        st.CACHED_ONLY[:] = []
    assert len(rows) == 2 * len(st.STRATEGIES)
    assert all(r["error"] == "not run (cut for time)" for r in rows)
    assert "| qwen3-30b-a3b | TP | popularity | not run (cut for time) |" in st.table(rows)


def test_rerun_replaces_only_the_named_strategies_rows(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    st = _script()
    key = f"qwen3-30b-a3b|{st.DRIFT}|None|4|16|fsedp-2x2"
    old = [
        {"strategy": s, "label": label, "residency": "-", "tokens_per_s": 1.0,
         "deferred_pairs_final": 0}
        for label, s in st.STRATEGIES
    ]  # fmt: skip
    st.CACHE[key] = old
    calls: list[list[str]] = []

    def fake_bench(model: str, target: str, tokens: list[int], strategies: list[str], **kw):  # type: ignore[no-untyped-def]
        calls.append(list(strategies))
        return [{"strategy": s, "tokens_per_s": 2.0, "deferred_pairs_final": 0} for s in strategies]

    monkeypatch.setattr(st, "run_bench", fake_bench)
    st.CACHE_PATH[:] = [str(tmp_path / "rows.json")]
    st.RERUN[:] = ["ep", "tp"]
    try:
        st.CACHE[key.replace("None", "popularity")] = old
        rows = st.rows_for("qwen3-30b-a3b", st.DRIFT, 16, 4, "fsedp-2x2")
    finally:
        st.RERUN[:] = []
    assert calls == [["ep", "tp"], ["ep", "tp"]]
    by = {r["strategy"]: r for r in rows[: len(old)]}
    assert [r["strategy"] for r in rows[: len(old)]] == [s for _, s in st.STRATEGIES]
    assert by["ep"]["tokens_per_s"] == 2.0 and by["tp"]["tokens_per_s"] == 2.0
    assert by["hydra"]["tokens_per_s"] == 1.0 and by["ep"]["label"] == "EP"


def test_rerun_rejects_unknown_strategies_and_needs_a_cache(capsys) -> None:  # type: ignore[no-untyped-def]
    st = _script()
    for argv in (["--rerun", "ep,bogus", "--cache", "x.json"], ["--rerun", "ep"]):
        try:
            st.main(argv)
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} ran")
    err = capsys.readouterr().err
    assert "--rerun bogus: not a strategy of these tables" in err
    assert "--rerun: needs --cache" in err
