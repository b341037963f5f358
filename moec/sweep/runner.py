"""Running a sweep: every point not yet in the journal, as Ray tasks or in-process.

Each point is one :func:`moec.bench.run_bench` call (one model, target with the
point's overrides, token count, pass pipeline and strategy), wrapped by :func:`evaluate_point`
so that a point that cannot run (its slots do not fit SRAM, a mesh too small for the strategy,
any :class:`~moec.ir.errors.MoecError`) comes back as ``status="error"`` with its one-line
message instead of stopping the sweep. The driver stores each result the moment it arrives, so
an interrupted sweep resumes where it stopped.

Two executors, same results:

* **Ray** (default when ``ray`` is importable): ``ray.init(address="local")`` starts an embedded
  local instance with ``workers`` CPUs (default: all), or ``address`` joins a running cluster (whose nodes must
  have moec installed). Each point is a task of one CPU; at most ``2 x workers`` are in flight,
  and results are collected with ``ray.wait`` in completion order.
* **local**: the points in order, in this process (``--local``, or Ray not installed).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from moec import __version__
from moec.ir.errors import MoecError
from moec.sweep.fingerprint import code_fingerprint, inputs_hash
from moec.sweep.spec import Point, SweepSpec
from moec.sweep.store import Journal, Row, export_parquet, flatten_metrics


class SweepRunError(MoecError):
    """A sweep that cannot start: Ray asked for but missing, a cluster that does not answer."""


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs to run one point (plain data: it crosses process borders)."""

    point_id: str
    index: int
    model: str
    target: str
    tokens: int
    strategy: str
    passes: str
    overrides: tuple[tuple[str, int | float | str], ...]
    routing: str
    layers: int | str
    calibration: str
    accuracy: bool | None = None
    allow_overflow: bool = False

    def input_files(self) -> dict[str, str]:
        """The files this point reads besides the code, ``{role: path}`` (presets and
        ``synth:`` routing are code)."""
        files = {"model": self.model} if self.model.endswith(".onnx") else {}
        if _is_target_file(self.target):
            files["target"] = self.target
        if not self.routing.startswith("synth"):
            files["routing"] = self.routing
        if self.calibration not in ("sample", "same"):
            files["calibration"] = self.calibration
        return files

    def inputs_hash(self) -> str:
        """:func:`~moec.sweep.fingerprint.inputs_hash` of :meth:`input_files`."""
        return inputs_hash(self.input_files())


@dataclass(frozen=True)
class Stale:
    """Stored rows that the current code and inputs would not write: how many, and why.
    ``fingerprint`` is theirs (None: a journal from before fingerprints); ``inputs`` is True
    when the code matches and the files they read have changed."""

    count: int
    fingerprint: str | None
    inputs: bool = False

    def message(self, journal: str, action: str) -> str:
        """One line for stderr: ``N rows of JOURNAL were computed by ...; ACTION``."""
        rows = f"{self.count} row{'s' if self.count != 1 else ''} of {journal}"
        were = "were" if self.count != 1 else "was"
        if self.inputs:
            why = "from other contents of their input files (model, target, routing or calibration)"
        elif self.fingerprint is None:
            why = "by an older moec (no fingerprint)"
        else:
            why = f"by another moec (fingerprint {self.fingerprint}, this one is {code_fingerprint()})"
        return f"{rows} {were} computed {why}; {action}"


@dataclass
class SweepSummary:
    """What a run did: points in the spec, skipped (already stored), run, ok and error.
    ``stale``: stored rows of this spec's points written by other code or from other input
    files (recomputed, or kept when ``reused_stale``); ``foreign``: rows this run got from a
    worker whose code differs from the driver's (a cluster node with another moec)."""

    total: int
    skipped: int
    stale: list[Stale] = field(default_factory=list)
    reused_stale: bool = False
    foreign: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    executor: str = "local"
    exported: str | None = None
    first_errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.ok + self.errors


def _is_target_file(target: str) -> bool:
    return target.endswith(".toml") or "/" in target or os.sep in target


def _resolve(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def make_task(spec: SweepSpec, point: Point, allow_overflow: bool = False) -> PointTask:
    """The task of one point; files named in the spec are made absolute (relative to it).
    ``allow_overflow``: a point past a die's SRAM is measured (``sram_over_bytes`` among its
    metrics) instead of being an error."""
    base = os.path.dirname(os.path.abspath(spec.path))
    model, target = str(point.get("model")), str(point.get("target"))
    if model.endswith(".onnx"):
        model = _resolve(model, base)
    if _is_target_file(target):
        target = _resolve(target, base)
    routing = spec.routing if spec.routing.startswith("synth") else _resolve(spec.routing, base)
    calibration = spec.calibration
    if calibration not in ("sample", "same"):
        calibration = _resolve(calibration, base)
    tokens = point.get("tokens")
    assert isinstance(tokens, int)
    return PointTask(
        point_id=point.point_id, index=point.index, model=model, target=target, tokens=tokens,
        strategy=str(point.get("strategy")), passes=str(point.get("passes")),
        overrides=tuple(sorted(point.overrides.items())), routing=routing, layers=spec.layers,
        calibration=calibration, accuracy=spec.accuracy, allow_overflow=allow_overflow,
    )  # fmt: skip


def evaluate_point(task: PointTask) -> dict[str, Any]:
    """Run one point: ``{"status", "error", "metrics", "elapsed_s"}``. Never raises for a
    point that cannot run; the error is the point's result."""
    from moec.bench import run_bench

    start = time.perf_counter()
    status, error, metrics = "ok", None, {}
    try:
        rows = run_bench(
            task.model, task.target, [task.tokens], [task.strategy], routing=task.routing,
            calibration=task.calibration, layers=task.layers, passes=[task.passes],
            overrides=task.overrides, accuracy=task.accuracy, allow_overflow=task.allow_overflow,
        )  # fmt: skip
        metrics = flatten_metrics(rows[0])
    except MoecError as err:
        status, error = "error", err.one_line()
    except Exception as err:  # a bug at one point must not cost the rest of the sweep
        status, error = "error", f"internal error: {type(err).__name__}: {err}".splitlines()[0]
    return {
        "status": status, "error": error, "metrics": metrics,
        "elapsed_s": round(time.perf_counter() - start, 6),
        # of the process (node) that ran the point
        "moec_version": __version__, "fingerprint": code_fingerprint(),
        "inputs_hash": task.inputs_hash(),
    }  # fmt: skip


def result_row(spec: SweepSpec, point: Point, result: dict[str, Any]) -> Row:
    """The journal row of a point and its result."""
    row: Row = {
        "point_id": point.point_id, "point_index": point.index, "status": result["status"],
        "error": result["error"], "moec_version": result.get("moec_version", __version__),
        "fingerprint": result.get("fingerprint"), "inputs_hash": result.get("inputs_hash"),
        "spec_hash": spec.spec_hash,
        "elapsed_s": result["elapsed_s"],
    }  # fmt: skip
    row.update(point.values)
    row.update(result["metrics"])
    return row


Done = Callable[[Point, dict[str, Any]], None]


def find_stale(
    stored: dict[str, tuple[str | None, str | None]], tasks: list[tuple[Point, PointTask]]
) -> dict[tuple[str | None, bool], list[str]]:
    """The stored points of ``tasks`` that this process would not write as they are, grouped
    by (their fingerprint, whether only the input files differ), groups in a fixed order
    (fingerprint None first, then by fingerprint, code causes before input causes)."""
    mine = code_fingerprint()
    groups: dict[tuple[str | None, bool], list[str]] = {}
    for point, task in tasks:
        if point.point_id not in stored:
            continue
        fp, inputs = stored[point.point_id]
        if fp != mine:
            groups.setdefault((fp, False), []).append(point.point_id)
        elif inputs != task.inputs_hash():
            groups.setdefault((fp, True), []).append(point.point_id)
    return dict(
        sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0] is not None, kv[0][0] or ""))
    )


def _run_local(tasks: list[tuple[Point, PointTask]], done: Done) -> None:
    for point, task in tasks:
        done(point, evaluate_point(task))


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


#: Seconds ``--address`` may take to answer before the sweep gives up (``--connect-timeout``).
CONNECT_TIMEOUT_S = 30.0


def _probe(address: str, timeout: float) -> None:
    """Fail fast when nothing answers at a ``host:port`` address: Ray itself retries for many
    minutes. Other address forms (``auto``, ``ray://``) are left to Ray, under the same timeout."""
    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise SweepRunError(
            f"cannot reach a Ray cluster at {address}: {reason} (after at most {timeout:g} s; "
            "--connect-timeout)",
            address,
        ) from None


def start_ray(address: str | None, workers: int | None, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Join the cluster at ``address`` (or start an embedded local instance); True when this
    call started Ray (and so must shut it down). Raises :class:`SweepRunError` within about
    ``timeout`` seconds when no cluster answers."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            _probe(address, timeout)
            # Ray's own retries for an unreachable GCS default to minutes
            for knob in (
                "RAY_gcs_rpc_server_reconnect_timeout_s",
                "RAY_gcs_server_request_timeout_seconds",
            ):
                os.environ.setdefault(knob, str(max(1, int(timeout))))
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            # "local": always a new embedded instance, never a cluster left running
            ray.init(
                address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR,
                log_to_driver=False,
            )  # fmt: skip
    except SweepRunError:
        raise
    except Exception as err:
        raise SweepRunError(f"cannot start Ray: {err}".splitlines()[0], address) from None
    return True


def _run_ray(tasks: list[tuple[Point, PointTask]], done: Done, workers: int | None) -> None:
    import ray

    slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1)(evaluate_point)
    queue: Iterator[tuple[Point, PointTask]] = iter(tasks)
    pending: dict[Any, Point] = {}

    def fill() -> None:
        while len(pending) < 2 * slots:
            item = next(queue, None)
            if item is None:
                return
            pending[remote.remote(item[1])] = item[0]

    fill()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            point = pending.pop(ref)
            done(point, ray.get(ref))
        fill()


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    out_dir: str,
    *,
    use_ray: bool,
    address: str | None = None,
    workers: int | None = None,
    retry_errors: bool = False,
    allow_overflow: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    reuse_stale: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_point: Callable[[Row], None] | None = None,
    on_stale: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Run the points of ``spec`` missing from ``out_dir``'s journal, storing each as it ends;
    then export the whole journal to Parquet (when pyarrow exists). A stored row is reused only
    when the current code and input files would write it (its ``fingerprint`` and
    ``inputs_hash``, :mod:`moec.sweep.fingerprint`); stale rows are recomputed, or kept with
    ``reuse_stale``, and ``on_stale(line)`` is told either way, one line per cause.
    ``on_start(total, todo)`` and ``on_point(row)`` drive a progress display. With Ray, the
    engine is up (or the cluster reached, within ``connect_timeout`` seconds) before the
    journal is opened. ``allow_overflow``: see :func:`make_task`."""
    from moec.sweep.store import EXPORT, with_speedups

    started_ray = start_ray(address, workers, connect_timeout) if use_ray else False
    try:
        journal = Journal(out_dir)
    except BaseException:
        if started_ray:
            _shutdown_ray()
        raise
    try:
        journal.record_spec(spec.spec_hash, spec.name, spec.path, spec.columns(), spec_text)
        stored = journal.stored(include_errors=not retry_errors)
        points = list(spec.points())
        tasks = [(p, make_task(spec, p, allow_overflow)) for p in points]
        stale = find_stale(stored, tasks)
        stale_ids = {pid for ids in stale.values() for pid in ids}
        todo = [
            (p, t)
            for p, t in tasks
            if p.point_id not in stored or (p.point_id in stale_ids and not reuse_stale)
        ]
        summary = SweepSummary(total=len(points), skipped=len(points) - len(todo))
        summary.stale = [Stale(len(ids), fp, inputs) for (fp, inputs), ids in stale.items()]
        summary.reused_stale = reuse_stale and bool(stale)
        summary.executor = "local" if not use_ray else ("ray " + (address or "local"))
        if on_stale is not None:
            action = "kept (--reuse-stale)" if reuse_stale else "recomputing"
            for group in summary.stale:
                on_stale(group.message(journal.path, action))
        if on_start is not None:
            on_start(len(points), len(todo))
        mine = code_fingerprint()

        def done(point: Point, result: dict[str, Any]) -> None:
            row = result_row(spec, point, result)
            if row["fingerprint"] != mine:
                key = str(row["fingerprint"])
                summary.foreign[key] = summary.foreign.get(key, 0) + 1
            journal.put(row)
            if row["status"] == "ok":
                summary.ok += 1
            else:
                summary.errors += 1
                if len(summary.first_errors) < 3:
                    summary.first_errors.append(f"point {point.index}: {row['error']}")
            if on_point is not None:
                on_point(row)

        start = time.perf_counter()
        if use_ray and todo:
            _run_ray(todo, done, workers)
        else:
            _run_local(todo, done)
        summary.seconds = time.perf_counter() - start
        rows = with_speedups(journal.rows(), journal.axis_columns())
        path = os.path.join(out_dir, EXPORT)
        if export_parquet(rows, path):
            summary.exported = path
        return summary
    finally:
        journal.close()
        if started_ray:
            _shutdown_ray()


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()
