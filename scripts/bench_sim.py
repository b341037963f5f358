"""Simulator speed and memory on whole models and big packages (issue 19's table).

    python scripts/bench_sim.py [--cases table|goals|all] [--strategies ep,tp,...]

Each case is one ``moec bench`` command (compile plus run, all MoE layers where it says so) in a
fresh process; the script prints its wall time, its CPU time (user + system, ``os.wait4``'s
``ru_utime + ru_stime``: on a shared machine the steadier figure, since wall time counts the time
other processes held the cores) and peak resident memory (``ru_maxrss``), and whether the command
succeeded. Nothing is asserted: the goals
(every strategy, the whole of Qwen3-30B-A3B on fsedp-4x4 and of DeepSeek-V3 on npu8-hbm at 1024
tokens, under 10 s and 1 GB; an 8x8 package, one layer at 1024 tokens, under 5 s; impossible
sizes rejected in milliseconds) are read off the printed table.

- ``table``: the runs of issue 19's table (fsedp-paired at 64 .. 16384 tokens on fsedp-4x4,
  fsedp-2x2 at 1024, DeepSeek-V3 at 1024, a 32x32 mesh, one million tokens);
- ``goals``: every strategy on the two full models, and on the 8x8 package;
- ``all``: both.

``--match TEXT`` keeps the cases whose description contains ``TEXT`` (``--match 8x8``);
``--allow-overflow`` passes that flag to every case (the DeepSeek-V3 cases exceed a die's SRAM);
``--save DIR`` keeps each case's JSON rows (``DIR/before``, ``DIR/after``: with ``--before``
the table says whether the two trees printed the same bytes);
``--before DIR`` runs each case twice, first importing ``moec`` from ``DIR``, and prints a
before/after table. ``DIR`` is an older checkout's root (``mkdir -p DIR && git archive REV | tar
-x -C DIR``): its packages live in ``moec/``, ``ir/``, ``compiler/``, ``backends/`` and
``models/`` (pyproject's ``package-dir``), so the script lays them out as one ``moec`` package
(a copy of ``DIR/moec`` with the others linked in) in a temporary directory put on
``PYTHONPATH``. A ``DIR`` that already holds such a ``moec`` package (``DIR/moec/ir``) is used
as it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

STRATEGIES = (
    "ep", "tp", "hydra", "eplb", "fsedp-naive", "fsedp", "fsedp-paired", "fsedp-r5", "fsedp-buf",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    what: str
    args: tuple[str, ...]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moec", "bench", *self.args, "--json"]


def _full(model: str, target: str, tokens: int, strategy: str, *extra: str) -> Case:
    what = f"{model}, all layers, {strategy}, {target}, {tokens} tokens"
    return Case(
        what,
        ("--model", model, "--target", target, "--tokens", str(tokens), "--strategies", strategy,
         "--layers", "all", *extra),
    )  # fmt: skip


def table_cases() -> list[Case]:
    cases = [
        _full("qwen3-30b-a3b", "fsedp-4x4", t, "fsedp-paired") for t in (64, 256, 1024, 4096, 16384)
    ]
    cases.append(_full("qwen3-30b-a3b", "fsedp-2x2", 1024, "fsedp-paired"))
    cases.append(_full("deepseek-v3", "npu8-hbm", 1024, "ep"))
    cases.append(
        Case(
            "qwen3-30b-a3b, 1 layer, ep + fsedp-paired, 32x32 mesh, 1024 tokens",
            (
                "--model",
                "qwen3-30b-a3b",
                "--target",
                "fsedp-4x4",
                "--set",
                "dies_x=32",
                "--set",
                "dies_y=32",
                "--tokens",
                "1024",
                "--strategies",
                "ep,fsedp-paired",
            ),
        )  # fmt: skip
    )
    cases.append(
        Case(
            "qwen3-30b-a3b, 1 layer, ep, 1000000 tokens (must be rejected)",
            ("--model", "qwen3-30b-a3b", "--tokens", "1000000", "--strategies", "ep"),
        )
    )
    return cases


def goal_cases(strategies: tuple[str, ...]) -> list[Case]:
    cases = [_full("qwen3-30b-a3b", "fsedp-4x4", 1024, s) for s in strategies]
    cases += [_full("deepseek-v3", "npu8-hbm", 1024, s) for s in strategies]
    cases += [
        Case(
            f"qwen3-30b-a3b, 1 layer, {s}, 8x8 mesh, 1024 tokens",
            (
                "--model",
                "qwen3-30b-a3b",
                "--target",
                "fsedp-4x4",
                "--set",
                "dies_x=8",
                "--set",
                "dies_y=8",
                "--tokens",
                "1024",
                "--strategies",
                s,
            ),
        )  # fmt: skip
        for s in strategies
    ]
    return cases


def run(
    case: Case, timeout: float, pythonpath: str | None = None, save: str | None = None
) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, status) of one case in a fresh process
    (importing ``moec`` from ``pythonpath`` when given; its JSON rows written to the file
    ``save`` when given, else dropped)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = open(save, "w") if save else None  # noqa: SIM115 - closed once the process ends
    start = time.perf_counter()
    proc = subprocess.Popen(
        case.command(),
        stdout=out if out is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.abspath(pythonpath)) if pythonpath else None,
    )
    status = ""
    while True:
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            proc.kill()
            pid, code, usage = os.wait4(proc.pid, 0)
            status = f"killed after {timeout:g} s"
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if out is not None:
        out.close()
    err = proc.stderr.read().strip().splitlines() if proc.stderr else []
    proc.returncode = os.waitstatus_to_exitcode(code)
    if not status:
        status = (
            "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {err[-1] if err else ''}"
        )
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, status


def package_root(tree: str, tmp: str) -> str:
    """A directory whose ``moec`` is the package of the checkout ``tree`` (see module doc)."""
    if os.path.isdir(os.path.join(tree, "moec", "ir")):
        return tree
    if not os.path.isfile(os.path.join(tree, "moec", "__init__.py")):
        raise SystemExit(f"--before {tree}: not a moec checkout (no moec/__init__.py)")
    pkg = os.path.join(tmp, "moec")
    shutil.copytree(os.path.join(tree, "moec"), pkg)
    for sub in ("ir", "compiler", "backends", "models"):
        os.symlink(os.path.abspath(os.path.join(tree, sub)), os.path.join(pkg, sub))
    return tmp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", choices=("table", "goals", "all"), default="table")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="for the goals cases")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--match", default="", help="only the cases whose description has this")
    ap.add_argument(
        "--allow-overflow", action="store_true",
        help="pass --allow-overflow to every case (DeepSeek-V3 on npu8-hbm exceeds a die's SRAM)",
    )  # fmt: skip
    ap.add_argument(
        "--before",
        metavar="DIR",
        help="also run each case, first, with the checkout DIR's moec (e.g. from git archive) "
        "and print both: an A/B table",
    )
    ap.add_argument(
        "--save",
        metavar="DIR",
        help="write each case's JSON rows to DIR (with --before: DIR/before, DIR/after, and "
        "say whether the two trees' rows are identical)",
    )
    args = ap.parse_args(argv)
    strategies = tuple(s for s in args.strategies.split(",") if s)
    cases = table_cases() if args.cases in ("table", "all") else []
    if args.cases in ("goals", "all"):
        cases += goal_cases(strategies)
    cases = [c for c in cases if args.match in c.what]
    if args.allow_overflow:
        cases = [Case(c.what + ", --allow-overflow", (*c.args, "--allow-overflow")) for c in cases]
    if args.before:
        with tempfile.TemporaryDirectory(prefix="bench_sim_before_") as tmp:
            before = package_root(args.before, tmp)
            same = " same rows |" if args.save else ""
            print("| run | before: wall / CPU / peak RSS | after: wall / CPU / peak RSS |" + same)
            print("|---|---|---|" + ("---|" if args.save else ""))
            for k, case in enumerate(cases):
                files = [_save_path(args.save, tree, k) for tree in ("before", "after")]
                cells = [
                    _cell(*run(case, args.timeout, before, files[0])),
                    _cell(*run(case, args.timeout, None, files[1])),
                ]
                tail = f" {_same(*files)} |" if args.save else ""
                print(f"| {case.what} | {cells[0]} | {cells[1]} |{tail}", flush=True)
        return 0
    print("| run | wall | CPU | peak RSS | status |")
    print("|---|---|---|---|---|")
    for k, case in enumerate(cases):
        wall, cpu, rss, status = run(case, args.timeout, None, _save_path(args.save, "", k))
        print(
            f"| {case.what} | {wall:.1f} s | {cpu:.1f} s | {rss:,.0f} MB | {status} |", flush=True
        )
    return 0


def _save_path(save: str | None, tree: str, k: int) -> str | None:
    if not save:
        return None
    os.makedirs(os.path.join(save, tree), exist_ok=True)
    return os.path.join(save, tree, f"case{k:02d}.json")


def _same(a: str | None, b: str | None) -> str:
    """Whether the two runs printed the same bytes (the JSON rows); "-" when either has none."""
    if a is None or b is None:
        return "-"
    with open(a, "rb") as fa, open(b, "rb") as fb:
        x, y = fa.read(), fb.read()
    return "-" if not x or not y else ("yes" if x == y else "NO")


def _cell(wall: float, cpu: float, rss: float, status: str) -> str:
    return f"{wall:.1f} s / {cpu:.1f} s / {rss:,.0f} MB" + (
        "" if status == "ok" else f" ({status})"
    )


if __name__ == "__main__":
    sys.exit(main())
