"""Where a sweep's results live: an SQLite journal, exported to Parquet.

``results/sweep.sqlite`` is the journal: one row per point, written and committed the moment the
point finishes, so a sweep killed at any instant (even SIGKILL) keeps every point it finished,
and the next run of the same spec skips them. ``results/sweep.parquet`` is the export analysts
load (pandas, polars, DuckDB), rewritten whole and atomically at the end of every run when
pyarrow is installed.

Why both: a Parquet file is written once, as a whole (appending means rewriting it or keeping
one file per point), so it cannot be the crash-safe record of a run in progress; SQLite commits
one row at a time atomically with the standard library alone, which makes resuming a lookup.
Parquet is columnar, typed and what analysis tools expect, so it is the output to share.

A row holds: the point's id and index, every axis value (one column per axis, named as in
:meth:`~moec.sweep.spec.SweepSpec.columns`), ``status`` (``ok`` or ``error``) and
``error`` (the one-line message), ``moec_version``, ``fingerprint`` and ``inputs_hash`` (what
computed the row: :mod:`moec.sweep.fingerprint`; a resumed row must match both), ``spec_hash``,
``elapsed_s`` (the point's wall time), and every bench metric flattened: ``latency_s``, ``bound_s``, ``latency_over_bound``,
``peak_sram_bytes_max``, ``dram_bytes``, ``link_bytes``, ``utilization_compute``,
``utilization_dram``, ``utilization_links``, ``layers_s`` (JSON list), ``extra_*``, and any
metric a later bench adds (a new column appears the first time a point reports it).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from moec.ir.errors import MoecError
from moec.ir.files import atomic_write

JOURNAL = "sweep.sqlite"
EXPORT = "sweep.parquet"
#: Columns every row has, before the axis columns.
META = (
    "point_id", "point_index", "status", "error", "moec_version", "fingerprint", "inputs_hash",
    "spec_hash", "elapsed_s",
)  # fmt: skip
#: Bench row keys that restate the point (they are its axis columns already).
IDENTITY = ("model", "target", "tokens", "strategy", "passes", "overrides")

Row = dict[str, Any]


class StoreError(MoecError):
    """A results folder that cannot be opened or read."""


def flatten_metrics(row: Mapping[str, Any]) -> Row:
    """A bench row as flat columns: nested dicts joined with ``_``, lists as JSON text, bools as
    0/1; the keys that restate the point (:data:`IDENTITY`) dropped."""
    out: Row = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k in sorted(value):
                put(f"{key}_{k}", value[k])
        elif isinstance(value, list | tuple):
            out[key] = json.dumps(list(value))
        elif isinstance(value, bool):
            out[key] = int(value)
        else:
            out[key] = value

    for key in sorted(row):
        if key not in IDENTITY:
            put(key, row[key])
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parents(folder: str) -> list[str]:
    """``folder`` and the folders above it, nearest first."""
    out, path = [], os.path.abspath(folder)
    while True:
        out.append(path)
        up = os.path.dirname(path)
        if up == path:
            return out
        path = up


class Journal:
    """The SQLite journal of one results folder (see the module docstring)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, JOURNAL)
        for up in _parents(folder):
            if os.path.islink(up) and not os.path.exists(up):
                raise StoreError("is a link to a missing path, not a results folder", up)
            if os.path.exists(up) and not os.path.isdir(up):
                raise StoreError("is a file, not a results folder (-o takes a folder)", up)
        if os.path.isdir(self.path):
            raise StoreError("is a folder, not a sweep journal", self.path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            where = err.filename or folder
            raise StoreError(f"cannot create the results folder: {err.strerror}", where) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError("results folder is not writable", folder)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # Columns without a declared type keep each value's own type (int, float, text).
            cols = ", ".join(
                f"{_quote(c)} TEXT PRIMARY KEY" if c == "point_id" else _quote(c) for c in META
            )
            self.db.execute(f"CREATE TABLE IF NOT EXISTS points ({cols})")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS specs (spec_hash TEXT PRIMARY KEY, name TEXT, "
                "path TEXT, columns TEXT, text TEXT)"
            )
            self.db.commit()
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open the sweep journal: {err}", self.path) from None
        self._columns = self._read_columns()

    def _read_columns(self) -> list[str]:
        return [r[1] for r in self.db.execute("PRAGMA table_info(points)")]

    def close(self) -> None:
        self.db.close()

    def record_spec(
        self, spec_hash: str, name: str, path: str, columns: Sequence[str], text: str
    ) -> None:
        """Remember a spec that wrote to this folder (its axis columns and its text)."""
        self.db.execute(
            "INSERT OR IGNORE INTO specs VALUES (?, ?, ?, ?, ?)",
            (spec_hash, name, path, json.dumps(list(columns)), text),
        )
        self.db.commit()

    def stored(self, include_errors: bool = True) -> dict[str, tuple[str | None, str | None]]:
        """The points already stored (``ok`` ones only unless ``include_errors``): point id ->
        (``fingerprint``, ``inputs_hash``), None where the row has none (a journal written
        before fingerprints existed)."""
        cols = [c if c in self._columns else "NULL" for c in ("fingerprint", "inputs_hash")]
        q = f"SELECT point_id, {', '.join(cols)} FROM points"
        q += "" if include_errors else " WHERE status = 'ok'"
        return {r[0]: (r[1], r[2]) for r in self.db.execute(q)}

    def put(self, row: Mapping[str, Any]) -> None:
        """Store one point's row and commit it (new columns are added as needed)."""
        for col in row:
            if col not in self._columns:
                self.db.execute(f"ALTER TABLE points ADD COLUMN {_quote(col)}")
                self._columns.append(col)
        names = list(row)
        self.db.execute(
            f"INSERT OR REPLACE INTO points ({', '.join(map(_quote, names))}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )
        self.db.commit()

    def rows(self) -> list[Row]:
        """Every stored row, in point order (index, then id), columns in table order."""
        cur = self.db.execute("SELECT * FROM points ORDER BY point_index, point_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]

    def axis_columns(self) -> list[str]:
        """The axis columns of every spec that wrote to this folder, first seen first."""
        cols: list[str] = []
        for (text,) in self.db.execute("SELECT columns FROM specs ORDER BY rowid"):
            for c in json.loads(text):
                if c not in cols:
                    cols.append(c)
        return cols


def open_results(folder: str) -> Journal:
    """The journal of an existing results folder."""
    if not os.path.exists(os.path.join(folder, JOURNAL)):
        raise StoreError(f"no sweep results here (expected {JOURNAL})", folder)
    return Journal(folder)


def with_speedups(rows: Sequence[Row], axis_columns: Iterable[str]) -> list[Row]:
    """Rows with ``speedup_vs_ep`` = latency of the ``ep`` row of the same point (every axis
    equal but the strategy) / latency; ``None`` where there is no such ok row."""
    keys = [c for c in axis_columns if c != "strategy"]

    def point(r: Row) -> tuple[Any, ...]:
        return tuple(r.get(k) for k in keys)

    ep = {
        point(r): r["latency_s"]
        for r in rows
        if r.get("strategy") == "ep" and r.get("status") == "ok" and r.get("latency_s")
    }
    out = []
    for r in rows:
        r = dict(r)
        base, lat = ep.get(point(r)), r.get("latency_s")
        r["speedup_vs_ep"] = round(base / lat, 6) if base is not None and lat else None
        out.append(r)
    return out


def export_parquet(rows: Sequence[Row], path: str) -> bool:
    """Write ``rows`` to a Parquet file atomically; False (nothing written) without pyarrow.

    A column whose values mix text and numbers is written as text; ints and floats mixed are
    written as floats."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    columns: dict[str, Any] = {}
    for n in names:
        vals = [r.get(n) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds == {int}:
            columns[n] = pa.array(vals, type=pa.int64())
        elif kinds <= {int, float} and kinds:
            columns[n] = pa.array([None if v is None else float(v) for v in vals], pa.float64())
        else:
            columns[n] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    atomic_write(path, buf.getvalue())
    return True
