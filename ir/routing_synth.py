"""Synthetic routing: seeded traces with Zipf-skewed expert popularity, and ``synth:`` specs.

Timing at real scale needs routing where no weights exist: :func:`synth_zipf` and
:func:`synth_layers` draw a :class:`~moec.ir.routing.RoutingTrace` per layer from a seeded
Gumbel-top-k over Zipf popularities; :class:`SynthSpec` is the parsed ``synth:zipf=1.0,seed=0``
option (:func:`parse_routing_spec`) every command and the API accept in place of a trace file.
Multi-iteration sequences with drift and bursts build on these (:mod:`moec.ir.routing_seq`).

    >>> t = synth_zipf(num_layers=2, num_experts=16, top_k=2, tokens=64, zipf=1.0, seed=0)
    >>> t.layers[0].ids.shape, t.layers[0].gates.dtype
    ((64, 2), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moec.ir.errors import TraceError
from moec.ir.routing import HOME_SCHEMES, LayerRouting, RoutingTrace, assign_home_dies


def _synth_layer(
    name: str, num_experts: int, top_k: int, tokens: int, zipf: float,
    rng: np.random.Generator, permute: bool, home: np.ndarray,
) -> LayerRouting:  # fmt: skip
    ranks = np.arange(1, num_experts + 1, dtype=np.float64)
    log_pop = -zipf * np.log(ranks)  # Zipf popularity: p(rank r) proportional to r**-zipf
    experts = rng.permutation(num_experts) if permute else np.arange(num_experts)
    log_p = np.empty(num_experts)
    log_p[experts] = log_pop  # experts[r] is the expert of popularity rank r + 1
    # Router logits: log-popularity plus Gumbel noise. Their top-k (Gumbel-top-k) is a draw of k
    # distinct experts without replacement with probabilities p, and the softmax of the chosen
    # logits gives gate weights that decrease along the row, like a renormalized top-k router.
    ids, gates = gumbel_top_k(log_p, tokens, top_k, rng)
    return LayerRouting(name, num_experts, top_k, ids, gates, home.copy())


def gumbel_top_k(
    log_p: np.ndarray, tokens: int, top_k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``tokens`` tokens draws ``top_k`` distinct experts with probabilities
    ``exp(log_p)`` (Gumbel-top-k); returns ids [T, k] int64 and softmax gates [T, k] float32.

    The same arrays, bit for bit, as :func:`gumbel_top_k_reference` (``rng.gumbel`` then a
    top-k), and the generator is left in the same state, at a fraction of the time: numpy's
    Gumbel draw is ``0.0 - 1.0 * log(-log(1.0 - u))`` of one uniform ``u`` per value (a zero
    ``u`` is drawn again), with the C library's scalar ``log``. Here the uniforms are drawn as
    they are, rows of logits are approximated with numpy's vectorized ``log`` (a few ulp off),
    and only the entries within a margin (:data:`_MARGIN`) of a row's ``k``-th largest
    approximation are computed exactly (``math.log`` is the same C ``log``); a row's top ``k`` exact logits are
    always among them (the approximation is off by far less than half the margin), and they
    are ranked as the reference ranks them (largest first, ties to the lower index). A zero
    uniform anywhere, ``top_k`` not in ``1 .. E - 1``, or few experts per chosen one (where the
    exact candidates are a large share of the draws: no faster) takes the reference."""
    E = log_p.size
    if not 0 < top_k < E or E < _EXPERTS_PER_K * top_k:
        return gumbel_top_k_reference(log_p, tokens, top_k, rng)
    finite = np.abs(log_p[np.isfinite(log_p)])  # -inf: an expert never drawn (a burst of 0)
    margin = _MARGIN * (1.0 + float(finite.max(initial=0.0)))
    state = rng.bit_generator.state
    ids = np.empty((tokens, top_k), dtype=np.int64)
    chosen = np.empty((tokens, top_k))
    for lo in range(0, tokens, _BLOCK):  # the uniforms in the order one draw of them all gives
        hi = min(tokens, lo + _BLOCK)
        u = rng.random(size=(hi - lo, E))
        if not u.all():  # numpy's gumbel draws a zero uniform again: take its own path
            rng.bit_generator.state = state
            return gumbel_top_k_reference(log_p, tokens, top_k, rng)
        _exact_top_k(u, log_p, top_k, margin, ids[lo:hi], chosen[lo:hi])
    z = np.exp(chosen - chosen[:, :1])
    gates = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return ids, gates


#: the fewest experts per chosen expert for which the approximate-then-exact path pays
_EXPERTS_PER_K = 16
#: rows of uniforms drawn and ranked at a time (a few MiB per array)
_BLOCK = 1024
#: how far below a row's ``k``-th largest approximate logit an entry is still computed exactly,
#: per unit of the largest finite ``|log_p|`` plus one: the approximation is off by a few ulp of
#: the Gumbel noise (magnitude < 40) plus the rounding of the sum, far below half of that
_MARGIN = 1e-9


def _exact_top_k(
    u: np.ndarray, log_p: np.ndarray, k: int, margin: float, ids: np.ndarray, chosen: np.ndarray
) -> None:
    """Fill ``ids`` and ``chosen`` (the exact logits) with each row's top ``k`` of
    ``log_p + gumbel(u)`` (see :func:`gumbel_top_k`)."""
    T, E = u.shape
    approx = np.subtract(1.0, u)
    np.log(approx, out=approx)
    np.negative(approx, out=approx)
    np.log(approx, out=approx)
    np.negative(approx, out=approx)
    approx += log_p
    kth = np.partition(approx, E - k, axis=1)[:, E - k : E - k + 1]
    flat = np.flatnonzero(approx >= kth - margin)  # by row, ascending index within a row
    rows = flat // E
    cols = flat - rows * E
    # the reference's values: 0.0 - 1.0 * log(-log(1.0 - u)), each log the C library's
    inner = np.fromiter(map(math.log, (1.0 - u.ravel()[flat]).tolist()), np.float64, flat.size)
    outer = np.fromiter(map(math.log, (-inner).tolist()), np.float64, flat.size)
    exact = (0.0 - 1.0 * outer) + log_p[cols]  # gumbel + log_p (IEEE addition commutes)
    counts = np.bincount(rows, minlength=T)
    m = int(counts.max(initial=0))
    if m == k:  # every row has exactly k candidates (all but a near-tie)
        vals, idx = exact.reshape(T, k), cols.reshape(T, k)
    else:
        pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        vals = np.full((T, m), -np.inf)
        idx = np.zeros((T, m), dtype=np.int64)
        vals[rows, pos] = exact
        idx[rows, pos] = cols
    rank = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    ids[:] = np.take_along_axis(idx, rank, axis=1)
    chosen[:] = np.take_along_axis(vals, rank, axis=1)


def gumbel_top_k_reference(
    log_p: np.ndarray, tokens: int, top_k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gumbel_top_k` the direct way: numpy's Gumbel draws, then their top-k."""
    logits = rng.gumbel(size=(tokens, log_p.size))
    logits += log_p  # in place: the same sums as log_p + noise (IEEE addition commutes)
    order = _top_k(logits, top_k)
    chosen = np.take_along_axis(logits, order, axis=1)
    z = np.exp(chosen - chosen[:, :1])
    gates = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return order.astype(np.int64), gates


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` largest logits, largest first, ties to the lower index:
    ``np.argsort(-logits, kind="stable")[:, :k]``. A partition finds each row's ``k``-th largest
    value, the ``k`` at or above it are sorted (a fraction of a full sort's time); a row where
    more than ``k`` reach it (a tie at the ``k``-th place) takes the full stable sort."""
    n = logits.shape[1]
    if not 0 < k < n:
        return np.argsort(-logits, axis=1, kind="stable")[:, :k]
    keep = logits >= np.partition(logits, n - k, axis=1)[:, n - k : n - k + 1]
    tied = np.flatnonzero(np.count_nonzero(keep, axis=1) != k)
    keep[tied] = np.arange(n) < k  # k placeholders, so every row keeps k; re-sorted below
    part = np.nonzero(keep)[1].reshape(-1, k)  # ascending index within each row
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.take_along_axis(part, np.argsort(-vals, axis=1, kind="stable"), axis=1)
    if tied.size:
        order[tied] = np.argsort(-logits[tied], axis=1, kind="stable")[:, :k]
    return order


def synth_zipf(
    num_layers: int,
    num_experts: int,
    top_k: int,
    tokens: int,
    zipf: float = 1.0,
    seed: int = 0,
    num_dies: int = 4,
    per_layer_permutation: bool = True,
    *,
    home: str = "blocks",
    model: str = "synthetic",
    layer_names: list[str] | None = None,
) -> RoutingTrace:
    """A seeded synthetic trace with Zipf(``zipf``)-skewed expert popularity.

    Expert of popularity rank r is chosen with probability proportional to ``r ** -zipf``
    (``zipf=0`` is uniform); each token gets ``top_k`` distinct experts. With
    ``per_layer_permutation`` each layer maps ranks to expert ids by its own random permutation
    (hot experts differ between layers); otherwise expert 0 is the hottest everywhere. Layer i
    draws from ``numpy.random.default_rng([seed, i])``, so a layer's routing does not depend on
    how many layers are synthesized.
    """
    return synth_layers(
        [(num_experts, top_k)] * num_layers, tokens, zipf=zipf, seed=seed, num_dies=num_dies,
        per_layer_permutation=per_layer_permutation, home=home, model=model,
        layer_names=layer_names,
    )  # fmt: skip


#: Largest memory a synthetic trace may take (checked before anything is allocated).
MAX_SYNTH_BYTES = 2 << 30


def synth_bytes(layers: list[tuple[int, int]], tokens: int) -> int:
    """Peak bytes of :func:`synth_layers`: the kept ids, gates and home dies of every layer,
    plus one layer's float64 logits and their argsort (``tokens x experts`` each)."""
    kept = sum(tokens * (12 * k + 8) for _, k in layers)
    return kept + max((16 * tokens * e for e, _ in layers), default=0)


def synth_layers(
    layers: list[tuple[int, int]],
    tokens: int,
    *,
    zipf: float = 1.0,
    seed: int = 0,
    num_dies: int = 4,
    per_layer_permutation: bool = True,
    home: str = "blocks",
    model: str = "synthetic",
    layer_names: list[str] | None = None,
    on_layer: Callable[[int], None] | None = None,
) -> RoutingTrace:
    """:func:`synth_zipf` for layers of possibly different ``(num_experts, top_k)``;
    ``on_layer(i)`` is called after layer ``i`` is drawn (progress)."""
    if tokens < 1:
        raise TraceError(f"tokens must be >= 1, found {tokens}")
    if not math.isfinite(zipf) or zipf < 0:
        raise TraceError(f"zipf exponent must be a finite number >= 0, found {zipf}")
    if seed < 0:
        raise TraceError(f"seed must be >= 0, found {seed}")
    if layer_names is not None and len(layer_names) != len(layers):
        raise TraceError(f"{len(layer_names)} layer names for {len(layers)} layers")
    need = synth_bytes(layers, tokens)
    if need > MAX_SYNTH_BYTES:
        raise TraceError(
            f"a synthetic trace of {tokens} tokens x {len(layers)} layers needs about "
            f"{need / 2**30:.1f} GiB of memory, over the limit of {MAX_SYNTH_BYTES / 2**30:g} GiB: "
            "use fewer tokens or layers"
        )
    home_die = assign_home_dies(tokens, num_dies, home)
    out = []
    for i, (num_experts, top_k) in enumerate(layers):
        if not 1 <= top_k <= num_experts:
            raise TraceError(f"layer {i}: top_k={top_k} must be in 1..num_experts={num_experts}")
        name = layer_names[i] if layer_names else f"layer{i}"
        rng = np.random.default_rng([seed, i])
        out.append(
            _synth_layer(
                name, num_experts, top_k, tokens, zipf, rng, per_layer_permutation, home_die
            )
        )
        if on_layer is not None:
            on_layer(i)
    provenance = {
        "source": "synth", "distribution": "zipf", "zipf": zipf, "seed": seed, "home": home,
        "per_layer_permutation": per_layer_permutation,
    }  # fmt: skip
    return RoutingTrace(model, num_dies, out, provenance)


@dataclass(frozen=True)
class SynthSpec:
    """A synthetic-routing request, as parsed from ``synth:zipf=1.0,seed=0``."""

    zipf: float = 1.0
    seed: int = 0
    home: str = "blocks"
    per_layer_permutation: bool = True
    #: temporal structure for multi-iteration runs (:func:`moec.ir.routing_seq.synth_sequence`)
    drift: float = 0.0
    burst: float = 0.0

    def make(
        self, layers: list[tuple[int, int]], tokens: int, num_dies: int, model: str = "synthetic"
    ) -> RoutingTrace:
        return synth_layers(
            layers, tokens, zipf=self.zipf, seed=self.seed, num_dies=num_dies,
            per_layer_permutation=self.per_layer_permutation, home=self.home, model=model,
        )  # fmt: skip


_SPEC_KEYS = ("zipf", "seed", "home", "permute", "drift", "burst")


def parse_routing_spec(spec: str) -> SynthSpec | str:
    """``synth:key=value,...`` (keys zipf, seed, home, permute, drift, burst) gives a
    :class:`SynthSpec`; anything else is a trace file path, returned as is."""
    if not spec.startswith("synth"):
        return spec
    head, _, rest = spec.partition(":")
    if head != "synth":
        return spec
    values: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in _SPEC_KEYS:
            raise TraceError(
                f"routing spec {spec!r}: bad item {item!r}, expected key=value with key one of "
                f"{', '.join(_SPEC_KEYS)}"
            )
        raw = raw.strip()
        try:
            if key == "zipf":
                values["zipf"] = float(raw)
                if not math.isfinite(values["zipf"]) or values["zipf"] < 0:
                    raise ValueError
            elif key == "seed":
                values["seed"] = int(raw)
                if values["seed"] < 0:
                    raise ValueError
            elif key in ("drift", "burst"):
                v = values[key] = float(raw)
                if not math.isfinite(v) or v < 0 or (key == "burst" and v > 1):
                    raise ValueError
            elif key == "home":
                if raw not in HOME_SCHEMES:
                    raise ValueError
                values["home"] = raw
            else:
                if raw not in ("0", "1", "true", "false"):
                    raise ValueError
                values["per_layer_permutation"] = raw in ("1", "true")
        except ValueError:
            expected = {
                "zipf": "a number >= 0", "seed": "an integer >= 0",
                "home": " or ".join(HOME_SCHEMES), "permute": "0/1/true/false",
                "drift": "a number >= 0", "burst": "a probability in 0..1",
            }[key]  # fmt: skip
            raise TraceError(
                f"routing spec {spec!r}: {key}: expected {expected}, found {raw!r}"
            ) from None
    return SynthSpec(**values)
