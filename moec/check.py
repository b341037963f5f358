"""Does a compiled program compute what the model computes? The API behind ``moec check``.

:func:`check_model` compiles the model in exact mode (no passes: no precision change, no
skipping) into a temporary folder, runs the interpreter's numerics on seeded inputs
(:func:`model_inputs`: token ids in the embedding's range, symbolic dimensions at small sizes:
batch 2, others 8, or ``dims``), runs ONNX Runtime on the original model with the same inputs,
and compares every graph output (``backends/ort/check.py`` defines the errors).

:func:`dump_trace` (``moec trace dump``) runs the original model in ONNX Runtime on the same
generated inputs and records every MoE layer's routing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moec.backends.ort.check import (
    CheckReport,
    compare,
    dims_of,
    load_inputs,
    make_inputs,
    run_ort,
)
from moec.compile import (
    DEFAULT_TARGET,
    compile_model,
    load_model,
    parse_dims,
    write_compiled,
)
from moec.compiler.frontend import LiftResult
from moec.compiler.lower import resolve_dims
from moec.compiler.lower.weights_file import has_weights
from moec.ir.errors import MoecError, TraceError
from moec.ir.graph import Module
from moec.ir.moe import route
from moec.ir.routing import LayerRouting, RoutingTrace, assign_home_dies
from moec.ir.stream import load_program


def model_inputs(
    module: Module,
    lifted: LiftResult,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The inputs of a run (from ``inputs`` or seeded) and the symbolic dimensions they fix."""
    if inputs is not None:
        feeds = load_inputs(inputs, lifted.model)
        return feeds, resolve_dims(module, dims_of(lifted.model, feeds))
    resolved = resolve_dims(module, dims)
    return make_inputs(lifted.model, resolved, seed), resolved


def _interpret(program_path: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Graph outputs computed by the interpreter from the program and its companion."""
    from moec.backends.interp import simulate

    program = load_program(program_path)
    result = simulate(
        program, inputs=dict(feeds), base_dir=os.path.dirname(os.path.abspath(program_path)),
        allow_overflow=True,  # numbers only: no latency is reported, SRAM does not change them
    )  # fmt: skip
    outputs = result.outputs
    if not outputs:
        raise MoecError("the interpreter returned no graph outputs", program_path)
    return {k: np.asarray(v) for k, v in outputs.items()}


def check_model(
    model: str,
    *,
    target: str = DEFAULT_TARGET,
    overrides: Sequence[tuple[str, int | float | str]] = (),
    strategy: str = "ep",
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
    tol: float = 1e-4,
) -> CheckReport:
    """Compile ``model`` exactly, interpret it and compare with ONNX Runtime."""
    module, lifted, _ = load_model(model)
    if not has_weights(module):
        raise MoecError("model has no weights (shape-only): nothing to check numerically", model)
    feeds, resolved = model_inputs(module, lifted, seed=seed, dims=dims, inputs=inputs)
    want = run_ort(lifted.model, feeds)
    with tempfile.TemporaryDirectory(prefix="moec-check-") as tmp:
        path = os.path.join(tmp, "check.msp")
        compiled = compile_model(
            model, path, target=target, overrides=overrides, strategy=strategy, dims=resolved
        )
        write_compiled(compiled, path)
        got = _interpret(path, feeds)
    return compare(got, want, tol)


def dump_trace(
    model: str,
    *,
    seed: int = 0,
    dims: Sequence[str] | Mapping[str, int] = (),
    inputs: str | None = None,
    num_dies: int | None = None,
    target: str | None = None,
    home: str = "blocks",
) -> RoutingTrace:
    """Routing of every MoE layer on one ONNX Runtime run of ``model`` (``moec trace dump``)."""
    if target is not None:
        from moec.ir.target import load_target

        num_dies = load_target(target).num_dies
    dies = num_dies if num_dies is not None else 4
    module, lifted, name = load_model(model)
    given = parse_dims(dims) if not isinstance(dims, Mapping) else dict(dims)
    feeds, resolved = model_inputs(module, lifted, seed=seed, dims=given, inputs=inputs)
    if not lifted.lifted:
        raise TraceError("model has no MoE layer to route", model)
    captured = run_ort(lifted.model, feeds, [lf.input for lf in lifted.lifted])
    layers = []
    tokens: int | None = None
    for op in module.moe_ops():
        layer = op.attrs["layer"]
        x_name = op.inputs[0].name if op.inputs[0] is not None else ""
        x = captured[x_name].reshape(-1, layer.hidden)
        ids, gates = route(layer, x)
        tokens = x.shape[0] if tokens is None else tokens
        if x.shape[0] != tokens:
            raise TraceError(
                f"MoE layer {layer.name} sees {x.shape[0]} tokens, earlier layers {tokens}", model
            )
        layers.append(
            LayerRouting(
                layer.name,
                layer.num_experts,
                layer.top_k,
                ids.astype(np.int64),
                gates.astype(np.float32),
                assign_home_dies(x.shape[0], dies, home),
            )  # fmt: skip
        )
    provenance: dict[str, Any] = {
        "source": "dump", "model_file": os.path.basename(model), "seed": seed, "home": home,
        "dims": dict(resolved), "inputs": os.path.basename(inputs) if inputs else "seeded",
    }  # fmt: skip
    return RoutingTrace(name, dies, layers, provenance)
