"""Real numbers from the program's instructions.

Dense islands run in onnx's reference evaluator on the weights companion (the residual model,
each MoE layer one ``ai.moec::MoE`` node); at each MoE node the interpreter routes the tokens
(:func:`moec.ir.moe.route`), asks the caller for that layer's per-die instructions (the runtime
expansion for this routing, or the static program's instructions of the layer) and executes
them:

* ``load``/``recv`` into a slot names the micro-slice it holds; ``free`` empties it;
* ``gemm`` computes the slice's activated intermediate for its tokens
  (:func:`moec.ir.moe.expert_hidden` over the slice's columns: gate and up projections with the
  activation, the building block ir/moe provides), ``act`` checks that it did, ``accum`` adds
  ``gate score x expert_down(slice rows)`` (the down bias with slice 0 only) into the die's
  partial outputs; a shared-expert slice adds ``shared_ffn`` of its columns;
* ``send x`` makes tokens' inputs present on the receiving die (a ``gemm`` on a die that does
  not hold its tokens' inputs is an error); ``send y`` moves partial outputs (the sender's rows
  are zeroed) and the receiver adds them.

Dies execute in program order; the k-th send a->b is the k-th recv on b. The layer's output for
a token is its home die's partial sum; partial sums left on any other die are an error. The
reference ``evaluate`` of ir/moe is never called.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from moec.backends.interp.expand import tokens_of
from moec.ir.errors import ProgramError, ScheduleError
from moec.ir.moe import (
    MoELayer,
    expert_down,
    expert_hidden,
    layer_from_config,
    present,
    route,
    shared_ffn,
)
from moec.ir.routing import LayerRouting, assign_home_dies
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import (
    Accum,
    Act,
    Free,
    Gemm,
    Instr,
    Load,
    Program,
    Recv,
    Send,
    SliceLayout,
    SliceRef,
    TokenSet,
)

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
    try:
        return onnx.load_from_string(data)
    except Exception as err:  # noqa: BLE001 - any decode failure is a bad file
        raise ProgramError(f"weights file {path} is not an ONNX model: {err}", where) from None


def _attr(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def moe_layers(model: onnx.ModelProto, where: str) -> dict[str, MoELayer]:
    """Every ``ai.moec::MoE`` node's layer, rebuilt from its attributes and initializers."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, MoELayer] = {}
    for node in model.graph.node:
        if node.op_type != "MoE" or node.domain != MOEC_DOMAIN:
            continue
        attrs = {a.name: _attr(a) for a in node.attribute}
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


class LayerExec:
    """Executes one MoE layer's per-die instructions on real arrays."""

    def __init__(
        self,
        layer: MoELayer,
        layouts: dict[tuple[str, bool], SliceLayout],
        x: np.ndarray,
        routing: LayerRouting,
    ) -> None:
        self.layer, self.x = layer, x
        T = x.shape[0]
        self.gate = np.zeros((T, layer.num_experts), dtype=np.float32)
        kept = routing.ids >= 0  # -1: a pair dropped by a runtime skip rule
        self.gate[np.nonzero(kept)[0], routing.ids[kept]] = routing.gates[kept]
        self.home = np.asarray(routing.home_die, dtype=np.int64)
        self.layouts = layouts
        self._tok: dict[TokenSet, np.ndarray] = {}

    def tok(self, ts: TokenSet) -> np.ndarray:
        a = self._tok.get(ts)
        if a is None:
            a = self._tok[ts] = tokens_of(ts)
        return a

    def cols(self, c: SliceRef) -> tuple[slice, int]:
        lay = self.layouts.get((c.layer, c.expert is None))
        if lay is None:
            raise ScheduleError(f"micro-slice {c} but layer {c.layer} has no layout")
        a, b = lay.columns[c.slice]
        return slice(a, b), c.slice

    def run(self, per_die: dict[int, list[Instr]], num_dies: int) -> np.ndarray:
        L = self.layer
        T, d = self.x.shape
        ybuf = np.zeros((num_dies, T, d), dtype=np.float32)
        has_x = np.zeros((num_dies, T), dtype=bool)
        has_x[self.home, np.arange(T)] = True
        slots: list[dict[int, SliceRef]] = [{} for _ in range(num_dies)]
        hidden: list[dict[int, tuple[TokenSet, np.ndarray | None, bool]]] = [
            {} for _ in range(num_dies)
        ]
        wires: dict[tuple[int, int], deque[Any]] = defaultdict(deque)
        pcs = dict.fromkeys(per_die, 0)
        progress = True
        while progress:
            progress = False
            for die in sorted(per_die):
                instrs = per_die[die]
                pc = pcs[die]
                while pc < len(instrs):
                    i = instrs[pc]
                    if isinstance(i, Recv) and not wires[(i.peer, die)]:
                        break
                    try:
                        self.step(die, i, ybuf, has_x, slots[die], hidden[die], wires)
                    except ScheduleError as err:
                        raise ScheduleError(
                            f"while executing '{instr_text(i)}' on die {die}: {err.message}",
                            err.where,
                        ) from None
                    pc += 1
                if pc != pcs[die]:
                    pcs[die] = pc
                    progress = True
        blocked = [die for die in per_die if pcs[die] < len(per_die[die])]
        if blocked:
            die = blocked[0]
            raise ScheduleError(
                f"layer {L.name}: die {die} blocks on '{instr_text(per_die[die][pcs[die]])}'"
            )
        y = ybuf[self.home, np.arange(T)]
        ybuf[self.home, np.arange(T)] = 0.0
        left = np.argwhere(np.any(ybuf != 0.0, axis=2))
        if left.size:
            die, t = (int(v) for v in left[0])
            raise ScheduleError(
                f"layer {L.name}: partial output of token {t} left on die {die}, which is not "
                f"its home die {int(self.home[t])}"
            )
        return y

    def step(
        self, die: int, i: Instr, ybuf: np.ndarray, has_x: np.ndarray,
        slots: dict[int, SliceRef], hidden: dict[int, tuple[TokenSet, np.ndarray | None, bool]],
        wires: dict[tuple[int, int], deque[Any]],
    ) -> None:  # fmt: skip
        L = self.layer
        if isinstance(i, Load):
            if isinstance(i.content, SliceRef):
                slots[i.slot] = i.content
        elif isinstance(i, Free):
            slots.pop(i.slot, None)
            hidden.pop(i.slot, None)
        elif isinstance(i, Send):
            if i.block is not None:
                toks = self.tok(i.block.tokens)
                if i.block.which == "x":
                    if not has_x[die, toks].all():
                        raise ScheduleError("sends inputs of tokens this die does not hold")
                    wires[(die, i.peer)].append(("x", toks))
                else:
                    wires[(die, i.peer)].append(("y", toks, ybuf[die, toks].copy()))
                    ybuf[die, toks] = 0.0
            else:
                assert i.slot is not None
                wires[(die, i.peer)].append(("slot", slots.get(i.slot)))
        elif isinstance(i, Recv):
            msg = wires[(i.peer, die)].popleft()
            if msg[0] == "x":
                has_x[die, msg[1]] = True
            elif msg[0] == "y":
                ybuf[die, msg[1]] += msg[2]
            elif i.slot is not None and isinstance(i.content, SliceRef):
                slots[i.slot] = i.content
        elif isinstance(i, Gemm | Act | Accum):
            c = slots.get(i.slot)
            if c is None or c.layer != L.name:
                return
            toks = self.tok(i.tokens)
            if isinstance(i, Gemm):
                if not has_x[die, toks].all():
                    raise ScheduleError("computes tokens whose inputs are not on this die")
                cols, _ = self.cols(c)
                h = None if c.expert is None else expert_hidden(L, c.expert, self.x[toks], cols)
                hidden[i.slot] = (i.tokens, h, False)
                return
            got = hidden.get(i.slot)
            if got is None or got[0] != i.tokens:
                raise ScheduleError(f"{i.opcode} of tokens without a matching gemm")
            if isinstance(i, Act):
                hidden[i.slot] = (got[0], got[1], True)
                return
            if not got[2]:
                raise ScheduleError("accum before act")
            cols, j = self.cols(c)
            if c.expert is None:
                ybuf[die, toks] += shared_ffn(L, self.x[toks], cols, with_gate=True)
            else:
                assert got[1] is not None
                part = expert_down(L, c.expert, got[1], cols, with_bias=(j == 0))
                ybuf[die, toks] += part * self.gate[toks, c.expert][:, None]


#: ``instructions(layer name, routing) -> {die: [instructions]}`` for one MoE layer
LayerInstructions = Callable[[str, LayerRouting], dict[int, list[Instr]]]


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

    Returns the graph outputs by name and the routing each layer saw (in execution order).
    """
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
        r = LayerRouting(name, layer.num_experts, layer.top_k, ids, gates, home)
        routings.append(r)
        per_die = instructions(name, r)
        y = LayerExec(layer, layouts, x2, r).run(per_die, num_dies)
        return y.reshape(shape).astype(x.dtype, copy=False)

    class MoE(OpRun):  # the ai.moec::MoE node, executed by the interpreter
        op_domain = MOEC_DOMAIN

        def _run(self, x: np.ndarray, **kwargs: Any) -> tuple[np.ndarray]:
            name = next(_attr(a) for a in self.onnx_node.attribute if a.name == "layer")
            return (run_layer(name, x),)

    try:
        sess = ReferenceEvaluator(model, new_ops=[MoE])
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


def seeded_inputs(model: onnx.ModelProto, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for the model's graph inputs.

    Symbolic dimensions become 1, except the last symbolic one of each input, which gets
    ``tokens`` (``[T]``, ``[B, S]`` and ``[B, S, d]`` inputs all give ``tokens`` tokens). Integer
    inputs that index a constant table (a ``Gather`` on an initializer, like token ids into an
    embedding) get ids in range; other integers are 0/1; floats are standard normal.
    """
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    ranges: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            ranges[node.input[1]] = int(inits[node.input[0]].dims[0])
    out: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        sym = [k for k, v in enumerate(dims) if v < 0]
        shape = [v if v >= 0 else 1 for v in dims]
        if sym:
            shape[sym[-1]] = tokens
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.integer):
            out[vi.name] = rng.integers(0, ranges.get(vi.name, 2), size=shape).astype(dtype)
        elif dtype == np.bool_:
            out[vi.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
    return out
