"""The Python API of moec: everything the command line does, as functions.

The command line (``compiler/cli/``) is a thin shell over these; scripts and the sweep runner
call them too. One import gives the whole workflow::

    from moec import api

    module, lifted, name = api.load_model("tiny_moe")              # ONNX -> graph IR, MoE lifted
    module = api.run_passes(module, "annotate-importance")         # a pass pipeline string
    compiled = api.compile_model("tiny_moe", "out/tiny.msp", strategy="fsedp")
    api.write_compiled(compiled, "out/tiny.msp")                   # .msp + weights companion
    result = api.run_program("out/tiny.msp")                       # interpreter: timing, numbers
    report = api.check_model("tiny_moe")                           # against ONNX Runtime
    rows = api.run_bench("tiny_moe", "fsedp-2x2", [64], ["ep", "fsedp"])

Where each part lives: :mod:`moec.compile` (load, compile, write), :mod:`moec.run` (simulate),
:mod:`moec.check` (exact check against ONNX Runtime, the reference run and interpreter
run every accuracy figure shares, routing dumps), :mod:`moec.approx` (what a
cost-aware pipeline costs in accuracy, perplexity), :mod:`moec.bench` (the bench driver) and
:mod:`moec.sweep` (design-space sweeps). Errors are :class:`moec.ir.errors.MoecError` subclasses
with a location.
"""

from __future__ import annotations

from moec.approx import ApproxReport, ApproxRun, approx_check, approx_run, program_perplexity
from moec.backends.interp import RunResult, simulate
from moec.bench import known_strategies, run_bench
from moec.check import (
    Reference,
    check_model,
    dump_trace,
    interpret,
    model_inputs,
    reference_run,
)
from moec.compile import DEFAULT_TARGET, Compiled, compile_model, load_model, write_compiled
from moec.compiler.passes import parse_pipeline
from moec.ir.graph import Module
from moec.ir.stream import Program, load_program, print_program
from moec.run import run_program
from moec.sweep import SweepSpec, load_spec, parse_spec, run_sweep

__all__ = [
    "DEFAULT_TARGET", "ApproxReport", "ApproxRun", "Compiled", "Module", "Program", "Reference",
    "RunResult", "SweepSpec", "approx_check", "approx_run", "check_model", "compile_model",
    "dump_trace", "interpret", "known_strategies", "load_model", "load_program", "load_spec",
    "model_inputs", "parse_spec", "print_program", "program_perplexity", "reference_run",
    "run_bench", "run_passes", "run_program", "run_sweep", "simulate", "write_compiled",
]  # fmt: skip


def run_passes(module: Module, passes: str, *, debug: bool = False) -> Module:
    """``module`` after the pass pipeline ``passes`` (``"a,b{x=1}"``, the ``--passes`` syntax);
    ``debug`` verifies the IR after every pass."""
    if not passes.strip():
        return module
    return parse_pipeline(passes).run(module, debug=debug)
