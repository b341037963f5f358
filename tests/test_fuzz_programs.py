"""A seeded mutation fuzz of compiled stream programs: every opcode, declaration and runtime field.

Each compiled program (tiny_moe under every strategy) is mutated one line at a time
(``program_mutations.py``); for every mutant, ``moec inspect`` (the verifier) and ``moec run``
(timing on a synthetic routing, and numerics on some) must exit 0 or 2 with no traceback, and
whatever ``run`` rejects, ``inspect`` rejects first, except what depends on the routing given at
run time, which a program cannot know. A few hundred mutants by default; thousands with
``-m slow``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import traceback
from pathlib import Path

import pytest
from program_mutations import mutants

from moec.compiler.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = (
    "ep", "tp", "hydra", "eplb", "fsedp-naive", "fsedp", "fsedp-paired", "fsedp-r5", "fsedp-buf",
)  # fmt: skip
ROUTING = "synth:zipf=1.0,seed=0"
#: Run-time rejections that depend on the routing given to ``run``, not on the program.
ROUTING_DEPENDENT = ("layers have different token counts", "the routing has", "routing spec")


def _call(args: list[str]) -> tuple[int | str, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(args)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - the point: nothing may escape main
        return "crash", traceback.format_exc().strip().splitlines()[-1]
    return rc, err.getvalue().strip()


def _fuzz(tmp_path: Path, strategy: str, count: int, numerics_every: int) -> list[str]:
    prog = tmp_path / "p.msp"
    rc, err = _call(["compile", str(ROOT / "models" / "tiny_moe.onnx"), "-o", str(prog),
                     "--strategy", strategy])  # fmt: skip
    assert rc == 0, err
    text = prog.read_text()
    mutant = tmp_path / "m.msp"
    shutil.copy(tmp_path / "p.msp.weights.onnx", tmp_path / "m.msp.weights.onnx")
    problems = []
    for k, (what, mtext) in enumerate(mutants(text, seed=STRATEGIES.index(strategy), count=count)):
        mutant.write_text(mtext)
        inspected = _call(["inspect", str(mutant)])
        runs = [_call(["run", str(mutant), "--routing", ROUTING])]
        if k % numerics_every == 0:
            runs.append(_call(["run", str(mutant)]))
        for rc, err in [inspected, *runs]:
            if rc not in (0, 2):
                problems.append(f"{what}: exit {rc}: {err}")
            elif rc == 2 and not err.startswith("moec: error: "):
                problems.append(f"{what}: not a moec error: {err}")
        if inspected[0] == 0:
            for rc, err in runs:
                if rc == 2 and not any(s in err for s in ROUTING_DEPENDENT):
                    problems.append(f"{what}: run rejects what the verifier accepts: {err}")
    return problems


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mutated_programs(tmp_path: Path, strategy: str) -> None:
    problems = _fuzz(tmp_path, strategy, count=40, numerics_every=3)
    assert not problems, "\n".join(problems[:10])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mutated_programs_many(tmp_path: Path, strategy: str) -> None:
    problems = _fuzz(tmp_path, strategy, count=400, numerics_every=2)
    assert not problems, "\n".join(problems[:10])
