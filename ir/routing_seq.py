"""Routing over many iterations: a sequence of per-iteration traces, and drifting synthetic ones.

A serving run (``moec run --iterations N``) needs the routing of every iteration: decode step i's
batch is routed differently from step i+1's, and expert popularity drifts. A
:class:`RoutingSequence` holds one :class:`~moec.ir.routing.RoutingTrace` per iteration (same
model, die count, layers and tokens). Files: version 2 of ``docs/routing.md``'s format, the
version-1 header plus ``iterations: [{"layers": [...]}, ...]``; a version-1 file is a sequence
of one iteration, so every old trace stays valid.

:func:`synth_sequence` adds temporal structure to :func:`~moec.ir.routing_synth.synth_layers`: each
expert's log-popularity takes a seeded random walk (``drift``, the step's standard deviation)
and, with probability ``burst`` per iteration and layer, one expert's popularity jumps by
``burst_factor`` for that iteration. Iteration 0 is exactly ``synth_layers``'s trace.

    >>> s = synth_sequence([(16, 2)], tokens=8, iterations=3, drift=0.2, seed=1)
    >>> len(s), s[2].layers[0].ids.shape
    (3, (8, 2))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from moec.ir.errors import TraceError
from moec.ir.files import atomic_write
from moec.ir.routing import (
    FORMAT,
    LayerRouting,
    RoutingTrace,
    _from_doc,
    _meta,
    assign_home_dies,
    layers_json_lines,
    load_trace,
    npz_bytes,
    read_json_doc,
    read_npz_doc,
)
from moec.ir.routing_synth import SynthSpec, gumbel_top_k, synth_layers

#: Version of the multi-iteration file format (version 1: one iteration, ``layers`` at the top).
SEQUENCE_VERSION = 2


@dataclass(eq=False)
class RoutingSequence:
    """One :class:`RoutingTrace` per iteration, all of the same model, dies, layers and tokens."""

    iterations: list[RoutingTrace]

    def __len__(self) -> int:
        return len(self.iterations)

    def __getitem__(self, i: int) -> RoutingTrace:
        return self.iterations[i]

    def __iter__(self) -> Iterator[RoutingTrace]:
        return iter(self.iterations)

    @property
    def model(self) -> str:
        return self.iterations[0].model

    @property
    def num_dies(self) -> int:
        return self.iterations[0].num_dies

    @property
    def tokens(self) -> int:
        return self.iterations[0].tokens

    @property
    def provenance(self) -> dict[str, Any]:
        return self.iterations[0].provenance

    def head(self, n: int) -> RoutingSequence:
        """The first ``n`` iterations (``n`` larger than the sequence is an error)."""
        if not 0 < n <= len(self.iterations):
            raise TraceError(
                f"routing has {len(self.iterations)} iterations, cannot take the first {n}"
            )
        return RoutingSequence(self.iterations[:n])

    def layers_head(self, n: int) -> RoutingSequence:
        """Every iteration cut to its first ``n`` MoE layers."""
        return RoutingSequence([t.head(n) for t in self.iterations])

    def rehome(self, num_dies: int, scheme: str = "blocks") -> RoutingSequence:
        return RoutingSequence([t.rehome(num_dies, scheme) for t in self.iterations])


def check_sequence(seq: RoutingSequence, where: str = "trace") -> None:
    """Every iteration has the first one's model shape: layers, experts, top-k, tokens, dies."""
    if not seq.iterations:
        raise TraceError("a routing sequence needs at least one iteration", where)
    first = seq.iterations[0]
    shape = [(lr.name, lr.num_experts, lr.top_k) for lr in first.layers]
    for n, t in enumerate(seq.iterations[1:], start=1):
        got = [(lr.name, lr.num_experts, lr.top_k) for lr in t.layers]
        if got != shape:
            raise TraceError(
                f"iterations[{n}]: layers {got[:2]}... differ from iterations[0]'s {shape[:2]}...",
                where,
            )
        if t.tokens != first.tokens or t.num_dies != first.num_dies:
            raise TraceError(
                f"iterations[{n}]: {t.tokens} tokens on {t.num_dies} dies, iterations[0] has "
                f"{first.tokens} on {first.num_dies}",
                where,
            )


# --- synthesis -------------------------------------------------------------------------------------
def synth_sequence(
    layers: list[tuple[int, int]],
    tokens: int,
    iterations: int,
    *,
    zipf: float = 1.0,
    seed: int = 0,
    num_dies: int = 4,
    drift: float = 0.0,
    burst: float = 0.0,
    burst_factor: float = 8.0,
    per_layer_permutation: bool = True,
    home: str = "blocks",
    model: str = "synthetic",
    layer_names: list[str] | None = None,
) -> RoutingSequence:
    """``iterations`` seeded iterations of Zipf routing whose expert popularity drifts.

    Iteration 0 is :func:`~moec.ir.routing_synth.synth_layers` (same seed). Then, per layer i, the
    log-popularity of every expert takes a Gaussian random-walk step of standard deviation
    ``drift`` per iteration (``numpy.random.default_rng([seed, i, 0])``, drawn in iteration
    order), and with probability ``burst`` one expert (uniform) is ``burst_factor`` times as
    popular for that iteration only; iteration n >= 1 routes its tokens with
    ``default_rng([seed, i, n])`` (Gumbel-top-k, as in ``synth_layers``). A prefix of iterations
    does not depend on how many are made.
    """
    if iterations < 1:
        raise TraceError(f"iterations must be >= 1, found {iterations}")
    for name, v in (("drift", drift), ("burst_factor", burst_factor)):
        if not math.isfinite(v) or v < 0:
            raise TraceError(f"{name} must be a finite number >= 0, found {v}")
    if not 0 <= burst <= 1:
        raise TraceError(f"burst must be a probability in 0..1, found {burst}")
    first = synth_layers(
        layers, tokens, zipf=zipf, seed=seed, num_dies=num_dies,
        per_layer_permutation=per_layer_permutation, home=home, model=model,
        layer_names=layer_names,
    )  # fmt: skip
    provenance = {**first.provenance, "drift": drift, "burst": burst}
    if burst:
        provenance["burst_factor"] = burst_factor
    first = dataclasses.replace(first, provenance=provenance)
    home_die = assign_home_dies(tokens, num_dies, home)
    log_pops: list[np.ndarray] = []
    walks: list[np.random.Generator] = []
    for i, (num_experts, _) in enumerate(layers):
        # the same permutation synth_layers drew for iteration 0
        rng0 = np.random.default_rng([seed, i])
        experts = rng0.permutation(num_experts) if per_layer_permutation else np.arange(num_experts)
        log_p = np.empty(num_experts)
        log_p[experts] = -zipf * np.log(np.arange(1, num_experts + 1, dtype=np.float64))
        log_pops.append(log_p)
        walks.append(np.random.default_rng([seed, i, 0]))
    out = [first]
    for n in range(1, iterations):
        lrs = []
        for i, (num_experts, top_k) in enumerate(layers):
            walk = walks[i]
            log_pops[i] = log_pops[i] + drift * walk.standard_normal(num_experts)
            log_p = log_pops[i] - log_pops[i].max()  # keep the walk's scale bounded
            log_pops[i] = log_p
            hit = walk.random() < burst
            hot = int(walk.integers(num_experts))
            if hit:
                log_p = log_p.copy()
                log_p[hot] += math.log(burst_factor) if burst_factor > 0 else -math.inf
            ids, gates = gumbel_top_k(log_p, tokens, top_k, np.random.default_rng([seed, i, n]))
            name = first.layers[i].name
            lrs.append(LayerRouting(name, num_experts, top_k, ids, gates, home_die.copy()))
        out.append(RoutingTrace(model, num_dies, lrs, provenance))
    return RoutingSequence(out)


def spec_sequence(
    spec: SynthSpec,
    layers: list[tuple[int, int]],
    tokens: int,
    num_dies: int,
    iterations: int,
    model: str = "synthetic",
) -> RoutingSequence:
    """The sequence a ``synth:...,drift=D,burst=B`` routing spec asks for."""
    return synth_sequence(
        layers, tokens, iterations, zipf=spec.zipf, seed=spec.seed, num_dies=num_dies,
        drift=spec.drift, burst=spec.burst, per_layer_permutation=spec.per_layer_permutation,
        home=spec.home, model=model,
    )  # fmt: skip


# --- files -----------------------------------------------------------------------------------------
def _header(seq: RoutingSequence) -> dict[str, Any]:
    meta = _meta(seq.iterations[0])
    meta["version"] = SEQUENCE_VERSION
    meta["iterations"] = len(seq)
    return meta


def sequence_to_json(seq: RoutingSequence) -> str:
    """JSON text: the header (``iterations`` is the count there), then ``"steps"``, one object
    per iteration holding its ``layers`` (one line per token, as in version 1)."""
    lines = ["{"]
    for key, value in _header(seq).items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    lines.append('  "steps": [')
    for n, t in enumerate(seq.iterations):
        lines.append('    {"layers": [')
        lines += layers_json_lines(t.layers, "    ")
        lines.append("    ]}" + ("," if n + 1 < len(seq) else ""))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def sequence_to_npz(seq: RoutingSequence) -> bytes:
    """NPZ bytes: ``meta`` (header and layer heads) and ``ids_<n>_<i>``, ``gates_<n>_<i>``,
    ``home_die_<n>_<i>`` for iteration n, layer i; fixed zip timestamps."""
    meta = _header(seq)
    meta["layers"] = [
        {"name": lr.name, "num_experts": lr.num_experts, "top_k": lr.top_k}
        for lr in seq.iterations[0].layers
    ]
    arrays: list[tuple[str, np.ndarray]] = [("meta", np.array(json.dumps(meta, sort_keys=True)))]
    for n, t in enumerate(seq.iterations):
        for i, lr in enumerate(t.layers):
            arrays += [
                (f"ids_{n}_{i}", lr.ids.astype(np.int64)),
                (f"gates_{n}_{i}", lr.gates.astype(np.float32)),
                (f"home_die_{n}_{i}", lr.home_die.astype(np.int64)),
            ]
    return npz_bytes(arrays)


def save_sequence(seq: RoutingSequence, path: str | os.PathLike[str]) -> None:
    """Write ``seq`` atomically: one iteration as a version-1 trace, more as version 2."""
    from moec.ir.routing import check_trace, save_trace

    p = os.fspath(path)
    check_sequence(seq, p)
    if len(seq) == 1:
        save_trace(seq.iterations[0], p)
        return
    for t in seq.iterations:
        check_trace(t, p)
    if p.endswith(".json"):
        atomic_write(p, sequence_to_json(seq))
    elif p.endswith(".npz"):
        atomic_write(p, sequence_to_npz(seq))
    else:
        raise TraceError("expected a trace file name ending in .json or .npz", p)


def _v1_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k not in ("iterations", "steps", "layers")}
    out["version"] = 1
    return out


def _count(meta: dict[str, Any], where: str) -> int:
    n = meta.get("iterations")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TraceError(f"iterations: expected an integer >= 1, found {n!r}", where)
    return n


def _load_json(path: str) -> RoutingSequence:
    doc = read_json_doc(path)
    if doc.get("format") != FORMAT:
        raise TraceError(f"format: expected {FORMAT!r}, found {doc.get('format')!r}", path)
    if doc.get("version") == 1:
        return RoutingSequence([load_trace(path)])
    if doc.get("version") != SEQUENCE_VERSION:
        raise TraceError(f"version: expected 1 or 2, found {doc.get('version')!r}", path)
    count = _count(doc, path)
    steps = doc.get("steps")
    if not isinstance(steps, list) or len(steps) != count:
        found = len(steps) if isinstance(steps, list) else type(steps).__name__
        raise TraceError(f"steps: expected a list of {count} iterations, found {found}", path)
    meta = _v1_meta(doc)
    out = []
    for n, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("layers"), list):
            raise TraceError(f"steps[{n}]: expected an object with a 'layers' list", path)

        def arrays(i: int, d: dict[str, Any], ctx: str, _n: int = n) -> tuple[Any, Any, Any]:
            vals = []
            for key in ("ids", "gates", "home_die"):
                if not isinstance(d.get(key), list):
                    raise TraceError(f"steps[{_n}].{ctx}{key}: expected a list", path)
                vals.append(d[key])
            return vals[0], vals[1], vals[2]

        try:
            out.append(_from_doc(meta, step["layers"], arrays, path))
        except TraceError as err:
            raise TraceError(f"steps[{n}]: {err.message}", path) from None
    seq = RoutingSequence(out)
    check_sequence(seq, path)
    return seq


def _load_npz(path: str) -> RoutingSequence:
    files, meta = read_npz_doc(path)
    if meta.get("version") == 1:
        return RoutingSequence([load_trace(path)])
    if meta.get("version") != SEQUENCE_VERSION:
        raise TraceError(f"version: expected 1 or 2, found {meta.get('version')!r}", path)
    count = _count(meta, path)
    out = []
    for n in range(count):

        def arrays(i: int, d: dict[str, Any], ctx: str, _n: int = n) -> tuple[Any, Any, Any]:
            vals = []
            for key in ("ids", "gates", "home_die"):
                name = f"{key}_{_n}_{i}"
                if name not in files:
                    raise TraceError(f"{ctx}{key}: array '{name}' missing", path)
                vals.append(files[name])
            return vals[0], vals[1], vals[2]

        out.append(_from_doc(_v1_meta(meta), meta["layers"], arrays, path))
    seq = RoutingSequence(out)
    check_sequence(seq, path)
    return seq


def load_sequence(path: str | os.PathLike[str]) -> RoutingSequence:
    """Read a trace file of one (version 1) or many (version 2) iterations."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise TraceError("routing trace not found", p)
    return _load_npz(p) if p.endswith(".npz") else _load_json(p)
