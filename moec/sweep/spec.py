"""The sweep spec: a TOML file naming the axes of a design-space exploration and the fixed rest.

::

    # examples/sweeps/qwen3_dse.toml
    [sweep]                        # the fixed rest
    routing = "synth:zipf=1.0,seed=0"
    layers = 1                     # MoE layers per point (integer or "all")
    calibration = "sample"         # placement calibration of hydra/eplb (see moec bench)
    accuracy = "auto"              # accuracy vs ONNX Runtime: "auto" (models with weights), true, false

    [fixed]                        # one value of any axis, held for every point
    models = "qwen3-30b-a3b"
    targets = "fsedp-2x2"
    strategies = "fsedp-paired"
    tokens = 1024

    [axes]                         # lists: every combination is a point
    d2d_gbps = [128, 256, 512, 1024, 2048]
    ddr_gbps_per_die = [8, 16, 32, 48, 64, 128]
    sram_mib_per_die = [2, 4, 8, 14, 16]

Axis names are the workload axes ``models``, ``targets``, ``strategies``, ``tokens``, ``passes``
and every flat target override key (``moec.ir.target.OVERRIDE_KEYS``). Each of the workload axes
must be given once, in ``[axes]`` or in ``[fixed]`` (``passes`` defaults to ``"none"``, the exact
program). The points are the Cartesian product of the axes: the workload axes in the order
above, then the target keys in the order written, the last one varying fastest.

Every error is one line naming the file, the line:col of the offending key where the text has
it, the table and key, what was expected and what was found::

    spec.toml:9:1: [axes] d2d_gbps: expected numbers > 0, found 'fast'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from moec.ir.errors import Location, MoecError
from moec.ir.target import OVERRIDE_KEYS


class SweepSpecError(MoecError):
    """A sweep spec that cannot be read: bad TOML, unknown axis, bad value, unknown name."""


#: Axes that name the workload rather than a target field, in their canonical column order.
WORKLOAD_AXES: tuple[str, ...] = ("models", "targets", "tokens", "passes", "strategies")
#: The column each workload axis fills in a result row (the singular: one value per row).
COLUMN: dict[str, str] = {
    "models": "model",
    "targets": "target",
    "tokens": "tokens",
    "passes": "passes",
    "strategies": "strategy",
}
#: Keys of the ``[sweep]`` table and their defaults.
SWEEP_KEYS: dict[str, Any] = {
    "name": "",
    "routing": "synth:zipf=1.0,seed=0",
    "layers": 1,
    "calibration": "sample",
    "accuracy": "auto",
}
TABLES = ("sweep", "fixed", "axes")

Value = int | float | str


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep: a value for every axis (fixed ones included)."""

    index: int
    values: tuple[tuple[str, Value], ...]
    point_id: str

    def get(self, axis: str) -> Value:
        return dict(self.values)[axis]

    @property
    def overrides(self) -> dict[str, Value]:
        """The target override keys of this point."""
        return {k: v for k, v in self.values if k in OVERRIDE_KEYS}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, checked sweep spec (see the module docstring)."""

    path: str
    name: str
    routing: str
    layers: int | str
    calibration: str
    #: measure accuracy: None = where the model has weights, True / False = always / never
    accuracy: bool | None
    #: axis name -> values, in the order written (fixed axes hold one value)
    axes: dict[str, list[Value]]
    #: the axes that vary (given in ``[axes]``), in the order written
    varying: tuple[str, ...]
    spec_hash: str = field(default="")

    def columns(self) -> list[str]:
        """Result-row column of each axis: workload axes first (canonical order), then the
        target override keys in the order written."""
        work = [COLUMN[a] for a in WORKLOAD_AXES if a in self.axes]
        return work + [a for a in self.axes if a in OVERRIDE_KEYS]

    def points(self) -> Iterator[Point]:
        """Every point, the last axis written varying fastest."""
        names = list(self.axes)
        for i, combo in enumerate(itertools.product(*(self.axes[n] for n in names))):
            values = tuple((COLUMN.get(n, n), v) for n, v in zip(names, combo, strict=True))
            yield Point(i, values, point_id(values, self.fixed_context()))

    def size(self) -> int:
        n = 1
        for vals in self.axes.values():
            n *= len(vals)
        return n

    def fixed_context(self) -> dict[str, Any]:
        """What besides the axis values decides a point's result (part of its id)."""
        return {
            "routing": self.routing, "layers": self.layers, "calibration": self.calibration,
            "accuracy": self.accuracy,
        }  # fmt: skip


def point_id(values: tuple[tuple[str, Value], ...], context: dict[str, Any]) -> str:
    """A stable id of a point: a hash of its axis values (sorted by name) and the fixed rest.

    Two specs that share a point share its id, so extending a sweep reuses what is done."""
    doc = json.dumps({"values": sorted(values), "context": context}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _locate(text: str, table: str, key: str) -> tuple[int, int] | None:
    """Line and column (1-based) of ``key = ...`` inside ``[table]`` of a TOML text."""
    current = ""
    pat = re.compile(rf"^(\s*)(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
    for n, line in enumerate(text.splitlines(), start=1):
        head = re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if head:
            current = head.group(1).strip()
            continue
        m = pat.match(line)
        if m and current == table:
            return n, len(m.group(1)) + 1
    return None


class _Reader:
    """Raises located errors while checking one spec text."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text

    def fail(self, table: str, key: str, message: str) -> SweepSpecError:
        pos = _locate(self.text, table, key) if key else None
        where: str | Location = Location(self.path, *pos) if pos else self.path
        label = f"[{table}] {key}" if key else f"[{table}]"
        return SweepSpecError(f"{label}: {message}", where)


def _show(v: Any) -> str:
    return repr(v) if not isinstance(v, bool) else str(v).lower()


def _check_values(rd: _Reader, table: str, key: str, values: list[Any]) -> list[Value]:
    """Type-check and normalize the values of one axis."""
    out: list[Value] = []
    for v in values:
        if key == "tokens":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise rd.fail(table, key, f"expected integers >= 1, found {_show(v)}")
        elif key in ("models", "targets", "strategies", "passes"):
            if not isinstance(v, str) or (not v.strip() and key != "passes"):
                raise rd.fail(table, key, f"expected non-empty strings, found {_show(v)}")
            v = v.strip()
        else:  # a target override key: checked against the target builder below
            if isinstance(v, bool) or not isinstance(v, int | float | str):
                raise rd.fail(table, key, f"expected numbers or names, found {_show(v)}")
        if v in out:
            raise rd.fail(table, key, f"expected distinct values, found {_show(v)} twice")
        out.append(v)
    return out


def _check_strategy(rd: _Reader, table: str, spelling: str, known: list[str]) -> None:
    """A strategy spelling names a registered strategy with options it reads (the common
    options' values are checked too; a strategy's own values are checked when it lowers)."""
    from moec.compiler.lower import COMMON_OPTIONS, STRATEGIES, LoweringOptions, parse_strategy

    try:
        name, options = parse_strategy(spelling)
        if name not in known:
            raise rd.fail(table, "strategies", f"expected one of {', '.join(known)}, found {name!r}")  # fmt: skip
        allowed = sorted(set(COMMON_OPTIONS) | set(STRATEGIES[name].options))
        for key in options:
            if key not in allowed:
                raise rd.fail(
                    table, "strategies",
                    f"{spelling}: expected options among {', '.join(allowed)}, found {key!r}",
                )  # fmt: skip
        LoweringOptions.parse({k: v for k, v in options.items() if k in COMMON_OPTIONS})
    except SweepSpecError:
        raise
    except MoecError as err:
        raise rd.fail(table, "strategies", f"{spelling}: {err.message}") from None


def _check_names(rd: _Reader, table_of: dict[str, str], axes: dict[str, list[Value]]) -> None:
    """Models, targets, strategies and pipelines exist; override values suit every target."""
    from moec.bench import known_strategies
    from moec.compiler.bench.spec import canonical_model
    from moec.compiler.passes import parse_pipeline
    from moec.ir.target import load_target
    from moec.models.catalog import catalog

    base = os.path.dirname(os.path.abspath(rd.path))
    models = catalog()
    for m in axes["models"]:
        assert isinstance(m, str)
        if m.endswith(".onnx"):
            if not os.path.exists(os.path.join(base, m)):
                raise rd.fail(table_of["models"], "models", f"model file {m!r} does not exist")
        elif canonical_model(m) not in models:
            raise rd.fail(
                table_of["models"], "models",
                f"expected a .onnx file or one of {', '.join(models)}, found {m!r}",
            )  # fmt: skip
    known = known_strategies()
    for s in axes["strategies"]:
        assert isinstance(s, str)
        _check_strategy(rd, table_of["strategies"], s, known)
    for p in axes["passes"]:
        assert isinstance(p, str)
        if p and p != "none":
            try:
                parse_pipeline(p)
            except MoecError as err:
                raise rd.fail(table_of["passes"], "passes", err.message) from None
    for t in axes["targets"]:
        assert isinstance(t, str)
        try:
            load_target(t, None, base_dir=base)
        except MoecError as err:
            raise rd.fail(table_of["targets"], "targets", err.message) from None
        for key, vals in axes.items():
            if key not in OVERRIDE_KEYS:
                continue
            for v in vals:
                try:
                    load_target(t, {key: v}, base_dir=base)
                except MoecError as err:
                    msg = err.message.removeprefix(f"override {key}: ")
                    raise rd.fail(table_of[key], key, msg) from None


def parse_spec(text: str, path: str = "<spec>") -> SweepSpec:
    """Parse and check a sweep spec text (``path`` is for messages and relative files)."""
    rd = _Reader(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        msg = str(err).split(" (at line")[0]
        where: str | Location = Location(path, int(m.group(1)), int(m.group(2))) if m else path
        raise SweepSpecError(f"invalid TOML: {msg}", where) from None
    for key, val in doc.items():
        if key not in TABLES:
            raise SweepSpecError(f"unknown table or key {key!r}, expected one of [sweep], [fixed], [axes]", path)  # fmt: skip
        if not isinstance(val, dict):
            raise SweepSpecError(f"{key}: expected a table [{key}], found {_show(val)}", path)
    known_axes = (*WORKLOAD_AXES, *OVERRIDE_KEYS)
    sweep = doc.get("sweep", {})
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise rd.fail("sweep", key, f"unknown key, expected one of {', '.join(SWEEP_KEYS)}")
    opts = {**SWEEP_KEYS, **sweep}
    for key in ("name", "routing", "calibration"):
        if not isinstance(opts[key], str):
            raise rd.fail("sweep", key, f"expected a string, found {_show(opts[key])}")
    if not (isinstance(opts["accuracy"], bool) or opts["accuracy"] == "auto"):
        raise rd.fail("sweep", "accuracy", f'expected true, false or "auto", found {_show(opts["accuracy"])}')  # fmt: skip
    layers = opts["layers"]
    if not (
        (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1)
        or layers == "all"
    ):
        raise rd.fail("sweep", "layers", f"expected an integer >= 1 or \"all\", found {_show(layers)}")  # fmt: skip
    try:
        from moec.ir.routing_synth import parse_routing_spec

        if opts["routing"].startswith("synth"):
            parse_routing_spec(opts["routing"])
        elif not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(path)), opts["routing"])):  # fmt: skip
            raise rd.fail("sweep", "routing", f"expected synth:... or a trace file, found {opts['routing']!r} (no such file)")  # fmt: skip
    except SweepSpecError:
        raise
    except MoecError as err:
        raise rd.fail("sweep", "routing", err.message) from None

    axes: dict[str, list[Value]] = {}
    table_of: dict[str, str] = {}
    varying: list[str] = []
    for table in ("axes", "fixed"):
        for key, val in doc.get(table, {}).items():
            if key not in known_axes:
                hint = f" (did you mean {key + 's'!r}?)" if key + "s" in WORKLOAD_AXES else ""
                raise rd.fail(table, key, f"unknown axis{hint}, expected one of {', '.join(known_axes)}")  # fmt: skip
            if key in axes:
                raise rd.fail(table, key, "given in both [axes] and [fixed], expected one of them")  # fmt: skip
            if table == "axes":
                if not isinstance(val, list):
                    raise rd.fail(table, key, f"expected a list of values, found {_show(val)}")
                if not val:
                    raise rd.fail(table, key, "expected at least one value, found an empty list")
                varying.append(key)
                values = val
            else:
                if isinstance(val, list | dict):
                    raise rd.fail(table, key, f"expected one value (lists go in [axes]), found {_show(val)}")  # fmt: skip
                values = [val]
            axes[key] = _check_values(rd, table, key, values)
            table_of[key] = table
    axes.setdefault("passes", [""])
    table_of.setdefault("passes", "fixed")
    axes["passes"] = ["" if p == "none" else p for p in axes["passes"]]
    for key in WORKLOAD_AXES:
        if key not in axes:
            raise SweepSpecError(f"{key}: expected in [axes] (a list) or [fixed] (one value), found neither", path)  # fmt: skip
    _check_names(rd, table_of, axes)
    # Workload axes first in canonical order, then the target keys as written: the point order
    # (and so the row order) does not depend on where in the file a workload axis was given.
    ordered = {k: axes[k] for k in WORKLOAD_AXES}
    ordered.update({k: v for k, v in axes.items() if k in OVERRIDE_KEYS})
    canon = json.dumps({"axes": ordered, "sweep": {k: opts[k] for k in SWEEP_KEYS}}, sort_keys=True)
    name = opts["name"] or os.path.basename(path).removesuffix(".toml")
    return SweepSpec(
        path=path, name=name, routing=opts["routing"], layers=layers,
        calibration=opts["calibration"], accuracy=None if opts["accuracy"] == "auto" else opts["accuracy"],
        axes=ordered, varying=tuple(varying),
        spec_hash=hashlib.sha256(canon.encode()).hexdigest()[:16],
    )  # fmt: skip


def load_spec(path: str) -> SweepSpec:
    """Read and check a sweep spec file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise SweepSpecError(f"cannot read the sweep spec: {err.strerror}", path) from None
    except UnicodeDecodeError as err:
        raise SweepSpecError(
            f"not UTF-8 text (byte {err.start}); TOML files are UTF-8", path
        ) from None
    return parse_spec(text, path)
