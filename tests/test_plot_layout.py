"""Plots a reader can read (issue 14): legends clear of titles and data, axes not squeezed,
tick labels apart, times in a unit that shows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moec.compiler.cli.main import main

pytest.importorskip("matplotlib")

SPEC = """\
[sweep]
name = "layout"
routing = "synth:zipf=1.0,seed=0"

[fixed]
models = "tiny_moe"
targets = "fsedp-2x2"
tokens = 16

[axes]
strategies = ["ep", "fsedp-paired{slots=2}"]
passes = ["none", "annotate-importance,assign-precision{tiers=0.6/0.9},caee-prune{threshold=0.8}"]
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    (root / "s.toml").write_text(SPEC)
    assert main(["--quiet", "sweep", str(root / "s.toml"), "--local", "-o", str(root / "res")]) == 0
    return root / "res"


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions draw, kept open as saved (laid out by savefig)."""
    import matplotlib.pyplot as plt

    import moec.compiler.bench.report as report
    import moec.sweep.plot as plot

    seen: list[Any] = []
    monkeypatch.setattr(plt, "close", seen.append)
    for module in (report, plot):
        monkeypatch.setattr(module, "atomic_write", lambda *_: None)
    return seen


def _overlap(a: Any, b: Any) -> bool:
    return bool(a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1)


def test_pareto_legend_clear_of_title_and_axes(results: Path, figures: list[Any]) -> None:
    args = ["--x", "latency_s", "--y", "peak_sram_bytes_max", "--color", "passes"]
    assert main(["sweep", "plot", str(results), *args, "--facet", "strategy", "-o", "p.png"]) == 0
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert not _overlap(box, fig._suptitle.get_window_extent(renderer))
    width = fig.bbox.width
    for ax in fig.axes:
        assert not _overlap(box, ax.get_window_extent(renderer))
    used = sum(ax.get_position().width for ax in fig.axes if ax.get_visible() and ax.has_data())
    assert used > 0.6, f"the panels take {used:.0%} of the figure's width ({width:.0f} px)"
    assert fig.axes[0].get_xlabel() == "latency_s (us)"  # microseconds, not 0.002 ms


def test_heatmap_tick_labels_do_not_collide(results: Path, figures: list[Any]) -> None:
    code = main(["sweep", "plot", str(results), "--x", "passes", "--y", "strategy", "-o", "h.png"])
    assert code == 0
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert labels and not any(_overlap(a, b) for a, b in zip(labels, labels[1:], strict=False))
    assert all(t.get_window_extent(renderer).x0 >= 0 for t in ax.get_yticklabels())


def test_bench_plot_one_legend_outside_and_unit_per_panel(
    tmp_path: Path, figures: list[Any]
) -> None:
    args = ["bench", "--model", "tiny_moe", "--tokens", "16", "--strategies", "ep,fsedp"]
    assert main(["--quiet", *args, "--no-accuracy", "--plot", str(tmp_path / "b.png")]) == 0
    fig = figures[0] if figures else None
    assert fig is not None
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert not any(
        _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
        for ax in fig.axes
    )
    assert fig.axes[0].get_ylabel() == "latency (us)"
