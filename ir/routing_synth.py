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
    are ranked as the reference ranks them (largest first, ties to the lower index). Only the
    entries whose uniform is under their expert's threshold (:func:`_floor`: one comparison, no
    ``log``) are approximated where ``k`` of them reach the floor; other rows in full. A zero
    uniform anywhere, ``top_k`` not in ``1 .. E - 1``, or few experts per chosen one (where the
    exact candidates are a large share of the draws: no faster) takes the reference."""
    E = log_p.size
    if not 0 < top_k < E or E < _EXPERTS_PER_K * top_k:
        return gumbel_top_k_reference(log_p, tokens, top_k, rng)
    finite = np.abs(log_p[np.isfinite(log_p)])  # -inf: an expert never drawn (a burst of 0)
    margin = _MARGIN * (1.0 + float(finite.max(initial=0.0)))
    floor, thr = _floor(log_p, top_k)
    state = rng.bit_generator.state
    ids = np.empty((tokens, top_k), dtype=np.int64)
    chosen = np.empty((tokens, top_k))
    for lo in range(0, tokens, _BLOCK):  # the uniforms in the order one draw of them all gives
        hi = min(tokens, lo + _BLOCK)
        u = rng.random(size=(hi - lo, E))
        if not u.all():  # numpy's gumbel draws a zero uniform again: take its own path
            rng.bit_generator.state = state
            return gumbel_top_k_reference(log_p, tokens, top_k, rng)
        _floor_top_k(u, log_p, top_k, margin, floor, thr, ids[lo:hi], chosen[lo:hi])
    z = np.exp(chosen - chosen[:, :1])
    gates = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return ids, gates


#: the fewest experts per chosen expert for which the approximate-then-exact path pays
_EXPERTS_PER_K = 16
#: the mean number of entries per chosen expert whose uniform is under its expert's threshold
#: (:func:`_floor`): a row with fewer than ``k`` of them over the floor is ranked in full
_OVER_FLOOR_PER_K = 2.5
#: rows of uniforms drawn and ranked at a time (a few MiB per array)
_BLOCK = 1024
#: how far below a row's ``k``-th largest approximate logit an entry is still computed exactly,
#: per unit of the largest finite ``|log_p|`` plus one: the approximation is off by a few ulp of
#: the Gumbel noise (magnitude < 40) plus the rounding of the sum, far below half of that
_MARGIN = 1e-9


def _floor(log_p: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """A logit ``floor`` and per expert the uniform ``thr`` under which its logit reaches it.

    The logit ``log_p[e] + g(u)`` (``g(u) = -log(-log(1 - u))``, decreasing in ``u``) is at
    least ``floor`` exactly when ``u <= 1 - exp(-exp(log_p[e] - floor))``; the floor is set
    (bisection, deterministic) so that :data:`_OVER_FLOOR_PER_K` ``* k`` entries of a row are
    under their threshold on average. The thresholds are those of a slightly lower floor (a
    safety far above their rounding), and a threshold near one is one (where ``g`` is steep):
    an entry whose exact logit reaches the floor is always under its threshold."""
    want = _OVER_FLOOR_PER_K * k
    finite = log_p[np.isfinite(log_p)]
    if not finite.size:  # no expert can be drawn: every entry is a candidate
        return -math.inf, np.ones_like(log_p)
    lo, hi = float(finite.min()) - 60.0, float(finite.max()) + 60.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        with np.errstate(over="ignore"):
            over = float(-np.expm1(-np.exp(log_p - mid)).sum())
        if over > want:
            lo = mid
        else:
            hi = mid
    floor = lo
    with np.errstate(over="ignore"):  # exp(+large) is inf: a threshold of one
        thr = -np.expm1(-np.exp(log_p - (floor - _FLOOR_SAFETY * (1.0 + abs(floor)))))
    thr[thr > 1.0 - 1e-6] = 1.0
    return floor, thr


#: how much lower (per unit of ``|floor|`` plus one) the floor of the thresholds is
_FLOOR_SAFETY = 1e-6


def _floor_top_k(
    u: np.ndarray, log_p: np.ndarray, k: int, margin: float, floor: float, thr: np.ndarray,
    ids: np.ndarray, chosen: np.ndarray,
) -> None:  # fmt: skip
    """:func:`_exact_top_k` looking only at the entries under their threshold (:func:`_floor`):
    a row where ``k`` of them are over the floor (by the approximation, less the margin) has its
    top ``k`` among them; the other rows are ranked in full."""
    T, E = u.shape
    flat = np.flatnonzero(u <= thr)  # by row, ascending index within a row
    rows = flat // E
    cols = flat - rows * E
    approx = _approx_logits(u.ravel()[flat], log_p[cols])
    full = np.flatnonzero(np.bincount(rows[approx >= floor + margin], minlength=T) < k)
    if full.size:
        sub_ids, sub_chosen = ids[full], chosen[full]  # copies: written back below
        _exact_top_k(u[full], log_p, k, margin, sub_ids, sub_chosen)
        ids[full], chosen[full] = sub_ids, sub_chosen
        keep = np.ones(T, dtype=bool)
        keep[full] = False
        sel = keep[rows]
        rows, cols, flat, approx = rows[sel], cols[sel], flat[sel], approx[sel]
    counts = np.bincount(rows, minlength=T)
    m = int(counts.max(initial=0))
    pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.full((T, m), -np.inf)
    padded[rows, pos] = approx
    kth = np.partition(padded, m - k, axis=1)[:, m - k] if m >= k else np.full(T, np.inf)
    near = approx >= kth[rows] - margin
    skip = full if full.size else None
    _rank_exact(u.ravel()[flat[near]], rows[near], cols[near], log_p, k, ids, chosen, skip=skip)


def _approx_logits(u: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """``log_p + g(u)`` with numpy's vectorized ``log`` (a few ulp off the exact values)."""
    approx = np.subtract(1.0, u)
    np.log(approx, out=approx)
    np.negative(approx, out=approx)
    np.log(approx, out=approx)
    np.negative(approx, out=approx)
    approx += log_p
    return approx


def _exact_top_k(
    u: np.ndarray, log_p: np.ndarray, k: int, margin: float, ids: np.ndarray, chosen: np.ndarray
) -> None:
    """Fill ``ids`` and ``chosen`` (the exact logits) with each row's top ``k`` of
    ``log_p + gumbel(u)`` (see :func:`gumbel_top_k`)."""
    T, E = u.shape
    approx = _approx_logits(u, log_p)
    kth = np.partition(approx, E - k, axis=1)[:, E - k : E - k + 1]
    flat = np.flatnonzero(approx >= kth - margin)  # by row, ascending index within a row
    rows = flat // E
    _rank_exact(u.ravel()[flat], rows, flat - rows * E, log_p, k, ids, chosen)


def _rank_exact(
    u: np.ndarray, rows: np.ndarray, cols: np.ndarray, log_p: np.ndarray, k: int,
    ids: np.ndarray, chosen: np.ndarray, skip: np.ndarray | None = None,
) -> None:  # fmt: skip
    """Rank each row's candidates (uniforms ``u`` of experts ``cols``, by row, ascending expert
    within a row) by their exact logits into ``ids`` and ``chosen`` (rows ``skip`` untouched)."""
    T = ids.shape[0]
    # the reference's values: 0.0 - 1.0 * log(-log(1.0 - u)), each log the C library's
    inner = np.fromiter(map(math.log, (1.0 - u).tolist()), np.float64, u.size)
    outer = np.fromiter(map(math.log, (-inner).tolist()), np.float64, u.size)
    exact = (0.0 - 1.0 * outer) + log_p[cols]  # gumbel + log_p (IEEE addition commutes)
    counts = np.bincount(rows, minlength=T)
    m = int(counts.max(initial=0))
    if m == k and skip is None:  # every row has exactly k candidates (all but a near-tie)
        vals, idx = exact.reshape(T, k), cols.reshape(T, k)
    else:
        pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        vals = np.full((T, max(m, k)), -np.inf)
        idx = np.zeros((T, max(m, k)), dtype=np.int64)
        vals[rows, pos] = exact
        idx[rows, pos] = cols
    rank = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    if skip is None or not skip.size:
        ids[:] = np.take_along_axis(idx, rank, axis=1)
        chosen[:] = np.take_along_axis(vals, rank, axis=1)
        return
    keep = np.ones(T, dtype=bool)
    keep[skip] = False
    ids[keep] = np.take_along_axis(idx, rank, axis=1)[keep]
    chosen[keep] = np.take_along_axis(vals, rank, axis=1)[keep]


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


def first_tokens(trace: RoutingTrace, tokens: int, home: str = "blocks") -> RoutingTrace:
    """What :func:`synth_layers` gives for ``tokens`` tokens, cut from its ``trace`` of as many
    or more (same layers, seed and options, ``home`` its scheme): a layer's rows are drawn one
    after the other from its own generator (the same uniforms, on the fast path and on the
    reference's alike), so the first rows of a longer draw are the shorter draw, bit for bit."""
    if not 0 < tokens <= trace.tokens:
        raise TraceError(f"trace has {trace.tokens} tokens, cannot take the first {tokens}")
    home_die = assign_home_dies(tokens, trace.num_dies, home)
    layers = []
    for lr in trace.layers:
        ids, gates = lr.ids[:tokens].copy(), lr.gates[:tokens].copy()
        layers.append(LayerRouting(lr.name, lr.num_experts, lr.top_k, ids, gates, home_die.copy()))
    return RoutingTrace(trace.model, trace.num_dies, layers, dict(trace.provenance))


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
