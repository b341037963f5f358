"""Issue 14 items that had no test of their own: compile into a folder, huge bench sizes, ignores."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from moec.compiler.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_compile_into_an_existing_folder_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "tiny_moe", "-o", "d"]) == 2
    err = capsys.readouterr().err
    assert err == "moec: error: d: is a folder, expected an output file name\n"
    # Program and weights are written both or neither: no stray d.weights.onnx.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert list((tmp_path / "d").iterdir()) == []


def test_huge_bench_tokens_are_refused_before_allocation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["bench", "--model", "tiny_moe", "--tokens", "100000000", "--strategies", "ep"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "does not fit SRAM" in err
    # Before the fix this allocated GBs and died with MemoryError; now the size check names the need.
    assert "bytes for the activations" in err


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    "name",
    [".k.msp.ab12cd.tmp", ".w.msp.weights.onnx.ab12cd.tmp", "qwen3.onnx", "trace.json",
     "trace.npz", "pareto.png", "k.msp", "k.msp.weights.onnx", "results/sweep.sqlite"],
)  # fmt: skip
def test_gitignore_covers_temp_files_and_readme_outputs(name: str) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", name], check=False
    )
    assert done.returncode == 0, f"{name} is not ignored by .gitignore"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("progs")
    out = {}
    for strategy in ("ep", "fsedp"):
        out[strategy] = root / f"{strategy}.msp"
        assert main(["compile", "tiny_moe", "--strategy", strategy, "-o", str(out[strategy])]) == 0
    return out


SKIP = "  strategy ep\n  skip "
# (strategy, text replaced, replacement, what the one-line error says): each was accepted by
# `inspect` and rejected or silently misread by `run` before.
VERIFIER_GAPS = {
    "act-without-gemm": ("ep", "  moe moe1\n",
                         "  load s0 <- ch0 moe1.e0 bytes 24576\n  act s0 tokens 0\n  free s0\n"
                         "  moe moe1\n", "act needs a micro-slice in s0"),
    "channel-out-of-range": ("ep", "channels = [0, 1, 2, 3, 0, 1, 2, 3]",
                             "channels = [0, 1, 2, 9, 0, 1, 2, 3]",
                             "param channels must be a list of 8 integers in 0..3"),
    "no-free-slot-at-moe": ("ep", "  moe moe1\n",
                            "".join(f"  load s{i} <- ch0 moe1.e{i} bytes 24576\n" for i in range(4))
                            + "  moe moe1\n" + "".join(f"  free s{i}\n" for i in range(4)),
                            "die 0 has 0 free buffer slots at 'moe moe1'"),
    "slice-bytes-not-a-list": ("ep", "slice_bytes = [24576]", "slice_bytes = 5",
                               "param slice_bytes must be a list of 1 integers"),
    "slice-bytes-off-layout": ("ep", "slice_bytes = [24576]", "slice_bytes = [100, 5]",
                               "param slice_bytes must be a list of 1 integers"),
    "cycle-bogus": ("fsedp", 'cycle = "spiral"', 'cycle = "bogus"',
                    "param cycle must be one of spiral, rowmajor"),
    "skip-rule-unknown": ("ep", "  strategy ep\n", SKIP + "bogus threshold 0.5\n",
                          "unknown skip rule 'bogus'"),
    "skip-threshold-negative": ("ep", "  strategy ep\n", SKIP + "caee threshold -1\n",
                                "skip threshold must be in 0..1, found -1"),
    "skip-threshold-above-one": ("ep", "  strategy ep\n", SKIP + "second threshold 2\n",
                                 "skip threshold must be in 0..1, found 2"),
    "shape-huge": ("ep", "[3, 32, 64] ch0", "[3, 100000000000000000000, 64] ch0",
                   "tensor moe0.e0: shape [3, 100000000000000000000, 64] of fp32 holds"),
    "shape-zero": ("ep", "[3, 32, 64] ch0", "[0, 32, 64] ch0",
                   "tensor moe0.e0: shape [0, 32, 64] of fp32 holds 0 bytes"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(VERIFIER_GAPS))
def test_verifier_rejects_what_run_would(
    case: str, compiled: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy, old, new, message = VERIFIER_GAPS[case]
    src = compiled[strategy]
    text = src.read_text()
    assert old in text
    weights = src.with_name(src.name + ".weights.onnx")
    text = text.replace(f'"{src.name}.weights.onnx"', f'"{weights}"')
    bad = tmp_path / "bad.msp"
    bad.write_text(text.replace(old, new, 1))
    for command in ("inspect", "run"):
        capsys.readouterr()
        assert main([command, str(bad)]) == 2, command
        err = capsys.readouterr().err
        first = err.splitlines()[0]
        assert first.startswith(f"moec: error: {bad}:"), (command, err)  # located: file:line:col
        assert message in first, (command, err)


def test_verifier_knows_the_interpreters_skip_rules() -> None:
    from moec.backends.interp.rules import RULES, _load
    from moec.ir.stream.params import SKIP_RULES

    _load()
    assert sorted(RULES) == sorted(SKIP_RULES)


SWEEP = """\
[sweep]
routing = "synth:zipf=1.0,seed=0"

[fixed]
models = "tiny_moe"
targets = "fsedp-2x2"
strategies = "ep"

[axes]
tokens = [16, 32]
"""


@pytest.mark.parametrize("out", ["nope/p.png", "notes.txt/p.png", "sub"])
def test_sweep_plot_into_a_bad_output_path(
    out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    Path("s.toml").write_text(SWEEP)
    Path("notes.txt").write_text("x")
    Path("sub").mkdir()
    assert main(["sweep", "s.toml", "--local", "-o", "res"]) == 0
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    args = ["sweep", "plot", "res", "--x", "tokens", "--y", "latency_s", "-o", out]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("moec: error: ") and err.count("\n") == 1, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
