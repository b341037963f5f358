"""Regenerate the golden stream programs that ``tests/test_golden_msp.py`` compares against.

Run only when a change to the compiler's output is intended, and say in the commit why the text
moved: ``python tests/golden/regen.py``. Each golden is ``moec compile MODEL --strategy S`` written
under a fixed name, so the weights file it names is the same on every run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STRATEGIES = (
    "ep", "tp", "hydra", "eplb", "fsedp-naive", "fsedp", "fsedp-paired", "fsedp-r5", "fsedp-buf",
)  # fmt: skip
#: (golden stem, model argument, extra compile arguments)
MODELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tiny_moe", str(ROOT / "models" / "tiny_moe.onnx"), ()),
    ("tiny_moe_decomposed", str(ROOT / "models" / "tiny_moe_decomposed.onnx"), ()),
    ("tiny_moe_lm", str(ROOT / "models" / "tiny_moe_lm.onnx"), ()),
    ("tiny_moe_lm_fg", str(ROOT / "models" / "tiny_moe_lm_fg.onnx"), ()),
    ("tiny_deepseek", "tiny_deepseek", ()),
    ("phi3.5-moe", "phi3.5-moe", ("--tokens", "64")),
)


#: Strategy spellings with options that change the program's form (a hybrid within a layer),
#: as (golden stem, model, strategy): ``hydra{split=2}`` records ``param split``.
VARIANTS = (("tiny_deepseek.hydra-split2", "tiny_deepseek", "hydra{split=2}"),)


def cases() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """Every (golden file name, model, strategy, extra args)."""
    return [
        (f"{stem}.{s}.msp", model, s, extra) for stem, model, extra in MODELS for s in STRATEGIES
    ] + [(f"{stem}.msp", model, s, ()) for stem, model, s in VARIANTS]


def compile_one(model: str, strategy: str, extra: tuple[str, ...], out_dir: Path, name: str) -> str:
    """Compile one case into ``out_dir/name`` with the CLI and return the program text."""
    from moec.compiler.cli.main import main

    rc = main(["compile", model, "-o", str(out_dir / name), "--strategy", strategy, *extra])
    if rc not in (0, None):
        raise SystemExit(f"compile {model} --strategy {strategy} failed with {rc}")
    return (out_dir / name).read_text()


#: Models whose programs the golden run tests also execute (numerics and timing).
RUN_MODELS = ("tiny_moe", "tiny_deepseek")


def run_cases() -> list[tuple[str, str, str, bool]]:
    """Every (golden stem, model, strategy, ideal) whose run is compared too: each run on the
    ideal machine (``--set ideal=true``: the first-wave numbers, kept byte-identical) and on the
    calibrated hardware model (``<stem>.calibrated``)."""
    return [
        (f"{stem}.{s}{'' if ideal else '.calibrated'}", model, s, ideal)
        for ideal in (True, False)
        for stem, model, _ in MODELS
        if stem in RUN_MODELS
        for s in STRATEGIES
    ] + [(f"{stem}{'' if ideal else '.calibrated'}", m, s, ideal)
         for ideal in (True, False) for stem, m, s in VARIANTS]  # fmt: skip


def run_one(
    model: str, strategy: str, out_dir: Path, stem: str, ideal: bool = True
) -> tuple[str, str]:
    """Compile and run one case; return the expanded program text and the JSON report."""
    import contextlib
    import io

    from moec.compiler.cli.main import main

    compile_one(model, strategy, (), out_dir, f"{stem}.msp")
    buf = io.StringIO()
    expanded = out_dir / f"{stem}.expanded.msp"
    args = ["run", str(out_dir / f"{stem}.msp"), "--json", "--dump-expanded", str(expanded)]
    with contextlib.redirect_stdout(buf):
        rc = main([*args, "--set", f"ideal={'true' if ideal else 'false'}"])
    if rc not in (0, None):
        raise SystemExit(f"run {stem} failed with {rc}")
    return expanded.read_text(), buf.getvalue()


def regen() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, strategy, extra in cases():
            text = compile_one(model, strategy, extra, Path(tmp), name)
            (HERE / "msp" / name).write_text(text)
            print(f"wrote tests/golden/msp/{name}", file=sys.stderr)
        (HERE / "run").mkdir(exist_ok=True)
        for stem, model, strategy, ideal in run_cases():
            expanded, report = run_one(model, strategy, Path(tmp), stem, ideal)
            (HERE / "run" / f"{stem}.expanded.msp").write_text(expanded)
            (HERE / "run" / f"{stem}.json").write_text(report)
            print(f"wrote tests/golden/run/{stem}.*", file=sys.stderr)


if __name__ == "__main__":
    regen()
