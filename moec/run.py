"""Run a stream program in the interpreter: the API behind ``moec run``.

:func:`run_program` loads a ``.msp`` (or takes a :class:`Program`), picks what to run it on and
calls :func:`moec.backends.interp.simulate`: numerics on the given inputs, or on seeded ones when
the program has weights and no routing is given; otherwise timing on a routing trace (a file, or
``synth:zipf=1.0,seed=0``, the default with the run's seed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from moec.backends.interp import RunResult, check_routings, program_target, simulate
from moec.backends.interp.numerics import load_weights, seeded_inputs
from moec.ir.errors import ProgramError, TraceError
from moec.ir.routing import RoutingTrace, load_trace
from moec.ir.routing_synth import parse_routing_spec
from moec.ir.stream import Program, load_program, verify_program
from moec.ir.target import Target, load_target


def routing_for(spec: str, program: Program, target: Target) -> RoutingTrace:
    """The routing trace ``spec`` names for ``program``: a trace file, or ``synth:...`` made for
    the program's layers, tokens and dies."""
    parsed = parse_routing_spec(spec)
    if isinstance(parsed, str):
        return load_trace(parsed)
    tokens = {m.tokens for m in program.layers}
    if len(tokens) > 1:
        raise TraceError(f"layers have different token counts {sorted(tokens)}", spec)
    return parsed.make(
        [(m.experts, m.top_k) for m in program.layers], tokens.pop() if tokens else 1,
        target.num_dies, model=program.name,
    )  # fmt: skip


def load_inputs_npz(path: str) -> dict[str, np.ndarray]:
    """Model inputs from an ``.npz`` file (a located :class:`ProgramError` when unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise ProgramError(f"cannot read inputs: {err}", path) from None


def run_target(
    program: Program,
    base: str,
    target: str | None = None,
    overrides: Sequence[tuple[str, int | float | str]] = (),
) -> Target:
    """What a run of ``program`` runs on: ``target`` (a preset, or a TOML path relative to the
    working folder) when given, else the target the program names (relative to ``base``), with
    ``overrides`` (``--set`` pairs) on top."""
    tgt = load_target(target, base_dir=os.getcwd()) if target else program_target(program, base)
    return tgt.with_overrides(dict(overrides)) if overrides else tgt


def run_program(
    program: str | Program,
    *,
    routing: str | None = None,
    seed: int = 0,
    inputs: str | Mapping[str, np.ndarray] | None = None,
    target: str | None = None,
    base_dir: str | None = None,
    record_trace: bool = False,
    overrides: Sequence[tuple[str, int | float | str]] = (),
    allow_overflow: bool = False,
    layered: bool = False,
) -> RunResult:
    """Run ``program`` (a ``.msp`` path or a loaded program; ``base_dir`` is the folder its
    relative paths start from, by default the file's) as ``moec run`` does (module docstring).
    ``target`` (preset or TOML path) replaces the program's target; ``overrides`` (``--set``
    pairs) apply on top of the program's (or that) target, e.g. ``[("ideal", "true")]``.
    ``allow_overflow``: report a run whose SRAM peak exceeds a die's (``--allow-overflow``;
    the report then carries ``sram_over_bytes``) instead of failing. ``layered``: simulate one
    layer at a time (:func:`~moec.backends.interp.simulate.simulate`: same report, memory flat
    in layers, no expanded program or per-op timeline kept)."""
    if isinstance(program, str):
        base = base_dir or os.path.dirname(os.path.abspath(program))
        program = load_program(program)
    else:
        base = base_dir or os.getcwd()
    tgt = run_target(program, base, target, overrides)
    feeds: dict[str, np.ndarray] | None = None
    if isinstance(inputs, str):
        feeds = load_inputs_npz(inputs)
    elif inputs is not None:
        feeds = dict(inputs)
    elif program.weights is not None and routing is None:
        tokens = program.layers[0].tokens if program.layers else 1
        feeds = seeded_inputs(load_weights(program, base), tokens, seed)
    trace = None
    verified = False
    spec = routing or f"synth:zipf=1.0,seed={seed}"
    if (feeds is None and not program.is_static) or (routing and feeds is not None):
        verify_program(program, tgt)  # a synthetic routing is sized from the layer declarations
        verified = True
        trace = routing_for(spec, program, tgt)
        check_routings(program, tgt, trace, where=spec)
    return simulate(
        program, target=tgt, routings=trace, inputs=feeds, base_dir=base,
        record_trace=record_trace, verified=verified, allow_overflow=allow_overflow,
        layered=layered,
    )  # fmt: skip
