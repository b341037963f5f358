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
