"""Does a compiled program compute what the model computes? The API behind ``moec check``.

:func:`check_model` compiles the model in exact mode (no passes: no precision change, no
skipping) into a temporary folder, runs the interpreter's numerics on seeded inputs
(:func:`model_inputs`: token ids in the embedding's range, symbolic dimensions at small sizes:
batch 2, others 8, or ``dims``), runs ONNX Runtime on the original model with the same inputs,
and compares every graph output (``backends/ort/check.py`` defines the errors).

:func:`reference_run` (inputs and ORT's outputs on the original model) and :func:`interpret` (the
interpreter's outputs and dropped pairs) are the pieces :mod:`moec.approx` and ``moec bench
--accuracy`` share with it.

:func:`dump_trace` (``moec trace dump``) runs the original model in ONNX Runtime on the same
generated inputs and records every MoE layer's routing.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from moec.backends.ort.check import (
    CheckReport,
    OutputError,
    compare,
    dims_of,
    load_inputs,
    make_inputs,
    run_session,
    session,
    with_outputs,
)
from moec.backends.ort.extract import LayerExtractor
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
from moec.ir.errors import ModelError, MoecError, ReferenceRefused, TraceError
from moec.ir.graph import Module
from moec.ir.llm_inputs import llm_signature
from moec.ir.moe import MoELayer, route
from moec.ir.routing import LayerRouting, RoutingTrace, assign_home_dies
from moec.ir.stream import Program, load_program


def model_inputs(
    module: Module,
    lifted: LiftResult,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
    model_path: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The inputs of a run (from ``inputs`` or seeded) and the symbolic dimensions they fix.

    Seeded inputs of a decoder LLM follow its generation signature (:mod:`moec.ir.llm_inputs`:
    ``genai_config.json`` beside ``model_path``, an all-ones attention mask, past lengths)."""
    feeds, resolved, _ = _inputs_and_steps(module, lifted, seed, dims, inputs, model_path)
    return feeds, resolved


Step = tuple[str, dict[str, np.ndarray], dict[str, int]]


def _inputs_and_steps(
    module: Module,
    lifted: LiftResult,
    seed: int,
    dims: Mapping[str, int] | None,
    inputs: str | None,
    model_path: str | None,
) -> tuple[dict[str, np.ndarray], dict[str, int], list[Step]]:
    """:func:`model_inputs`, and the other generation steps (description, inputs, dims) to seed
    when ONNX Runtime refuses these (:meth:`~moec.ir.llm_inputs.LLMSignature.other_steps`)."""
    if inputs is not None:
        feeds = load_inputs(inputs, lifted.model)
        return feeds, resolve_dims(module, dims_of(lifted.model, feeds)), []
    shapes = {v.name: tuple(v.type.shape) if v.type else () for v in module.inputs}
    signature = llm_signature(model_path or lifted.source or None, shapes)
    given = dict(dims or {})
    resolved = signature.resolve(resolve_dims(module, {**signature.dims, **given}), given)
    steps = [
        (what, make_inputs(lifted.model, other, seed, signature), other)
        for what, other in signature.other_steps(resolved, given)
    ]
    return make_inputs(lifted.model, resolved, seed, signature), resolved, steps


def seeded_ort_run(
    module: Module,
    lifted: LiftResult,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
    model_path: str | None = None,
    extra: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, np.ndarray], str]:
    """Inputs (:func:`model_inputs`), their dims, ORT's outputs (and intermediate values
    ``extra``) on the original model, and a note ("" when none).

    When ORT refuses the seeded generation step of a decoder LLM, the other steps its signature
    allows are tried in order and the note says which one ran and why; when all are refused,
    the error is the first refusal's."""
    feeds, resolved, steps = _inputs_and_steps(module, lifted, seed, dims, inputs, model_path)
    sess = session(with_outputs(lifted.model, extra))
    try:
        return feeds, resolved, run_session(sess, feeds), ""
    except ModelError as err:
        for what, other_feeds, other_dims in steps:
            try:
                want = run_session(sess, other_feeds)
            except ModelError:
                continue
            step = ", ".join(f"{k}={v}" for k, v in sorted(resolved.items()) if "length" in k)
            note = f"ONNX Runtime refused the seeded step ({step}: {err.message}); checked {what}"
            return other_feeds, other_dims, want, note
        raise


@dataclass(frozen=True)
class Reference:
    """Seeded (or given) inputs of a model and ONNX Runtime's outputs on the original model;
    ``note`` says when the seeded generation step was replaced by another (:func:`seeded_ort_run`)."""

    model: str
    feeds: dict[str, np.ndarray]
    dims: dict[str, int]
    want: dict[str, np.ndarray]
    note: str = ""


def reference_of(
    model: str,
    module: Module,
    lifted: LiftResult,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
) -> Reference:
    """The inputs of a run of a loaded ``model`` (:func:`model_inputs`) and ORT's outputs on
    the original model."""
    feeds, resolved, want, note = seeded_ort_run(
        module, lifted, seed=seed, dims=dims, inputs=inputs, model_path=model
    )
    return Reference(model, feeds, resolved, want, note)


def reference_run(
    model: str,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
) -> Reference:
    """The inputs of a numerical comparison and ORT's outputs on the original ``model``; a
    shape-only model is a :class:`MoecError`."""

    module, lifted, _ = load_model(model)
    if not module.moe_ops() or not all(op.layer.weights_present for op in module.moe_ops()):
        raise MoecError("model has no weights (shape-only): nothing to check numerically", model)
    return reference_of(model, module, lifted, seed=seed, dims=dims, inputs=inputs)


def interpret(
    program: Program, path: str, feeds: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int, int]:
    """Interpreter outputs (a program file at ``path`` finds its weights companion beside it)
    and (dropped, total) (token, expert) pairs over all layers."""
    from moec.backends.interp import simulate

    result = simulate(
        program, inputs=dict(feeds), base_dir=os.path.dirname(os.path.abspath(path)),
        allow_overflow=True,  # numbers only: no latency is reported, SRAM does not change them
    )  # fmt: skip
    if not result.outputs:
        raise MoecError("the interpreter returned no graph outputs", path)
    dropped = sum(int(np.count_nonzero(r.ids < 0)) for r in result.routings)
    total = sum(int(r.ids.size) for r in result.routings)
    return {k: np.asarray(v) for k, v in result.outputs.items()}, dropped, total


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
    alternatives: int = 0,
    per_layer: bool = False,
) -> CheckReport:
    """Compile ``model`` exactly, interpret it and compare with ONNX Runtime (``alternatives``:
    a program choosing online among that many, :mod:`moec.online`).

    When ONNX Runtime cannot load or run the whole model (or with ``per_layer``), each lifted
    MoE layer is checked alone instead (:func:`check_layers`) and the report's note says why."""
    module, lifted, _ = load_model(model)
    if not has_weights(module):
        raise MoecError("model has no weights (shape-only): nothing to check numerically", model)
    options = CheckOptions(target, tuple(overrides), strategy, seed, tol, alternatives)
    if per_layer:
        return check_layers(model, module, lifted, options, dims, inputs, "")
    try:
        ref = reference_of(model, module, lifted, seed=seed, dims=dims, inputs=inputs)
    except ReferenceRefused as err:
        if not lifted.lifted:
            raise
        return check_layers(model, module, lifted, options, dims, inputs, err.message)
    return _check_against(model, ref, options)


@dataclass(frozen=True)
class CheckOptions:
    """How :func:`check_model` compiles and compares (its keyword arguments)."""

    target: str = DEFAULT_TARGET
    overrides: tuple[tuple[str, int | float | str], ...] = ()
    strategy: str = "ep"
    seed: int = 0
    tol: float = 1e-4
    alternatives: int = 0


def _check_against(model: str, ref: Reference, options: CheckOptions) -> CheckReport:
    """Compile ``model`` exactly, interpret it on ``ref``'s inputs and compare with ``ref``."""
    target, overrides, strategy = options.target, options.overrides, options.strategy
    dims, alternatives, tol = ref.dims, options.alternatives, options.tol
    with tempfile.TemporaryDirectory(prefix="moec-check-") as tmp:
        path = os.path.join(tmp, "check.msp")
        compiled = compile_model(
            model,
            path,
            target=target,
            overrides=overrides,
            strategy=strategy,
            dims=dims,
            alternatives=alternatives,
        )
        write_compiled(compiled, path)
        got, _, _ = interpret(load_program(path), path, ref.feeds)
    report = compare(got, ref.want, tol)
    report.note = ref.note
    return report


def check_layers(
    model: str,
    module: Module,
    lifted: LiftResult,
    options: CheckOptions,
    dims: Mapping[str, int] | None,
    inputs: str | None,
    reason: str,
) -> CheckReport:
    """Each lifted MoE layer alone: the original model's subgraph from the layer's inputs to its
    output (:mod:`moec.backends.ort.extract`), on seeded inputs (the whole model's dimension
    sizes), compiled, interpreted and compared with ONNX Runtime on that subgraph. ``reason``:
    why ORT could not run the whole model ("" when asked for, ``--per-layer``)."""
    _, resolved, _ = _inputs_and_steps(module, lifted, options.seed, dims, inputs, model)
    extractor = LayerExtractor(lifted.model, [(lf.input, lf.output) for lf in lifted.lifted])
    outputs: list[OutputError] = []
    for lf in lifted.lifted:
        where = f"{model}: MoE layer {lf.layer.name}"
        with tempfile.TemporaryDirectory(prefix="moec-layer-") as tmp:
            path = os.path.join(tmp, "layer.onnx")
            unsized: list[str] = []
            try:
                sub, _ = extractor.subgraph(lf.nodes, lf.input, lf.output)
                unsized = sorted(
                    {d.dim_param for vi in sub.graph.input for d in vi.type.tensor_type.shape.dim}
                    - set(resolved) - {""}
                )  # fmt: skip
                onnx.save(sub, path)
                sub_module, sub_lifted, _ = load_model(path)
                if len(sub_lifted.lifted) != 1:
                    raise ModelError(
                        f"its subgraph alone lifts to {len(sub_lifted.lifted)} MoE layers, not 1"
                    )
                ref = reference_of(path, sub_module, sub_lifted, seed=options.seed, dims=resolved)
                report = _check_against(path, ref, options)
            except MoecError as err:
                inner = err.where if err.where is not None and tmp not in str(err.where) else None
                message = err.message
                if isinstance(err, ReferenceRefused) and unsized:  # a size inference left open
                    message += (
                        f" (its input's dimension {unsized[0]} was not inferred and took a default "
                        f"size: --dims {unsized[0]}=N sets it)"
                    )
                raise type(err)(message, where + (f": {inner}" if inner else "")) from None
        outputs += [dataclasses.replace(o, layer=lf.layer.name) for o in report.outputs]
    if reason:
        why = reason.removeprefix("ONNX Runtime ")
        note = (
            f"ONNX Runtime could not run the whole model ({why}); each MoE layer was checked alone"
        )
    else:
        note = "each MoE layer was checked alone (--per-layer)"
    return CheckReport(outputs, options.tol, note)


def routed(layer: MoELayer, x: np.ndarray, home: np.ndarray) -> LayerRouting:
    """The routing of tokens ``x`` [T, d] by ``layer``'s own router, tokens on dies ``home``."""
    ids, gates = route(layer, x)
    return LayerRouting(
        layer.name, layer.num_experts, layer.top_k, ids.astype(np.int64),
        gates.astype(np.float32), home,
    )  # fmt: skip


def dump_trace(
    model: str,
    *,
    seed: int = 0,
    dims: Sequence[str] | Mapping[str, int] = (),
    inputs: str | None = None,
    num_dies: int | None = None,
    target: str | None = None,
    home: str = "blocks",
    on_stage: Callable[[str, int], None] | None = None,
) -> RoutingTrace:
    """Routing of every MoE layer on one ONNX Runtime run of ``model`` (``moec trace dump``).

    ``on_stage(next, total)`` is called after loading, after the ONNX Runtime run and after each
    MoE layer is routed: ``total = 2 + layers`` calls, each with what comes next (a progress bar).
    """
    if target is not None:
        from moec.ir.target import load_target

        num_dies = load_target(target).num_dies
    dies = num_dies if num_dies is not None else 4
    module, lifted, name = load_model(model)
    given = parse_dims(dims) if not isinstance(dims, Mapping) else dict(dims)
    if not lifted.lifted:
        raise TraceError("model has no MoE layer to route", model)
    total = 2 + len(list(module.moe_ops()))

    def stage(status: str) -> None:
        if on_stage is not None:
            on_stage(status, total)

    stage(f"running {name} in ONNX Runtime")
    _, resolved, captured, _ = seeded_ort_run(
        module, lifted, seed=seed, dims=given, inputs=inputs, model_path=model,
        extra=[lf.input for lf in lifted.lifted],
    )  # fmt: skip
    stage("routing the MoE layers")
    layers = []
    tokens: int | None = None
    for op in module.moe_ops():
        layer = op.layer
        x_name = op.inputs[0].name if op.inputs[0] is not None else ""
        x = captured[x_name].reshape(-1, layer.hidden)
        tokens = x.shape[0] if tokens is None else tokens
        if x.shape[0] != tokens:
            raise TraceError(
                f"MoE layer {layer.name} sees {x.shape[0]} tokens, earlier layers {tokens}", model
            )
        layers.append(routed(layer, x, assign_home_dies(x.shape[0], dies, home)))
        stage(f"routed {layer.name}")
    provenance: dict[str, Any] = {
        "source": "dump", "model_file": os.path.basename(model), "seed": seed, "home": home,
        "dims": dict(resolved), "inputs": os.path.basename(inputs) if inputs else "seeded",
    }  # fmt: skip
    return RoutingTrace(name, dies, layers, provenance)
