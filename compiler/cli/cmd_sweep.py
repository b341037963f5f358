"""``moec sweep``: design-space exploration over models, packages, strategies and tokens.

    moec sweep SPEC.toml -o results/ [--local] [--address ADDR [--connect-timeout S]] [--workers N]
               [--retry-errors] [--reuse-stale]
    moec sweep plot results/ --x AXIS|METRIC --y AXIS|METRIC [--color METRIC|AXIS]
               [--facet AXIS] [--where AXIS=VALUE ...] [--contour V] -o out.png

The spec (``moec.sweep.spec``) names the axes and the fixed rest; every point is one
bench run. Points run as Ray tasks (an embedded local instance, or the cluster at ``--address``)
or in-process with ``--local`` (also when Ray is not installed). Each point is stored in
``results/sweep.sqlite`` as it finishes, so running the same command again skips the points done
(unless another moec, or other contents of its input files, computed them: those are recomputed,
or kept with ``--reuse-stale``); ``results/sweep.parquet`` is the export. ``plot`` draws a heatmap (two axes) or a Pareto front
(two metrics) as PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moec.ir.errors import MoecError
from moec.ir.files import check_outputs


class SweepUsageError(MoecError):
    """A ``moec sweep`` command line that does not say what to do."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep", help="design-space sweep over targets, models, strategies, tokens (Ray or local)",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="usage forms:\n" + (__doc__ or "").split("\n\n")[1],
    )  # fmt: skip
    p.add_argument(
        "what",
        nargs="+",
        metavar="SPEC.toml | plot RESULTS",
        help="a sweep spec to run, or 'plot' and a results folder",
    )
    p.add_argument(
        "-o", "--output", metavar="DIR|OUT.png", help="results folder (run) or image file (plot)"
    )
    run_g = p.add_argument_group("run")
    run_g.add_argument("--local", action="store_true", help="run the points in this process")
    run_g.add_argument("--address", metavar="ADDR", help="join the Ray cluster at ADDR")
    run_g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray CPUs to start locally / tasks in flight (default: all CPUs)",
    )
    run_g.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the Ray cluster at --address before giving up (default 30)",
    )
    run_g.add_argument(
        "--retry-errors", action="store_true", help="run the points stored with status error again"
    )
    run_g.add_argument(
        "--reuse-stale", action="store_true",
        help="keep stored points computed by another moec or from other input files "
        "(default: recompute them)",
    )  # fmt: skip
    run_g.add_argument(
        "--allow-overflow", action="store_true",
        help="measure points whose run exceeds a die's SRAM (their rows carry sram_over_bytes)",
    )  # fmt: skip
    plot_g = p.add_argument_group("plot")
    plot_g.add_argument("--x", metavar="COLUMN", help="axis (heatmap) or metric (Pareto)")
    plot_g.add_argument("--y", metavar="COLUMN", help="axis (heatmap) or metric (Pareto)")
    plot_g.add_argument(
        "--color",
        metavar="COLUMN",
        help="heatmap metric (default utilization_compute) or Pareto colour",
    )
    plot_g.add_argument("--facet", metavar="AXIS", help="one panel per value of this axis")
    plot_g.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="AXIS=VALUE",
        help="keep only these points (repeatable)",
    )
    plot_g.add_argument(
        "--contour", type=float, metavar="V", help="heatmap: outline where the metric crosses V"
    )
    p.set_defaults(func=run)  # fmt: skip


def _where(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepUsageError(f"--where: expected AXIS=VALUE, found {item!r}")
        out[key.strip()] = value.strip()
    return out


def run_plot(args: argparse.Namespace) -> int:
    from moec.sweep.plot import plot_results

    if len(args.what) != 2:
        raise SweepUsageError("plot: expected one results folder: moec sweep plot RESULTS ...")
    if args.reuse_stale:
        raise SweepUsageError("--reuse-stale belongs to a sweep run, not 'moec sweep plot'")
    if not args.x or not args.y or not args.output:
        raise SweepUsageError("plot: --x, --y and -o OUT.png are required")
    results = Path(args.what[1])
    check_outputs([args.output], [results / "sweep.sqlite", results / "sweep.parquet", results])
    kind = plot_results(
        args.what[1], args.x, args.y, color=args.color, facet=args.facet,
        where=_where(args.where), out=args.output, contour=args.contour,
        on_stale=lambda line: print(f"moec sweep plot: {line}", file=sys.stderr),
    )  # fmt: skip
    print(f"wrote {args.output} ({kind})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.what[0] == "plot":
        return run_plot(args)
    if len(args.what) != 1:
        raise SweepUsageError(f"expected one spec file, found {' '.join(args.what)}")
    if not args.output:
        raise SweepUsageError("-o DIR: the results folder is required")
    for flag in ("x", "y", "color", "facet", "contour"):
        if getattr(args, flag) is not None:
            raise SweepUsageError(f"--{flag} belongs to 'moec sweep plot'")
    if args.local and args.address:
        raise SweepUsageError(
            "--local runs in this process; --address joins a Ray cluster: give one"
        )
    if not args.connect_timeout > 0:
        raise SweepUsageError(
            f"--connect-timeout: expected seconds > 0, found {args.connect_timeout}"
        )
    if args.workers is not None and args.workers < 1:
        raise SweepUsageError(f"--workers: expected an integer >= 1, found {args.workers}")

    from rich.console import Console

    from moec.progress import Progress
    from moec.sweep.runner import SweepRunError, ray_available, run_sweep
    from moec.sweep.spec import load_spec

    spec = load_spec(args.what[0])
    with open(args.what[0], encoding="utf-8") as f:
        text = f.read()
    use_ray = not args.local
    err = Console(stderr=True)
    if use_ray and not ray_available():
        if args.address:
            raise SweepRunError(
                "--address needs Ray, which is not installed (pip install 'moec[distributed]')"
            )
        err.print("moec sweep: Ray is not installed; running the points in-process (--local)")
        use_ray = False
    with Progress("sweep", None, unit="points") as bar:
        counts = {"ok": 0, "error": 0}

        def started(total: int, todo: int) -> None:
            bar.set_total(todo)
            bar.set_status(f"({total - todo} of {total} already stored)")

        def tick(row: dict[str, Any]) -> None:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            bar.advance(status=f"ok {counts['ok']} error {counts['error']}")

        summary = run_sweep(
            spec, text, args.output, use_ray=use_ray, address=args.address,
            workers=args.workers, retry_errors=args.retry_errors,
            allow_overflow=args.allow_overflow,
            connect_timeout=args.connect_timeout, reuse_stale=args.reuse_stale,
            on_start=started, on_point=tick,
            on_stale=lambda line: print(f"moec sweep: {line}", file=sys.stderr, flush=True),
        )  # fmt: skip
    out = sys.stdout
    print(
        f"{spec.name}: {summary.total} points, {summary.skipped} already stored, ran "
        f"{summary.ran} ({summary.ok} ok, {summary.errors} error) in {summary.seconds:.2f} s "
        f"[{summary.executor}]",
        file=out,
    )
    for line in summary.first_errors:
        print(f"  {line}", file=out)
    for fingerprint, count in sorted(summary.foreign.items()):
        print(
            f"moec sweep: {count} point{'s' if count != 1 else ''} ran on a worker with another "
            f"moec (fingerprint {fingerprint}); the next run recomputes them",
            file=sys.stderr,
        )
    print(f"results: {args.output}/sweep.sqlite"
          + (f", {summary.exported}" if summary.exported else " (pyarrow absent: no Parquet)"),
          file=out)  # fmt: skip
    return 0
