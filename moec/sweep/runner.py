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


@dataclass
class SweepSummary:
    """What a run did: points in the spec, skipped (already stored), run, ok and error."""

    total: int
    skipped: int
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    executor: str = "local"
    exported: str | None = None
    first_errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.ok + self.errors


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
    if target.endswith(".toml") or "/" in target:
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
        "moec_version": __version__,  # of the process (node) that ran the point
    }  # fmt: skip


def result_row(spec: SweepSpec, point: Point, result: dict[str, Any]) -> Row:
    """The journal row of a point and its result."""
    row: Row = {
        "point_id": point.point_id, "point_index": point.index, "status": result["status"],
        "error": result["error"], "moec_version": result.get("moec_version", __version__),
        "spec_hash": spec.spec_hash,
        "elapsed_s": result["elapsed_s"],
    }  # fmt: skip
    row.update(point.values)
    row.update(result["metrics"])
    return row


Done = Callable[[Point, dict[str, Any]], None]


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
    on_start: Callable[[int, int], None] | None = None,
    on_point: Callable[[Row], None] | None = None,
) -> SweepSummary:
    """Run the points of ``spec`` missing from ``out_dir``'s journal, storing each as it ends;
    then export the whole journal to Parquet (when pyarrow exists). ``on_start(total, todo)``
    and ``on_point(row)`` drive a progress display. With Ray, the engine is up (or the cluster
    reached, within ``connect_timeout`` seconds) before the journal is opened.
    ``allow_overflow``: see :func:`make_task`."""
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
        stored = journal.done(include_errors=not retry_errors)
        points = list(spec.points())
        todo = [(p, make_task(spec, p, allow_overflow)) for p in points if p.point_id not in stored]
        summary = SweepSummary(total=len(points), skipped=len(points) - len(todo))
        summary.executor = "local" if not use_ray else ("ray " + (address or "local"))
        if on_start is not None:
            on_start(len(points), len(todo))

        def done(point: Point, result: dict[str, Any]) -> None:
            row = result_row(spec, point, result)
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
