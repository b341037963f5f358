"""Real numbers from the program's instructions.

Dense islands run in onnx's reference evaluator on the weights companion (the residual model,
each MoE layer one ``ai.moec::MoE`` node); at each MoE node the interpreter routes the tokens
(:func:`moec.ir.moe.route`), asks the caller for that layer's routing after the runtime rules
and its per-die instructions (the runtime expansion for this routing, or the static program's
instructions of the layer) and executes them (:class:`~.numerics_ops.LayerExec`: one numerics
handler per opcode). The reference ``evaluate`` of ir/moe is never called.

The companion also records each MoE layer's per-expert weight precision when the compiler
quantized its experts (``assign-precision``: node attribute ``precision``, one name per expert;
absent: every expert at the layer's dtype); :func:`check_precision` holds a program's precision
tables to it, so a table edited without the weights is a located error, not timing for one
precision and numbers for another.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from moec.backends.interp.numerics_ops import LayerExec
from moec.ir.companion import PRECISION_ATTR
from moec.ir.errors import ProgramError, ScheduleError
from moec.ir.inputs import seeded_feeds
from moec.ir.moe import MoELayer, identity_weight, layer_from_config, present, route
from moec.ir.routing import LayerRouting, assign_home_dies
from moec.ir.stream.program import Instr, Program, SliceLayout

if TYPE_CHECKING:  # onnx is imported where it is used: a timing-only run never loads it
    import onnx

MOEC_DOMAIN = "ai.moec"


def weights_path(p: Program, base_dir: str | None) -> str:
    assert p.weights is not None
    if os.path.isabs(p.weights.path):
        return p.weights.path
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(p.filename))
    return os.path.join(base, p.weights.path)


def load_weights(p: Program, base_dir: str | None) -> onnx.ModelProto:
    """The weights companion, after checking that it exists and its SHA-256 matches."""
    where = p.weights.loc if p.weights is not None and p.weights.loc else p.filename
    if p.weights is None:
        raise ProgramError("numerics need weights, but the program declares no weights file", where)
    path = weights_path(p, base_dir)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ProgramError(f"cannot read weights file {path}: {err.strerror}", where) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != p.weights.sha256.lower():
        raise ProgramError(
            f"weights file {path} has sha256 {digest}, the program expects {p.weights.sha256}",
            where,
        )
    import onnx

    try:
        return onnx.load_from_string(data)
    except Exception as err:  # noqa: BLE001 - any decode failure is a bad file
        raise ProgramError(f"weights file {path} is not an ONNX model: {err}", where) from None


def _attr(a: onnx.AttributeProto) -> Any:
    from onnx.helper import get_attribute_value

    v = get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def moe_layers(model: onnx.ModelProto, where: str) -> dict[str, MoELayer]:
    """Every ``ai.moec::MoE`` node's layer, rebuilt from its attributes and initializers."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, MoELayer] = {}
    for node in model.graph.node:
        if node.op_type != "MoE" or node.domain != MOEC_DOMAIN:
            continue
        attrs = {a.name: _attr(a) for a in node.attribute}
        attrs.pop(PRECISION_ATTR, None)
        name = attrs.pop("layer", None)
        if not isinstance(name, str):
            raise ProgramError(f"MoE node {node.name!r} has no 'layer' attribute", where)
        weights = {}
        prefix = f"{name}."
        for init_name, t in inits.items():
            if init_name.startswith(prefix):
                key = init_name[len(prefix) :]
                weights[key] = present(init_name, numpy_helper.to_array(t))
        out[name] = layer_from_config(name, attrs, weights)
    return out


def weights_precision(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Per MoE layer whose experts the compiler quantized, each expert's recorded precision."""
    from onnx.helper import get_attribute_value

    out: dict[str, tuple[str, ...]] = {}
    for node in model.graph.node:
        if node.op_type != "MoE" or node.domain != MOEC_DOMAIN:
            continue
        attrs = {a.name: a for a in node.attribute}
        if PRECISION_ATTR in attrs and "layer" in attrs:
            values = get_attribute_value(attrs[PRECISION_ATTR])
            out[str(_attr(attrs["layer"]))] = tuple(
                v.decode() if isinstance(v, bytes) else str(v) for v in values
            )
    return out


def check_precision(p: Program, recorded: dict[str, tuple[str, ...]]) -> None:
    """Every runtime policy's precision table agrees with the weights companion.

    A layer the companion records nothing for holds its experts at the layer's dtype; a policy
    without a table runs them all at the layer's dtype. The first expert that differs is a
    :class:`ProgramError` at the table (or the policy, when it has none).
    """
    for r in p.runtime:
        decl = p.layer(r.layer)
        if decl is None:
            continue
        table = r.precision or (decl.dtype,) * decl.experts
        weights = recorded.get(r.layer, (decl.dtype,) * decl.experts)
        if len(weights) != len(table):
            raise ProgramError(
                f"runtime {r.layer}: the weights file records {len(weights)} expert "
                f"precisions, the layer has {decl.experts} experts",
                r.precision_loc or r.loc or p.filename,
            )
        for e, (said, held) in enumerate(zip(table, weights, strict=True)):
            if said != held:
                whose = "precision table" if r.precision else "layer dtype (no precision table)"
                raise ProgramError(
                    f"runtime {r.layer}: the {whose} says expert {e} is {said}, but the "
                    f"weights file holds it at {held}; compile the program again (numerics "
                    "follow the weights, timing follows the table)",
                    r.precision_loc or r.loc or p.filename,
                )


#: ``instructions(layer name, routing) -> (routing after the runtime rules, {die: [instructions]})``
#: for one MoE layer
LayerInstructions = Callable[[str, LayerRouting], tuple[LayerRouting, dict[int, list[Instr]]]]


def check_companion(p: Program, model: onnx.ModelProto) -> dict[str, MoELayer]:
    """The weights companion holds what the program declares, checked before anything runs.

    Every MoE layer the companion defines is declared by the program with the same experts,
    top-k, hidden and FFN sizes, and a shared expert exactly when the declaration has one; and
    the runtime policies' precision tables agree with it (:func:`check_precision`). Returns the
    companion's layers.
    """
    layers = moe_layers(model, p.filename)
    for name, layer in layers.items():
        decl = p.layer(name)
        if decl is None:
            raise ProgramError(
                f"the weights have MoE layer {name}, the program does not", p.filename
            )
        shared = layer.shared_ffn if layer.has_shared else 0
        said = (decl.experts, decl.top_k, decl.hidden, decl.ffn, decl.shared_ffn)
        held = (layer.num_experts, layer.top_k, layer.hidden, layer.ffn, shared)
        if said != held:
            keys = ("experts", "top_k", "hidden", "ffn", "shared_ffn")
            diff = ", ".join(
                f"{k} {a} vs {b}" for k, a, b in zip(keys, said, held, strict=True) if a != b
            )
            raise ProgramError(
                f"MoE layer {name}: the declaration and the weights file disagree ({diff}, "
                "declared vs held); compile the program again",
                decl.loc or p.filename,
            )
    check_precision(p, weights_precision(model))
    return layers


def evaluate_model(
    model: onnx.ModelProto,
    layers: dict[str, MoELayer],
    inputs: dict[str, np.ndarray],
    *,
    num_dies: int,
    tokens: dict[str, int],
    layouts: dict[tuple[str, bool], SliceLayout],
    instructions: LayerInstructions,
    home_die: dict[str, np.ndarray] | None = None,
    where: str = "",
) -> tuple[dict[str, np.ndarray], list[LayerRouting]]:
    """Run the residual model with every MoE layer executed from its instructions.

    Returns the graph outputs by name and the routing each layer ran with, after its runtime
    rules (in execution order).
    """
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    routings: list[LayerRouting] = []

    def run_layer(name: str, x: np.ndarray) -> np.ndarray:
        layer = layers.get(name)
        if layer is None:
            raise ProgramError(f"weights file has no MoE layer {name}", where)
        shape = x.shape
        x2 = np.asarray(x, dtype=np.float32).reshape(-1, layer.hidden)
        T = x2.shape[0]
        if name in tokens and tokens[name] != T:
            raise ScheduleError(
                f"layer {name} is compiled for {tokens[name]} tokens, the inputs give {T}", where
            )
        ids, gates = route(layer, x2)
        home = (
            home_die[name]
            if home_die is not None and name in home_die
            else assign_home_dies(T, num_dies, "blocks")
        )
        r, per_die = instructions(
            name, LayerRouting(name, layer.num_experts, layer.top_k, ids, gates, home)
        )
        routings.append(r)
        y = LayerExec(layer, layouts, x2, r).run(per_die, num_dies)
        if layer.identity_experts:
            # Identity ("zero") experts: the token times its picks' gates, added where the
            # layer's output is combined; no instruction moves or computes them.
            y = y + x2 * identity_weight(layer, x2)
        return y.reshape(shape).astype(x.dtype, copy=False)

    class MoE(OpRun):  # the ai.moec::MoE node, executed by the interpreter
        op_domain = MOEC_DOMAIN

        def _run(self, x: np.ndarray, **kwargs: Any) -> tuple[np.ndarray]:
            name = next(_attr(a) for a in self.onnx_node.attribute if a.name == "layer")
            return (run_layer(name, x),)

    class GatherElements(OpRun):
        # As ONNX Runtime (and torch.gather): indices may be smaller than the data on the axes
        # other than ``axis`` (Inkling's relative-position bias); onnx's reference requires equal.
        def _run(self, data: np.ndarray, indices: np.ndarray, axis: int = 0) -> tuple[np.ndarray]:
            axis = axis % data.ndim
            cut = tuple(
                slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape)
            )
            idx = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data[cut], idx, axis=axis),)

    if needs_runtime(model):
        from moec.backends.interp.stages import run_staged

        def run_node(node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
            name = next(_attr(a) for a in node.attribute if a.name == "layer")
            return run_layer(name, x)

        feed = {k: v for k, v in inputs.items() if k in {i.name for i in model.graph.input}}
        outputs = run_staged(model, feed, lambda n: n.domain == MOEC_DOMAIN, run_node, where)
        return outputs, routings
    try:
        sess = ReferenceEvaluator(model, new_ops=[MoE, GatherElements])
    except Exception as err:  # noqa: BLE001 - onnx raises many types for a bad graph
        raise ProgramError(f"weights model cannot be evaluated: {err}", where) from None
    names = [o.name for o in model.graph.output]
    feed = {k: v for k, v in inputs.items() if k in {i.name for i in model.graph.input}}
    try:
        outs = sess.run(None, feed)
    except (ScheduleError, ProgramError):
        raise
    except RuntimeError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ScheduleError | ProgramError):
            raise cause from None
        raise
    return dict(zip(names, (np.asarray(o) for o in outs), strict=True)), routings


def needs_runtime(model: onnx.ModelProto) -> bool:
    """True when the dense part holds ops only ONNX Runtime defines (contrib domains, or
    default-domain ops ONNX has no schema for), which onnx's reference evaluator cannot run."""
    import onnx

    for node in model.graph.node:
        if node.domain == MOEC_DOMAIN:
            continue
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
            return True
    return False


def seeded_inputs(model: onnx.ModelProto, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for the model's graph inputs (:mod:`moec.ir.inputs`): the last symbolic
    dimension of each input gets ``tokens``, the others 1."""
    from moec.backends.ort.check import input_specs

    return seeded_feeds(input_specs(model, tokens=tokens), seed)
