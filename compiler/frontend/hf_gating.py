"""Expert gating in Hugging Face exports: how the fused gate/up projection becomes the input of
the down projection.

The fused projection's output columns are cut in two (``Split``, or two ``Slice`` nodes that
take contiguous halves or, like gpt-oss, interleaved even/odd columns); one part is the gate,
the other the up projection::

    act(gate) * up                                   silu / relu / gelu (also erf/tanh written out)
    clip(gate, max=l) * sigmoid(alpha * clip(gate, max=l)) * (clip(up, -l, l) + beta)   swiglu
    silu(clip(gate, max=l)) * clip(up, -l, l)        swiglu with alpha 1, beta 0 (HY-V4)

Gate and up may also come from two separate projections (DBRX's ``w1``/``v1``):
:func:`match_separate_gating`. Slice bounds may be computed from shapes (TorchScript);
:func:`eval_ints` folds those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.compiler.frontend.hf_activation import match_activation
from moec.compiler.frontend.hf_routing import Walk
from moec.compiler.frontend.softcap import match_softcapped_silu


@dataclass
class Gating:
    """The activation and which projection columns are gate and up (``gate_cols`` None: no gate)."""

    activation: str
    gate_cols: np.ndarray | None
    up_cols: np.ndarray
    output: str
    alpha: float = 1.702
    beta: float = 1.0
    limit: float | None = None
    gate_softcap: float | None = None
    up_softcap: float | None = None

    @property
    def gated(self) -> bool:
        return self.gate_cols is not None


def match_gating(walk: Walk, value: str, width: int) -> Gating:
    """The gating applied to the fused projection output ``value`` ([rows, width])."""
    parts = _parts(walk, value, width)
    if parts is None:
        act = match_activation(walk, value)
        if act is None:
            raise walk.fail(
                value, "expected an activation or a gate/up split after the expert projection"
            )
        return Gating(act[0], None, np.arange(width), act[1])
    for (g, gate_cols), (u, up_cols) in (parts, parts[::-1]):
        trial = Walk(walk.view)
        sw = swiglu_of(trial, g, u)
        if sw is not None:
            walk.nodes |= trial.nodes
            return Gating("swiglu", gate_cols, up_cols, *sw)
        trial = Walk(walk.view)
        capped = match_softcapped_silu(trial, g, u)
        if capped is not None:
            walk.nodes |= trial.nodes
            cg, cu, out = capped
            return Gating("silu", gate_cols, up_cols, out, gate_softcap=cg, up_softcap=cu)
        act = match_activation(trial, g)
        if act is None:
            continue
        muls = trial.of_type(act[1], "Mul")
        if len(muls) == 1 and trial.other(muls[0], act[1]) == u:
            walk.nodes |= trial.nodes
            return Gating(act[0], gate_cols, up_cols, walk.take(muls[0]).output[0])
    raise walk.fail(
        value, "expected act(gate) * up after the gate/up split (SiLU, ReLU, GELU or SwiGLU)"
    )


def match_separate_gating(walk: Walk, a: str, b: str, where: str) -> tuple[str, Gating]:
    """``act(gate) * up`` of two separate projection outputs: (the gate one, the gating).

    The gating's columns index the concatenation ``[gate | up]`` the layer is built from.
    """
    for g, u in ((a, b), (b, a)):
        trial = Walk(walk.view)
        act = match_activation(trial, g)
        if act is None:
            continue
        muls = [m for m in trial.of_type(act[1], "Mul") if trial.other(m, act[1]) == u]
        wg, wu = _width(walk, g), _width(walk, u)
        if len(muls) != 1 or wg is None or wg != wu:
            continue
        walk.nodes |= trial.nodes
        out = walk.take(muls[0]).output[0]
        cols = np.arange(2 * wg)
        return g, Gating(act[0], cols[:wg], cols[wg:], out)
    raise walk.fail(
        where, "expected act(tokens @ gate) * (tokens @ up) of the two token projections"
    )


def _width(walk: Walk, value: str) -> int | None:
    t = walk.view.tensor_type(value)
    if t is None or not t.shape or not isinstance(t.shape[-1], int):
        return None
    return int(t.shape[-1])


def _parts(walk: Walk, value: str, width: int) -> list[tuple[str, np.ndarray]] | None:
    """The two column sets cut from ``value`` and their values, or None if it is not cut."""
    users = walk.consumers(value)
    splits = [c for c in users if c.op_type == "Split"]
    slices = [c for c in users if c.op_type == "Slice" and c.input[0] == value]
    cols = np.arange(width)
    if splits:
        sp = walk.take(splits[0])
        sizes = eval_ints(walk, sp.input[1]) if len(sp.input) > 1 and sp.input[1] else None
        half = width // 2
        if len(sp.output) != 2 or walk.attr(sp, "axis", 0) not in (-1, 1):
            raise walk.fail(sp, "expected the gate/up projection split in two along features")
        if sizes not in (None, [half, half]) or width % 2:
            raise walk.fail(sp, f"expected the gate/up projection split in halves, found {sizes}")
        return [(sp.output[0], cols[:half]), (sp.output[1], cols[half:])]
    if not slices:
        return None
    if len(slices) != 2:
        raise walk.fail(
            value, f"expected the gate/up projection cut in two, found {len(slices)} Slices"
        )
    parts = []
    for s in slices:
        # The projection is [tokens, width] (its rows gathered by token): TorchScript's chunk
        # computes the Slice bounds from its Shape, which the graph does not type.
        known: dict[str, tuple[int | None, ...]] = {value: (None, width)}
        start, end, axes = (eval_ints(walk, v, known=known) for v in s.input[1:4])
        steps = eval_ints(walk, s.input[4]) if len(s.input) > 4 and s.input[4] else [1]
        if None in (start, end, axes, steps) or axes not in ([-1], [1]) or len(steps) != 1:  # type: ignore[arg-type]
            raise walk.fail(s, "expected a Slice over the feature axis with known bounds")
        parts.append((walk.take(s).output[0], cols[start[0] : end[0] : steps[0]]))  # type: ignore[index]
    both = np.sort(np.concatenate([parts[0][1], parts[1][1]]))
    if len(parts[0][1]) != len(parts[1][1]) or not np.array_equal(both, cols):
        raise walk.fail(value, "expected the two Slices to cut the gate/up columns in equal parts")
    return parts


def _clip(walk: Walk, value: str) -> tuple[str, float | None, float | None]:
    """Optional Clip(value, lo, hi) as its sole use: (clipped value, lo, hi)."""
    users = walk.consumers(value)
    if len(users) != 1 or users[0].op_type != "Clip":
        return value, None, None
    c = users[0]
    lo = walk.scalar(c.input[1]) if len(c.input) > 1 and c.input[1] else None
    hi = walk.scalar(c.input[2]) if len(c.input) > 2 and c.input[2] else None
    walk.take(c)
    return c.output[0], lo, hi


def swiglu_of(walk: Walk, g: str, u: str) -> tuple[str, float, float, float | None] | None:
    """gpt-oss SwiGLU of gate ``g`` and up ``u``: (output, alpha, beta, limit) or None."""
    g, g_lo, g_hi = _clip(walk, g)
    u, u_lo, u_hi = _clip(walk, u)
    if g_lo is not None or (u_lo is not None and u_hi is not None and u_lo != -u_hi):
        return None
    if g_hi != u_hi:
        return None
    alpha, sig_in = 1.0, g
    for m in walk.of_type(g, "Mul"):
        a = walk.scalar(walk.other(m, g))
        if a is not None:
            alpha, sig_in = a, walk.take(m).output[0]
    sigs = walk.of_type(sig_in, "Sigmoid")
    if len(sigs) != 1:
        return None
    sig = walk.take(sigs[0]).output[0]
    glus = [m for m in walk.of_type(sig, "Mul") if walk.other(m, sig) == g]
    adds = walk.of_type(u, "Add")
    if len(glus) != 1 or len(adds) > 1:
        return None
    glu = walk.take(glus[0]).output[0]
    if not adds and g_hi is not None:
        # HY-V4: silu(clip(gate)) * clip(up), no offset on up (beta 0). Unclamped, the same
        # graph is plain SiLU gating, which the caller matches as such.
        beta, up = 0.0, u
    else:
        beta_ = walk.scalar(walk.other(adds[0], u)) if len(adds) == 1 else None
        if beta_ is None:
            return None
        beta, up = beta_, walk.take(adds[0]).output[0]
    outs = [m for m in walk.of_type(up, "Mul") if walk.other(m, up) == glu]
    if len(outs) != 1:
        return None
    return walk.take(outs[0]).output[0], alpha, beta, g_hi


def _dims(
    walk: Walk, value: str, known: dict[str, tuple[int | None, ...]], depth: int = 4
) -> tuple[int | str | None, ...] | None:
    """Shape of ``value``: typed in the graph, in ``known``, or an Unsqueeze of either."""
    t = walk.view.tensor_type(value)
    if t is not None:
        return tuple(t.shape)
    if value in known:
        return known[value]
    p = walk.producer(value)
    if p is None or depth == 0:
        return None
    if p.op_type in ("Identity", "Cast"):
        return _dims(walk, p.input[0], known, depth - 1)
    if p.op_type == "Unsqueeze" and len(p.input) > 1:
        inner, axes = _dims(walk, p.input[0], known, depth - 1), walk.ints(p.input[1])
        if inner is None or axes is None:
            return None
        out: list[int | str | None] = list(inner)
        rank = len(inner) + len(axes)
        for a in sorted(ax % rank for ax in axes):
            out.insert(a, 1)
        return tuple(out)
    return None


def eval_ints(
    walk: Walk, value: str, depth: int = 12, known: dict[str, tuple[int | None, ...]] | None = None
) -> list[int] | None:
    """Integer value of a constant or small shape computation (Shape/Gather/Add/Div/...);
    ``known``: shapes of values the graph does not type (TorchScript exports)."""
    c = walk.ints(value)
    if c is not None or depth == 0:
        return c
    p = walk.producer(value)
    if p is None:
        return None
    if (
        p.op_type == "Gather"
        and (s := walk.producer(p.input[0])) is not None
        and s.op_type == "Shape"
    ):
        dims = _dims(walk, s.input[0], known or {})
        i = eval_ints(walk, p.input[1], depth - 1, known)
        if dims is None or i is None or len(i) != 1 or not -len(dims) <= i[0] < len(dims):
            return None
        d = dims[i[0]]
        return [d] if isinstance(d, int) else None
    args = [eval_ints(walk, v, depth - 1, known) for v in p.input]
    if any(a is None for a in args):
        return None
    a = [np.asarray(x, dtype=np.int64) for x in args]
    ops = {
        "Add": lambda: a[0] + a[1], "Sub": lambda: a[0] - a[1], "Mul": lambda: a[0] * a[1],
        "Div": lambda: a[0] // a[1], "Identity": lambda: a[0], "Cast": lambda: a[0],
        "Unsqueeze": lambda: a[0].reshape(-1), "Squeeze": lambda: a[0].reshape(-1),
        "Concat": lambda: np.concatenate([x.reshape(-1) for x in a]),
    }  # fmt: skip
    fn = ops.get(p.op_type)
    return None if fn is None else [int(v) for v in np.asarray(fn()).reshape(-1)]
