"""Routing traces: which experts each token of each MoE layer goes to, and on which die it lives.

A trace drives timing at real scale, where weights are not stored: per layer, per token, its home
die and its top-k expert ids with their gate weights (ids of a token ordered by decreasing gate,
so column 0 is the top-1 expert). Synthetic traces (:mod:`moec.ir.routing_synth`) and traces
dumped from model runs share the format documented in ``docs/routing.md``: JSON for readable
traces, NPZ for large ones. Files are written atomically with deterministic bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.ir.errors import Location, TraceError
from moec.ir.files import atomic_write

FORMAT = "moec-routing"
VERSION = 1
HOME_SCHEMES = ("blocks", "round_robin")


@dataclass(eq=False)
class LayerRouting:
    """One MoE layer's routing: ``ids`` [T, k] int64, ``gates`` [T, k] float32, ``home_die`` [T]."""

    name: str
    num_experts: int
    top_k: int
    ids: np.ndarray
    gates: np.ndarray
    home_die: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])

    def expert_load(self) -> np.ndarray:
        """Tokens routed to each expert, [num_experts] int64."""
        return np.bincount(self.ids.reshape(-1), minlength=self.num_experts).astype(np.int64)


@dataclass(eq=False)
class RoutingTrace:
    """A routing trace: model name, die count, provenance, and one :class:`LayerRouting` per layer."""

    model: str
    num_dies: int
    layers: list[LayerRouting]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.layers[0].tokens if self.layers else 0

    @property
    def num_experts(self) -> int | None:
        """The experts per layer when every layer has the same number, else None."""
        values = {lr.num_experts for lr in self.layers}
        return values.pop() if len(values) == 1 else None

    @property
    def top_k(self) -> int | None:
        values = {lr.top_k for lr in self.layers}
        return values.pop() if len(values) == 1 else None

    def head(self, n: int) -> RoutingTrace:
        """The trace of the first ``n`` layers (for runs that simulate only some layers)."""
        if not 0 < n <= len(self.layers):
            raise TraceError(f"trace has {len(self.layers)} layers, cannot take the first {n}")
        return dataclasses.replace(self, layers=self.layers[:n])

    def rehome(self, num_dies: int, scheme: str = "blocks") -> RoutingTrace:
        """The same routing with tokens reassigned to ``num_dies`` dies by ``scheme``."""
        layers = [
            dataclasses.replace(lr, home_die=assign_home_dies(lr.tokens, num_dies, scheme))
            for lr in self.layers
        ]
        prov = {**self.provenance, "home": scheme}
        return dataclasses.replace(self, num_dies=num_dies, layers=layers, provenance=prov)


def assign_home_dies(tokens: int, num_dies: int, scheme: str = "blocks") -> np.ndarray:
    """Home die of each token: ``blocks`` gives die ``t * D // T`` (each die a contiguous slice
    of the batch, as in data parallelism); ``round_robin`` gives die ``t % D``."""
    if num_dies < 1:
        raise TraceError(f"number of dies must be >= 1, found {num_dies}")
    t = np.arange(tokens, dtype=np.int64)
    if scheme == "blocks":
        return (t * num_dies) // max(tokens, 1)
    if scheme == "round_robin":
        return t % num_dies
    raise TraceError(f"unknown home-die scheme {scheme!r}, expected one of {HOME_SCHEMES}")


# --- validation ------------------------------------------------------------------------------------
def _check_layer(lr: LayerRouting, i: int, where: str, num_dies: int | None) -> None:
    def fail(what: str) -> None:
        raise TraceError(f"layers[{i}] ({lr.name}): {what}", where)

    if lr.num_experts < 1 or not 1 <= lr.top_k <= lr.num_experts:
        fail(
            f"expected 1 <= top_k <= num_experts, found top_k={lr.top_k}, num_experts={lr.num_experts}"
        )
    T = lr.ids.shape[0] if lr.ids.ndim == 2 else -1
    if lr.ids.ndim != 2 or lr.ids.shape[1] != lr.top_k:
        fail(f"ids: expected shape [tokens, {lr.top_k}], found {list(lr.ids.shape)}")
    if lr.gates.shape != lr.ids.shape:
        fail(f"gates: expected shape {list(lr.ids.shape)}, found {list(lr.gates.shape)}")
    if lr.home_die.shape != (T,):
        fail(f"home_die: expected shape [{T}], found {list(lr.home_die.shape)}")
    if lr.ids.size:
        bad = np.argwhere((lr.ids < 0) | (lr.ids >= lr.num_experts))
        if bad.size:
            t, j = bad[0]
            fail(
                f"ids[{t}][{j}]: expected an expert id in 0..{lr.num_experts - 1}, found {lr.ids[t, j]}"
            )
        s = np.sort(lr.ids, axis=1)
        dup = np.argwhere(s[:, 1:] == s[:, :-1])
        if dup.size:
            fail(f"ids[{dup[0][0]}]: expected distinct experts, found {lr.ids[dup[0][0]].tolist()}")
        bad = np.argwhere(~np.isfinite(lr.gates) | (lr.gates < 0))
        if bad.size:
            t, j = bad[0]
            fail(f"gates[{t}][{j}]: expected a finite weight >= 0, found {lr.gates[t, j]}")
    if lr.home_die.size:
        limit = num_dies if num_dies is not None else None
        bad = np.argwhere((lr.home_die < 0) | (lr.home_die >= (limit or np.iinfo(np.int64).max)))
        if bad.size:
            t = bad[0][0]
            fail(f"home_die[{t}]: expected a die in 0..{(limit or 1) - 1}, found {lr.home_die[t]}")


def check_trace(trace: RoutingTrace, where: str = "trace") -> None:
    """Internal consistency: shapes, id ranges, distinct experts, gates, home dies, token count."""
    if trace.num_dies < 1:
        raise TraceError(f"num_dies: expected an integer >= 1, found {trace.num_dies}", where)
    for i, lr in enumerate(trace.layers):
        _check_layer(lr, i, where, trace.num_dies)
        if lr.tokens != trace.tokens:
            raise TraceError(
                f"layers[{i}] ({lr.name}): expected {trace.tokens} tokens like layers[0], "
                f"found {lr.tokens}",
                where,
            )


def validate(
    trace: RoutingTrace,
    layers: list[tuple[int, int]],
    tokens: int | None = None,
    *,
    num_dies: int | None = None,
    where: str = "trace",
) -> None:
    """Check that ``trace`` fits a model whose MoE layers are ``[(num_experts, top_k), ...]``.

    The trace must have exactly one layer per model layer (use :meth:`RoutingTrace.head` to run
    a prefix), the same experts and top-k per layer, ``tokens`` tokens when given and home dies
    below ``num_dies`` when given; a mismatch is a one-line TraceError naming the layer.
    """
    check_trace(trace, where)
    if len(trace.layers) != len(layers):
        raise TraceError(
            f"trace has {len(trace.layers)} MoE layers, the model has {len(layers)}", where
        )
    for i, (lr, (num_experts, top_k)) in enumerate(zip(trace.layers, layers, strict=True)):
        if (lr.num_experts, lr.top_k) != (num_experts, top_k):
            raise TraceError(
                f"layers[{i}] ({lr.name}): model layer has {num_experts} experts top-{top_k}, "
                f"trace has {lr.num_experts} experts top-{lr.top_k}",
                where,
            )
    if tokens is not None and trace.tokens != tokens:
        raise TraceError(f"trace has {trace.tokens} tokens per layer, expected {tokens}", where)
    if num_dies is not None:
        for i, lr in enumerate(trace.layers):
            if lr.home_die.size and int(lr.home_die.max()) >= num_dies:
                t = int(np.argmax(lr.home_die >= num_dies))
                raise TraceError(
                    f"layers[{i}] ({lr.name}): home_die[{t}] = {lr.home_die[t]}, the target has "
                    f"{num_dies} dies (re-home the trace with --dies)",
                    where,
                )


# --- statistics -----------------------------------------------------------------------------------
def layer_stats(lr: LayerRouting) -> dict[str, Any]:
    """Per-expert load, entropy of the load distribution (bits and normalized), max/mean load."""
    load = lr.expert_load()
    total = int(load.sum())
    p = load[load > 0] / max(total, 1)
    entropy = float(-(p * np.log2(p)).sum()) if total else 0.0
    max_entropy = math.log2(lr.num_experts) if lr.num_experts > 1 else 1.0
    mean = total / lr.num_experts
    return {
        "name": lr.name,
        "num_experts": lr.num_experts,
        "top_k": lr.top_k,
        "tokens": lr.tokens,
        "active_experts": int((load > 0).sum()),
        "entropy_bits": round(entropy, 6),
        "entropy_normalized": round(entropy / max_entropy, 6),
        "max_over_mean": round(float(load.max()) / mean, 6) if mean else 0.0,
        "load": load.tolist(),
        "tokens_per_die": np.bincount(lr.home_die, minlength=1).tolist(),
    }


# --- files -----------------------------------------------------------------------------------------
def _meta(trace: RoutingTrace) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": trace.model}
    if trace.num_experts is not None:
        meta["num_experts"] = trace.num_experts
    if trace.top_k is not None:
        meta["top_k"] = trace.top_k
    meta.update(tokens=trace.tokens, num_dies=trace.num_dies, provenance=trace.provenance)
    return meta


def _gate_text(row: np.ndarray) -> str:
    # str() of a float32 is its shortest round-tripping decimal.
    return "[" + ", ".join(str(g) for g in row.astype(np.float32)) + "]"


def layers_json_lines(layers: list[LayerRouting], indent: str) -> list[str]:
    """The JSON lines of a ``layers`` list's items (one line per token), indented by ``indent``."""
    lines: list[str] = []
    i1, i2, i3 = indent + "  ", indent + "    ", indent + "      "
    for li, lr in enumerate(layers):
        head = {"name": lr.name, "num_experts": lr.num_experts, "top_k": lr.top_k}
        lines.append(i1 + "{")
        for key, value in head.items():
            lines.append(f"{i2}{json.dumps(key)}: {json.dumps(value)},")
        lines.append(f'{i2}"home_die": {json.dumps(lr.home_die.tolist())},')
        ids = [json.dumps(row) for row in lr.ids.tolist()]
        lines.append(f'{i2}"ids": [\n{i3}' + f",\n{i3}".join(ids) + f"\n{i2}],")
        gates = [_gate_text(row) for row in lr.gates]
        lines.append(f'{i2}"gates": [\n{i3}' + f",\n{i3}".join(gates) + f"\n{i2}]")
        lines.append(i1 + "}" + ("," if li + 1 < len(layers) else ""))
    return lines


def to_json(trace: RoutingTrace) -> str:
    """The JSON text of a trace: metadata, then per layer one line per token."""
    meta = _meta(trace)
    lines = ["{"]
    for key, value in meta.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, sort_keys=True)},")
    lines.append('  "layers": [')
    lines += layers_json_lines(trace.layers, "  ")
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(
        buf, array if array.ndim == 0 else np.ascontiguousarray(array), allow_pickle=False
    )
    return buf.getvalue()


def to_npz(trace: RoutingTrace, compress: bool = True) -> bytes:
    """NPZ bytes (loadable with ``numpy.load``): ``meta`` (JSON text, layer heads included),
    ``ids_<i>``, ``gates_<i>``, ``home_die_<i>``. Fixed zip timestamps make the bytes
    deterministic; ``compress=False`` stores the arrays as they are (a scratch file)."""
    meta = _meta(trace)
    meta["layers"] = [
        {"name": lr.name, "num_experts": lr.num_experts, "top_k": lr.top_k} for lr in trace.layers
    ]
    arrays: list[tuple[str, np.ndarray]] = [("meta", np.array(json.dumps(meta, sort_keys=True)))]
    for i, lr in enumerate(trace.layers):
        arrays += [
            (f"ids_{i}", lr.ids.astype(np.int64)),
            (f"gates_{i}", lr.gates.astype(np.float32)),
            (f"home_die_{i}", lr.home_die.astype(np.int64)),
        ]
    return npz_bytes(arrays, compress)


def npz_bytes(arrays: list[tuple[str, np.ndarray]], compress: bool = True) -> bytes:
    """The arrays as a deterministic ``.npz`` file (fixed timestamps and modes), deflated
    unless ``compress`` is False."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, array in arrays:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy_bytes(array))
    return buf.getvalue()


def save_trace(trace: RoutingTrace, path: str | os.PathLike[str], compress: bool = True) -> None:
    """Write ``trace`` to ``path`` (``.json`` or ``.npz``, deflated unless ``compress`` is
    False) atomically, after checking it."""
    p = os.fspath(path)
    check_trace(trace, p)
    if p.endswith(".json"):
        atomic_write(p, to_json(trace))
    elif p.endswith(".npz"):
        atomic_write(p, to_npz(trace, compress))
    else:
        raise TraceError("expected a trace file name ending in .json or .npz", p)


def _field(
    doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, ctx: str
) -> Any:
    if key not in doc:
        raise TraceError(f"{ctx}{key}: missing", where)
    v = doc[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TraceError(f"{ctx}{key}: expected {names}, found {type(v).__name__}", where)
    return v


def _array(value: Any, dtype: type, where: str, ctx: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "iuf" and arr.size:
            raise ValueError
        if dtype is np.int64 and arr.size and arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError
        return arr.astype(dtype)
    except (ValueError, TypeError):
        kind = "integers" if dtype is np.int64 else "numbers"
        raise TraceError(f"{ctx}: expected a rectangular array of {kind}", where) from None


def _from_doc(meta: dict[str, Any], layer_docs: list[Any], arrays: Any, where: str) -> RoutingTrace:
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise TraceError(f"format: expected {FORMAT!r}, found {fmt!r}", where)
    if meta.get("version") != VERSION:
        raise TraceError(f"version: expected {VERSION}, found {meta.get('version')!r}", where)
    model = _field(meta, "model", str, where, "")
    num_dies = _field(meta, "num_dies", int, where, "")
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise TraceError("provenance: expected an object", where)
    layers = []
    for i, doc in enumerate(layer_docs):
        ctx = f"layers[{i}]."
        if not isinstance(doc, dict):
            raise TraceError(f"layers[{i}]: expected an object", where)
        name = _field(doc, "name", str, where, ctx)
        E = _field(doc, "num_experts", int, where, ctx)
        k = _field(doc, "top_k", int, where, ctx)
        ids, gates, home = arrays(i, doc, ctx)
        empty = (0, k)
        ids = _array(ids, np.int64, where, ctx + "ids")
        gates = _array(gates, np.float32, where, ctx + "gates")
        if ids.size == 0:
            ids, gates = ids.reshape(empty), gates.reshape(empty)
        home = _array(home, np.int64, where, ctx + "home_die")
        layers.append(LayerRouting(name, E, k, ids, gates, home))
    trace = RoutingTrace(model, num_dies, layers, provenance)
    check_trace(trace, where)
    for key in ("num_experts", "top_k", "tokens"):
        if key in meta and meta[key] != getattr(trace, key):
            raise TraceError(
                f"{key}: header says {meta[key]!r}, layers have {getattr(trace, key)!r}", where
            )
    return trace


def read_json_doc(path: str) -> dict[str, Any]:
    """The top-level object of a JSON trace file (a located TraceError when it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as err:
        raise TraceError(
            f"invalid JSON: {err.msg}", Location(path, err.lineno, err.colno)
        ) from None
    except UnicodeDecodeError:
        raise TraceError("invalid JSON: not UTF-8 text", path) from None
    if not isinstance(doc, dict):
        raise TraceError("expected a JSON object at the top level", path)
    return doc


def read_npz_doc(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of an NPZ trace file and its ``meta`` header (a JSON object with a ``layers``
    list); a located TraceError when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise TraceError(f"not a readable NPZ trace: {err}", path) from None
    if "meta" not in files:
        raise TraceError("NPZ trace has no 'meta' array", path)
    try:
        raw = files["meta"]
        if raw.size != 1 or raw.dtype.kind != "U":
            raise TraceError("meta: expected one JSON text", path)
        meta = json.loads(str(raw.reshape(()).item()))
    except json.JSONDecodeError as err:
        raise TraceError(f"meta: invalid JSON: {err.msg}", path) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list):
        raise TraceError("meta: expected an object with a 'layers' list", path)
    return files, meta


def _load_json(path: str) -> RoutingTrace:
    doc = read_json_doc(path)
    layer_docs = _field(doc, "layers", list, path, "")

    def arrays(i: int, d: dict[str, Any], ctx: str) -> tuple[Any, Any, Any]:
        return tuple(_field(d, k, list, path, ctx) for k in ("ids", "gates", "home_die"))  # type: ignore[return-value]

    return _from_doc(doc, layer_docs, arrays, path)


def _load_npz(path: str) -> RoutingTrace:
    files, meta = read_npz_doc(path)

    def arrays(i: int, d: dict[str, Any], ctx: str) -> tuple[Any, Any, Any]:
        out = []
        for key in ("ids", "gates", "home_die"):
            if f"{key}_{i}" not in files:
                raise TraceError(f"{ctx}{key}: array '{key}_{i}' missing", path)
            out.append(files[f"{key}_{i}"])
        return out[0], out[1], out[2]

    return _from_doc(meta, meta["layers"], arrays, path)


def load_trace(path: str | os.PathLike[str]) -> RoutingTrace:
    """Read a ``.json`` or ``.npz`` trace; any problem is a located TraceError."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise TraceError("routing trace not found", p)
    if p.endswith(".npz"):
        return _load_npz(p)
    return _load_json(p)
