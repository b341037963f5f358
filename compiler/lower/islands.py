"""Dense islands: the ordinary ops between MoE layers, their estimated cost, and the die streams.

**Dense island estimate** (an estimate, documented so it can be argued with): ``MatMul``/``Gemm``
with a constant weight ``[K, N]``: ``2 * rows * K * N`` FLOPs, the weight's bytes from DRAM;
``MatMul`` of two activations: ``2 * numel(out) * K`` FLOPs, no DRAM; ``Gather`` on a constant
table (embedding): the bytes of the rows read, no FLOPs; shape and data-movement ops (Reshape,
Transpose, Concat, Cast, ...): nothing; every other op (elementwise, normalizations, softmax):
one FLOP per output element (tokens x width) plus the bytes of its constant inputs. Floating-point
weights count at the program's precision. The router of MoE layer ``i`` (``2 * T * d * E`` FLOPs,
its weights' bytes) is counted in the island before it. Values whose size is unknown count zero.

:func:`die_streams` splits each island evenly over the dies (``dense`` per die), separated from
the MoE layers by ``signal``/``wait`` barriers, with one ``moe L`` placeholder per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from moec.compiler.lower.dims import DATA_MOVEMENT, Size, numel, value_sizes
from moec.compiler.lower.slots import LayerPlan
from moec.ir.graph import DTYPE_BYTES, Module, Op, Weight
from moec.ir.stream import Dense, DieStream, IslandDecl, MoE, Signal, Wait
from moec.ir.target import PRECISION_BYTES, Target


def _weight_bytes(w: Weight, dtype: str) -> int:
    if w.type.dtype in ("f64", "f32", "f16", "bf16"):
        return int(math.ceil(w.type.numel * PRECISION_BYTES[dtype]))
    return int(math.ceil(w.type.numel * DTYPE_BYTES[w.type.dtype]))


def op_cost(op: Op, shapes: Mapping[str, Size], dtype: str) -> tuple[int, int]:
    """Estimated (FLOPs, DRAM bytes) of one dense op (see the module docstring)."""
    ins = op.inputs
    if (
        op.kind in ("MatMul", "Gemm")
        and len(ins) >= 2
        and ins[0] is not None
        and ins[1] is not None
    ):
        a, b = ins[0], ins[1]
        if b.weight is not None and len(b.weight.type.shape) >= 2:
            shape = b.weight.type.shape
            k, n = int(shape[-2]), int(shape[-1])
            if op.kind == "Gemm" and op.attrs.get("transB", 0):
                k, n = n, k
            rows = (numel(a, shapes) or 0) // max(k, 1)
            nbytes = sum(
                _weight_bytes(v.weight, dtype) for v in ins[1:] if v is not None and v.weight
            )
            return 2 * rows * k * n, nbytes
        a_size = shapes.get(a.name)
        if a_size is not None and a_size[1]:
            out = numel(op.outputs[0], shapes) or 0
            return 2 * out * a_size[1], 0
        return 0, 0
    if op.kind == "Gather" and ins and ins[0] is not None and ins[0].weight is not None:
        table = ins[0].weight
        if int(op.attrs.get("axis", 0)) == 0 and table.type.shape and len(ins) > 1:
            rows = numel(ins[1], shapes) or 0
            row_bytes = _weight_bytes(table, dtype) // max(int(table.type.shape[0]), 1)
            return 0, rows * row_bytes
        return 0, 0
    if op.kind in DATA_MOVEMENT:
        return 0, 0
    flops = sum(numel(v, shapes) or 0 for v in op.outputs)
    nbytes = sum(_weight_bytes(v.weight, dtype) for v in ins if v is not None and v.weight)
    return flops, nbytes


def dense_islands(
    module: Module, plans: list[LayerPlan], dims: Mapping[str, int], tokens: int, dtype: str
) -> list[IslandDecl]:
    """The dense islands between (and around) the MoE layers, with their estimated cost."""
    segments: list[list[Op]] = [[]]
    for op in module.ops:
        if op.is_moe:
            segments.append([])
        else:
            segments[-1].append(op)
    shapes = value_sizes(module, dims)
    out = []
    for i, ops in enumerate(segments):
        flops = nbytes = 0
        for op in ops:
            f, b = op_cost(op, shapes, dtype)
            flops, nbytes = flops + f, nbytes + b
        if i < len(plans):  # the router of the layer this island feeds
            layer = plans[i].layer
            flops += 2 * tokens * layer.hidden * layer.num_experts
            router = [
                layer.weights[k]
                for k in ("router_w", "router_b", "router_in_scale")
                if layer.has(k)
            ]
            nbytes += sum(_weight_bytes(w, plans[i].decl.dtype) for w in router)
        out.append(IslandDecl(f"island{i}", flops, nbytes))
    return out


def _share(total: int, n: int, i: int) -> int:
    base, extra = divmod(total, n)
    return base + (1 if i < extra else 0)


def die_streams(
    target: Target, plans: list[LayerPlan], islands: list[IslandDecl]
) -> list[DieStream]:
    """Every die's stream: its share of each island, barriers, and one ``moe`` per layer."""
    n = target.num_dies
    events = 0
    body: list[tuple[str, object]] = []

    def barrier() -> None:
        nonlocal events
        if body and body[-1][0] == "barrier":
            return
        body.append(("barrier", f"sync{events}"))
        events += 1

    for i, isl in enumerate(islands):
        if isl.flops or isl.nbytes:
            body.append(("dense", isl))
        if i < len(plans):
            barrier()
            body.append(("moe", plans[i].name))
            barrier()
    streams = []
    for d in range(n):
        instrs: list = []
        for kind, item in body:
            if kind == "dense":
                assert isinstance(item, IslandDecl)
                instrs.append(Dense(item.name, _share(item.flops, n, d), _share(item.nbytes, n, d)))
            elif kind == "barrier":
                instrs += [Signal(str(item)), Wait(str(item), n)]
            else:
                instrs.append(MoE(str(item)))
        streams.append(DieStream(d, instrs))
    return streams
