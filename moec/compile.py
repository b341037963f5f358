"""Compile an ONNX MoE model to a stream program (and its weights companion): the API behind
``moec compile``.

:func:`load_model` reads an ``.onnx`` file or a model name from ``moec models``
(``qwen3-30b-a3b``, ``tiny_moe``) and lifts its MoE layers; :func:`compile_model` runs the
pass pipeline and the lowering; :func:`write_compiled` writes the files. The steps: frontend (lift MoE layers), the pass pipeline (``--debug`` verifies the IR after every
pass), lowering with the strategy (``ep`` or ``ep{placement=blocks,slots=4}``), and an atomic
write of ``prog.msp`` plus ``prog.msp.weights.onnx`` when the model has its weights: both are
written to temporaries and renamed only when both are complete, so an error leaves nothing.
The same input and options give byte-identical files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moec.auto import DEFAULT_BUDGET, AutoResult, default_routing, search
from moec.bench import DEFAULT_ROUTING
from moec.compiler.frontend import LiftResult, lift_model, load_module
from moec.compiler.lower import parse_strategy
from moec.compiler.lower.options import StrategyError
from moec.compiler.lower.weights_file import companion_bytes, companion_name, sha256
from moec.compiler.passes import parse_pipeline
from moec.fsedp_slices import lower
from moec.ir.errors import ModelError
from moec.ir.files import atomic_write_all
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace, load_trace
from moec.ir.stream import Program, TargetRef, WeightsRef, print_program
from moec.ir.target import PRESETS
from moec.online import DEFAULT_DRAWS, OnlineResult, online_search
from moec.options import (  # noqa: F401 - the API names them here
    DEFAULT_TARGET,
    parse_dims,
    parse_overrides,
)

#: The stages :func:`compile_model` reports through ``on_stage``: frontend, passes, lowering
#: (or the strategy search), weights companion.
COMPILE_STAGES = 4


def target_ref(
    spec: str, overrides: Sequence[tuple[str, int | float | str]], out_dir: str
) -> TargetRef:
    """The program's target: a preset as is, a TOML file relative to the program's folder."""
    if spec in PRESETS or not (spec.endswith(".toml") or "/" in spec or os.sep in spec):
        return TargetRef(spec, tuple(overrides))
    rel = os.path.relpath(os.path.abspath(spec), os.path.abspath(out_dir))
    return TargetRef(Path(rel).as_posix(), tuple(overrides))


# --- the model ---------------------------------------------------------------------------------
def load_model(spec: str, *, load_weights: bool = True) -> tuple[Module, LiftResult, str]:
    """Graph IR, lift result and name of an ``.onnx`` file or a catalog model name."""
    if spec.endswith(".onnx") or os.path.exists(spec):
        module, lifted = load_module(spec, load_weights=load_weights)
        return module, lifted, Path(spec).name.removesuffix(".onnx")
    from moec.models.catalog import catalog

    entries = catalog()
    if spec not in entries:
        raise ModelError(
            f"no such file or model name, expected a .onnx file or one of: {', '.join(entries)}",
            spec,
        )
    module, lifted = lift_model(entries[spec].build(0), where=spec)
    return module, lifted, spec


# --- compile -----------------------------------------------------------------------------------
@dataclass
class Compiled:
    """A compiled program, its text, and the companion bytes (None for shape-only models)."""

    program: Program
    text: str
    companion: bytes | None
    module: Module
    lifted: LiftResult
    #: the search behind ``--strategy auto`` (None for a fixed strategy)
    auto: AutoResult | None = None
    #: ``--alternatives N``: the online choice built on that search
    online: OnlineResult | None = None


def compile_model(
    model: str,
    output: str,
    *,
    target: str = DEFAULT_TARGET,
    overrides: Sequence[tuple[str, int | float | str]] = (),
    strategy: str = "ep",
    passes: str = "",
    routing: str | RoutingTrace | None = None,
    tokens: int | None = None,
    dims: dict[str, int] | None = None,
    debug: bool = False,
    on_module: Any = None,
    search_budget: int = DEFAULT_BUDGET,
    objective: str = "latency",
    max_sram_mib: float | None = None,
    search_resamples: int = 0,
    on_stage: Callable[[str], None] | None = None,
    alternatives: int = 0,
    online_draws: Sequence[str] | None = None,
) -> Compiled:
    """Frontend, passes and lowering of ``model`` for a program to be written at ``output``.

    ``on_stage`` is called once after each of the :data:`COMPILE_STAGES` stages with what comes
    next (for a progress bar).
    """
    stage = on_stage if on_stage is not None else (lambda _: None)
    out_dir = os.path.dirname(os.path.abspath(output))
    ref = target_ref(target, overrides, out_dir)
    name, options = parse_strategy(strategy)
    if name != "auto" and (
        objective != "latency" or max_sram_mib is not None or search_resamples
    ):  # fmt: skip
        raise StrategyError(
            "--objective, --max-sram-mib and --search-resamples choose among candidates: they need "
            f"--strategy auto, found --strategy {strategy}",
            "--strategy",
        )
    if alternatives and (name != "auto" or objective != "latency" or search_resamples):
        raise StrategyError(
            "it chooses among candidates of the latency search: it needs "
            f"--strategy auto (objective latency, no resamples), found --strategy {strategy}",
            "--alternatives",
        )
    pipeline = parse_pipeline(passes) if passes.strip() else None
    trace = load_trace(routing) if isinstance(routing, str) else routing
    module, lifted, model_name = load_model(model)
    stage("passes" if pipeline is not None else "no passes")
    if pipeline is not None:
        module = pipeline.run(module, debug=debug)
    stage("searching the strategies" if name == "auto" else f"lowering ({name})")
    if on_module is not None:
        on_module(module)
    found, online = None, None
    if name == "auto":  # search the fixed strategies (moec.auto), the interpreter confirms
        if options:
            raise StrategyError(
                f"strategy auto takes no options, found {', '.join(sorted(options))} "
                "(use --search-budget)",
                "--strategy",
            )
        where = routing if isinstance(routing, str) else "--routing"
        if trace is None:
            trace = default_routing(
                module, ref, tokens=tokens, dims=dims, base_dir=out_dir, name=model_name
            )
            where = DEFAULT_ROUTING
        if alternatives:  # the online choice (moec.online) runs the same search first
            online = online_search(
                module, ref, trace, alternatives=alternatives,
                draws=online_draws if online_draws else DEFAULT_DRAWS, routing_name=where,
                budget=search_budget, tokens=tokens, dims=dims, base_dir=out_dir,
                name=model_name,
            )  # fmt: skip
            found, program = online.auto, online.program
        else:
            found = search(
                module, ref, trace, routing_name=where, budget=search_budget, tokens=tokens,
                dims=dims, base_dir=out_dir, name=model_name, objective=objective,
                max_sram_mib=max_sram_mib, resamples=search_resamples,
            )  # fmt: skip
            program = found.program
    else:
        program = lower(
            module, ref, name, options, trace, tokens=tokens, dims=dims, base_dir=out_dir,
            name=model_name,
        )  # fmt: skip
    stage("weights companion")
    companion = companion_bytes(lifted, module)
    stage("done")
    if companion is not None:
        program.weights = WeightsRef(companion_name(os.path.basename(output)), sha256(companion))
    return Compiled(program, print_program(program), companion, module, lifted, found, online)


def write_compiled(compiled: Compiled, output: str) -> None:
    """Write program and companion atomically: both complete, or neither left behind."""
    out = Path(output)
    files: list[tuple[Path, bytes | str]] = [(out, compiled.text)]
    if compiled.companion is not None:
        files.insert(0, (out.with_name(companion_name(out.name)), compiled.companion))
    atomic_write_all(files)
