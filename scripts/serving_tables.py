"""Serving tables (issue 16): many decode iterations per strategy, with and without residency.

    python scripts/serving_tables.py                       # print the tables (Markdown)
    python scripts/serving_tables.py --update docs/results.md   # rewrite the marked section there
    python scripts/serving_tables.py --iterations 32 --models qwen3-30b-a3b   # a quick look
    python scripts/serving_tables.py --cache rows.json ...   # keep finished rows, resume/split
    python scripts/serving_tables.py --cache rows.json --rerun ep,hydra,tp   # only those again
    python scripts/serving_tables.py --target fsedp-3x3 --iterations 64 --update docs/results.md
    python scripts/serving_tables.py --section ideal --update docs/results.md   # --set ideal=true

Each (target, section) pair's tables live between their own markers, so ``--update`` adds or
replaces that pair's tables and keeps the others; the regenerate command printed above each
table is the one that made it. ``--section calibrated`` (default: the target as configured, the
calibrated hardware model since issue 12) writes ``<!-- serving-tables:T:begin -->``;
``--section ideal`` runs every row with ``ideal=true`` (the first-wave machine: GEMMs at peak,
no fixed costs) and writes ``<!-- serving-tables:T:ideal:begin -->``, except on ``fsedp-2x2``,
whose ideal tables keep the original ``<!-- serving-tables:begin -->`` pair.

Two workloads, each ``--iterations`` decode steps of ``--tokens`` tokens on ``--target``
(default ``fsedp-2x2``), one MoE layer (``moec bench --iterations N --layers 1``), timing only:

1. **drifting synthetic routing** for the FSE-DP paper's four models:
   ``synth:zipf=1.0,seed=0,drift=0.05,burst=0.02`` (Zipf(1.0) popularity whose log takes a
   random walk of step 0.05 per iteration, and a one-iteration 8x burst of one expert with
   probability 0.02 per iteration; ``docs/routing.md``);
2. **real decode routing** of the trained LM (``models/tiny_moe_lm.onnx``, 8 experts top-2,
   ``moec trace dump --decode``: ``--tokens`` sequences decoding greedily in ONNX Runtime, one
   byte each per step), layer ``moe0``, driving Mixtral-8x7B's shape (also 8 experts top-2):
   the only paper-scale preset whose experts and top-k match the LM's routing.

Strategies: EP, Hydra, TP, FSE-DP-paired, FSE-DP-paired with 20% token buffering; each without
and with ``popularity`` residency (spare SRAM keeps loaded micro-slices across iterations,
``backends/interp/residency.py``). Columns: tokens/s over the run, p50/p99 iteration latency,
p99 token latency (arrival to the token's last expert, deferral included), DRAM bytes per token,
deferred pairs (all executed; ``deferred_pairs_final`` is 0 in every row, checked here), residency
hits and mean iteration latency over the mean per-iteration analytic bound (below 1 only with
residency, whose saved loads the bound counts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

from moec.bench import run_bench
from moec.decode import decode_sequence
from moec.ir.routing_seq import save_sequence
from moec.ir.target import load_target

BEGIN = "<!-- serving-tables:begin -->"
END = "<!-- serving-tables:end -->"
DEFAULT_TARGET = "fsedp-2x2"
SECTIONS = ("calibrated", "ideal")
ANY_END = re.compile(r"<!-- serving-tables:(\S+:)?end -->")


def markers(target: str, section: str = "calibrated") -> tuple[str, str]:
    """The begin and end markers of ``target``'s tables in ``section`` (the ideal tables of
    ``fsedp-2x2``: the original, unnamed pair)."""
    if section == "ideal" and target == DEFAULT_TARGET:
        return BEGIN, END
    name = target if section == "calibrated" else f"{target}:{section}"
    return f"<!-- serving-tables:{name}:begin -->", f"<!-- serving-tables:{name}:end -->"


def overrides(section: str) -> dict[str, Any]:
    """The target overrides of ``section``'s rows."""
    return {"ideal": "true"} if section == "ideal" else {}


def replace_section(doc: str, text: str, target: str, section: str) -> str:
    """``doc`` with ``target``'s ``section`` tables replaced by ``text`` (or added after the
    last serving tables, or in a new section at the end)."""
    begin, end = markers(target, section)
    if begin in doc and end in doc:
        a, b = doc.index(begin), doc.index(end) + len(end) + 1
        return doc[:a] + text + doc[b:]
    ends = list(ANY_END.finditer(doc))
    if ends:  # after the other tables, in the same section
        at = ends[-1].end() + 1
        return doc[:at] + "\n" + text + doc[at:]
    return doc.rstrip("\n") + "\n\n## Serving over many iterations (issue 16)\n\n" + text


def command(args: argparse.Namespace) -> str:
    """The command line that regenerates ``args``' tables in docs/results.md."""
    parts = ["python scripts/serving_tables.py"]
    if args.target != DEFAULT_TARGET:
        parts.append(f"--target {args.target}")
    if args.section != "calibrated":
        parts.append(f"--section {args.section}")
    if args.models != list(PAPER):
        parts.append(f"--models {','.join(args.models)}")
    if args.tokens != 16:
        parts.append(f"--tokens {args.tokens}")
    if not args.lm:
        parts.append("--no-lm")
    parts.append(f"--iterations {args.iterations} --update docs/results.md")
    return " ".join(parts)


PAPER = ("phi3.5-moe", "yuan2-m32", "deepseek-moe-16b", "qwen3-30b-a3b")
STRATEGIES = (
    ("EP", "ep"),
    ("Hydra", "hydra"),
    ("TP", "tp"),
    ("FSE-DP-paired", "fsedp{order=paired}"),
    ("FSE-DP + buffering 20%", "fsedp{order=paired,slack=0.2}"),
)
DRIFT = "synth:zipf=1.0,seed=0,drift=0.05,burst=0.02"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CACHE: dict[str, Any] = {}
CACHE_PATH: list[str] = []
CACHED_ONLY: list[bool] = []
RERUN: list[str] = []  # strategies whose cached rows are run again (a change moved only them)


def rows_for(
    model: str, routing: str, tokens: int, iterations: int, target: str, label: str = "",
    section: str = "calibrated",
) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    labels = dict((s, label) for label, s in STRATEGIES)
    for residency in (None, "popularity"):
        key = f"{model}|{label or routing}|{residency}|{iterations}|{tokens}|{target}"
        if section != "calibrated":
            key += f"|{section}"
        if key in CACHE and not RERUN:
            out += CACHE[key]
            continue
        if key in CACHE:  # run only the strategies a change moved; keep the others' rows
            t0 = time.perf_counter()
            fresh = {
                r["strategy"]: r
                for r in run_bench(
                    model, target, [tokens], RERUN, routing=routing, iterations=iterations,
                    residency=residency, keep_going=True, overrides=overrides(section),
                )
            }  # fmt: skip
            rows = []
            for old in CACHE[key]:
                new = fresh.get(old["strategy"])
                if new is not None:
                    new["label"], new["residency"] = old["label"], old["residency"]
                rows.append(new if new is not None else old)
            _check_done(model, rows)
            print(f"{model} residency={residency} (rerun {','.join(RERUN)}): "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)  # fmt: skip
            _store(key, rows)
            out += rows
            continue
        if CACHED_ONLY and CACHED_ONLY[0]:  # a table of what finished: say which rows did not
            out += [
                {"model": model, "strategy": s, "label": labels[s],
                 "residency": residency or "-", "error": "not run (cut for time)"}
                for _, s in STRATEGIES
            ]  # fmt: skip
            continue
        t0 = time.perf_counter()
        rows = run_bench(
            model, target, [tokens], [s for _, s in STRATEGIES], routing=routing,
            iterations=iterations, residency=residency, keep_going=True,
            overrides=overrides(section),
        )  # fmt: skip
        _check_done(model, rows)
        for r in rows:
            r["label"] = labels[r["strategy"]]
            r["residency"] = residency or "-"
        out += rows
        print(f"{model} residency={residency}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        _store(key, rows)
    return out


def _check_done(model: str, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r.get("error") is None and r["deferred_pairs_final"] != 0:
            raise SystemExit(f"{model} {r['strategy']}: pairs left undone")


def _store(key: str, rows: list[dict[str, Any]]) -> None:
    if CACHE_PATH:  # keep finished rows: a long run can be resumed or split over processes
        _load_cache()
        CACHE[key] = rows
        with open(CACHE_PATH[0], "w", encoding="utf-8") as f:
            json.dump(CACHE, f, sort_keys=True)


def _load_cache() -> None:
    for path in CACHE_PATH:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                CACHE.update(json.load(f))


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | strategy | residency | tokens/s | iter p50 ms | iter p99 ms | token p99 ms "
        "| DRAM MB/token | deferred pairs | max delay (it) | residency hits | latency/bound |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r.get("error"):  # a point that cannot run (e.g. does not fit SRAM): say why
            why = r["error"].split(": ", 1)[-1].split(" (--allow-overflow")[0]
            lines.append(f"| {r['model']} | {r['label']} | {r['residency']} | {why} |")
            continue
        hits = r.get("residency_hits")
        total = hits + r.get("residency_misses", 0) if hits is not None else 0
        lines.append(
            f"| {r['model']} | {r['label']} | {r['residency']} | {r['tokens_per_s']:.0f} "
            f"| {1e3 * r['iteration_latency_p50_s']:.3f} | {1e3 * r['iteration_latency_p99_s']:.3f} "
            f"| {1e3 * r['token_latency_p99_s']:.3f} | {r['dram_bytes_per_token'] / 1e6:.2f} "
            f"| {r['deferred_pairs']} | {r['max_delay_iterations']} "
            f"| {f'{100 * hits / total:.1f}%' if total else '-'} | {r['latency_over_bound']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def section(args: argparse.Namespace) -> str:
    cmd = command(args)
    begin, end = markers(args.target, args.section)
    machine = (
        "ideal machine (`--set ideal=true`)" if args.section == "ideal" else "calibrated model"
    )
    ideal = " --set ideal=true" if args.section == "ideal" else ""
    out = [
        begin,
        f"{args.iterations} decode iterations of {args.tokens} tokens, one MoE layer, "
        f"`{args.target}`, {machine}, timing only, one event simulation per row (no reset "
        f"between iterations). Regenerate: `{cmd}` (each row is `moec bench --model M --tokens "
        f"{args.tokens} --strategies S --iterations {args.iterations} --routing R "
        f"[--residency popularity]{ideal} --json`).",
        "",
        f"**Drifting synthetic routing** (`{DRIFT}`):",
        "",
    ]
    drift_rows: list[dict[str, Any]] = []
    for model in args.models:
        drift_rows += rows_for(
            model, DRIFT, args.tokens, args.iterations, args.target, section=args.section
        )
    if drift_rows:
        out += [table(drift_rows)]
    lm_rows: list[dict[str, Any]] = []
    if args.lm:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "lm.npz")
            seq = decode_sequence(
                os.path.join(ROOT, "models/tiny_moe_lm.onnx"), batch=args.tokens,
                steps=args.iterations, num_dies=load_target(args.target).num_dies,
            )  # fmt: skip
            save_sequence(seq, path)
            lm_rows = rows_for(
                "mixtral-8x7b", path, args.tokens, args.iterations, args.target, "lm-decode",
                args.section,
            )  # fmt: skip
    if lm_rows:
        out += [
            f"**Real decode routing** of `models/tiny_moe_lm.onnx` (layer moe0; {args.tokens} "
            "sequences decoding greedily in ONNX Runtime, prompted from the held-out text; "
            "`moec trace dump models/tiny_moe_lm.onnx --decode "
            f"{args.iterations} --batch {args.tokens} -o lm.npz`) on Mixtral-8x7B's shape:",
            "",
            table(lm_rows),
        ]
    out += [end]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--iterations", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--target", default=DEFAULT_TARGET)
    ap.add_argument(
        "--section", choices=SECTIONS, default="calibrated",
        help="calibrated: the target as configured; ideal: every row with --set ideal=true",
    )  # fmt: skip
    ap.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=list(PAPER))
    ap.add_argument("--update", metavar="FILE.md", help="replace the target's marked section")
    ap.add_argument(
        "--cache", metavar="FILE.json[,MORE.json]", help="reuse and keep finished rows there"
    )
    ap.add_argument("--no-lm", dest="lm", action="store_false", help="skip the LM-routing table")
    ap.add_argument(
        "--cached-only", action="store_true",
        help="run nothing: rows missing from --cache are marked as not run",
    )  # fmt: skip
    ap.add_argument(
        "--rerun", metavar="S1,S2", type=lambda s: [x for x in s.split(",") if x], default=[],
        help="with --cache: run these strategies again for cached rows and keep the others' rows "
        "(after a change that moved only them)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    CACHED_ONLY[:] = [args.cached_only]
    unknown = [s for s in args.rerun if s not in dict((v, k) for k, v in STRATEGIES)]
    if unknown:
        ap.error(f"--rerun {','.join(unknown)}: not a strategy of these tables "
                 f"({', '.join(v for _, v in STRATEGIES)})")  # fmt: skip
    if args.rerun and not args.cache:
        ap.error("--rerun: needs --cache (the rows it keeps)")
    RERUN[:] = args.rerun
    if args.cache:  # rows are written to the first file; all are read
        CACHE_PATH.extend(args.cache.split(","))
        _load_cache()
    text = section(args)
    if not args.update:
        sys.stdout.write(text)
        return 0
    with open(args.update, encoding="utf-8") as f:
        doc = f.read()
    doc = replace_section(doc, text, args.target, args.section)
    with open(args.update, "w", encoding="utf-8") as f:
        f.write(doc)
    print(f"updated {args.update}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
