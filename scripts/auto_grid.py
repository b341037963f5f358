"""``--strategy auto`` against the best fixed strategy on the paper grid, per target.

    python scripts/auto_grid.py                                   # Zipf(1.0), seed 0, all targets
    python scripts/auto_grid.py --zipf 0.6,1.6 --seeds 1,2 --targets fsedp-2x2
    python scripts/auto_grid.py --search-on other    # the search sees another draw
    python scripts/auto_grid.py --search-on other --resamples 2   # ... scored on 2 resamples too
    python scripts/auto_grid.py --traces lm16.json,lm64.json --models models/tiny_moe_lm.onnx
    python scripts/auto_grid.py --lm 16,64,256,1024 --targets fsedp-2x2   # the trained LM's routing
    python scripts/auto_grid.py --held-out --targets fsedp-2x2   # every held-out table at once
    python scripts/auto_grid.py --only fsedp-2x2/deepseek-moe-16b/256,fsedp-4x4/phi3.5-moe/1024

For each (target, model, tokens) point the six fixed strategies (ep, hydra, eplb, tp, fsedp,
fsedp-paired) run on the evaluation trace ``synth:zipf=Z,seed=S`` exactly as ``moec bench`` runs
them (one MoE layer, Hydra and EPLB calibrated on a 4096-token sample of the same distribution).
``auto`` searches (:func:`moec.auto.search`, default budget, the same calibration file) on the
evaluation trace itself (``--search-on batch``, the default: what ``moec compile --strategy auto
--routing`` does for a known batch) or on a *different draw*, ``synth:zipf=Z,seed=S+1000`` with
the same token count (``--search-on other``: what the choice is worth on a batch the search did
not see); its winner is then run on the evaluation trace like the fixed ones. Prints one Markdown table per (target, zipf, seed)
and a summary line: how often auto is within 0.5% of the best fixed strategy, and how often it
is at least 3% faster. ``floor ms`` is the lowest of the search's lower bounds over all its
candidates (:func:`moec.auto.predicted_latency`: busiest DRAM channel or busiest die's expert
compute), so ``best / floor`` is the most any candidate could gain on the best fixed strategy:
below 1.031 a 3% win is impossible within the candidate space (search on the batch only).
``any floor ms`` is :func:`moec.auto.any_schedule_floor`: a lower bound for *every* schedule of
the layer on the target (each active expert read once at the channels' sustained bandwidth,
each expert's tokens computed at the best GEMM efficiency its shape allows, the first load's and
last byte's latency), so where ``best / any floor`` is below 1.031 no schedule at all, within
this hardware model and a one-iteration workload, is 3% faster than the best fixed strategy.

``--lm T1,T2,...`` dumps the trained LM's routing itself (:data:`LM_MODEL` run by ONNX Runtime on
the first T bytes of its held-out text, :data:`LM_TEXT`, as ``moec trace dump --inputs`` does,
tokens on the target's dies) and runs those traces like ``--traces``. ``--held-out`` is the
traces the search was not developed on, in one command: :data:`HELD_OUT_ZIPF` at seed
:data:`HELD_OUT_SEED` and the LM's routing at :data:`HELD_OUT_LM` tokens, one table each and a
last summary line over all of them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Any

from moec.auto import any_schedule_floor, candidates, search
from moec.bench import CALIBRATION_TOKENS, load_bench_model, run_bench
from moec.compiler.bench.spec import PAPER_MODELS, PAPER_TARGETS, PAPER_TOKENS, truncate
from moec.ir.errors import MoecError
from moec.ir.routing import RoutingTrace, load_trace, save_trace
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import TargetRef
from moec.ir.target import load_target

FIXED = ("ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired")
#: ``--lm``: the trained language model and the held-out text its routing is dumped on.
LM_MODEL = "models/tiny_moe_lm.onnx"
LM_TEXT = "models/tiny_moe_lm.heldout.txt"
#: ``--held-out``: Zipf exponents and seed of the synthetic traces, the LM's token counts.
HELD_OUT_ZIPF = (0.6, 1.0, 1.6)
HELD_OUT_SEED = 1
HELD_OUT_LM = (16, 64, 256, 1024)
#: ``--search-on other``: the search draws its trace with this offset added to the seed.
SEARCH_SEED_OFFSET = 1000


def _spec(zipf: float, seed: int) -> SynthSpec:
    spec = parse_routing_spec(f"synth:zipf={zipf:g},seed={seed}")
    assert isinstance(spec, SynthSpec)
    return spec


def point(
    model: str, target: str, tokens: int, zipf: float, seed: int, tmp: str, budget: int | None,
    offset: int = SEARCH_SEED_OFFSET, resamples: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """One row: the fixed strategies' latencies, auto's choice and its latency on the batch."""
    routing = f"synth:zipf={zipf:g},seed={seed}"
    fixed: dict[str, float | None] = {}
    for s in FIXED:
        try:
            fixed[s] = float(
                run_bench(model, target, [tokens], [s], routing=routing)[0]["latency_s"]
            )
        except MoecError:
            fixed[s] = None
    bm = load_bench_model(model)
    tgt = load_target(target, {})
    shapes = bm.layer_shapes()[:1]
    calib = os.path.join(tmp, f"calib-{bm.name}-{tgt.num_dies}-{zipf:g}-{seed}.npz")
    if not os.path.exists(calib):
        trace = _spec(zipf, seed).make(shapes, CALIBRATION_TOKENS, tgt.num_dies, model=bm.name)
        save_trace(trace, calib)
    seen = _spec(zipf, seed + offset).make(shapes, tokens, tgt.num_dies, model=bm.name)
    kw: dict[str, Any] = {"resamples": resamples}
    if budget is not None:
        kw["budget"] = budget
    found = search(
        truncate(bm.module, 1), TargetRef(target), seen, specs=candidates({"calibration": calib}),
        variants=True, **kw,
    )  # fmt: skip
    choice = found.winner.strategy
    try:  # the choice may overfill a die on the batch it did not see
        auto: float | None = float(
            run_bench(model, target, [tokens], [choice], routing=routing)[0]["latency_s"]
        )
    except MoecError:
        auto = None
    bounds = [t.predicted_s for t in found.trials if t.predicted_s is not None]
    batch = _spec(zipf, seed).make(shapes, tokens, tgt.num_dies, model=bm.name)
    return {
        "model": bm.name, "tokens": tokens, "fixed": fixed, "choice": choice, "auto": auto,
        "measured": sum(t.measured_s is not None for t in found.trials),
        "floor": min(bounds) if offset == 0 and bounds else None,
        "any_floor": any_schedule_floor(found.program, tgt, batch),
    }  # fmt: skip


def searched_trace(path: str, target: str) -> RoutingTrace:
    """The recorded trace's first MoE layer as ``moec bench`` runs it on ``target``: rehomed
    when it was recorded for another die count, so the search and the fixed strategies see the
    same batch (a 4-die trace on fsedp-4x4 is spread over the 16 dies, not kept on dies 0-3)."""
    trace = load_trace(path).head(1)
    dies = load_target(target, {}).num_dies
    return trace if trace.num_dies == dies else trace.rehome(dies)


def trace_point(model: str, target: str, path: str, budget: int | None) -> dict[str, Any]:
    """One row on a recorded trace (``--traces``): its own token count, the search on the trace
    itself; Hydra and EPLB calibrate on it too, as ``moec bench`` does for a recorded trace."""

    def bench(s: str) -> float | None:
        try:
            return float(run_bench(model, target, [None], [s], routing=path)[0]["latency_s"])
        except MoecError:
            return None

    fixed = {s: bench(s) for s in FIXED}
    trace = searched_trace(path, target)
    kw: dict[str, Any] = {} if budget is None else {"budget": budget}
    found = search(truncate(load_bench_model(model).module, 1), TargetRef(target), trace, **kw)
    bounds = [t.predicted_s for t in found.trials if t.predicted_s is not None]
    return {
        "model": f"{load_bench_model(model).name} ({os.path.basename(path)})",
        "tokens": trace.tokens, "fixed": fixed, "choice": found.winner.strategy,
        "auto": bench(found.winner.strategy), "floor": min(bounds) if bounds else None,
        "any_floor": any_schedule_floor(found.program, load_target(target, {}), trace),
    }  # fmt: skip


def ratio(row: dict[str, Any]) -> float:
    """Auto's latency over the best fixed strategy's on one row (inf: auto's choice did not fit)."""
    best = min(v for v in row["fixed"].values() if v is not None)
    return float(row["auto"] / best) if row["auto"] is not None else float("inf")


def summary(label: str, rows: list[dict[str, Any]]) -> str:
    """One line over ``rows`` (of any tables): within 0.5%, at least 3% faster, the worst."""
    r = [ratio(x) for x in rows]
    worst = max(r, default=0.0)
    return (
        f"Summary {label}: auto within 0.5% of the best fixed strategy at "
        f"{sum(x <= 1.005 for x in r)} of {len(r)} points, at least 3% faster at "
        f"{sum(x <= 0.97 for x in r)}; worst "
        + (f"{worst:.3f}x." if math.isfinite(worst) else "a choice that does not fit the batch.")
    )


def lm_traces(tokens: list[int], target: str, tmp: str) -> list[str]:
    """The trained LM's routing (:data:`LM_MODEL` on the first T bytes of :data:`LM_TEXT`, T in
    ``tokens``: sequences of 16 bytes below 256 tokens, else of 128, as its context allows) with
    the tokens on ``target``'s dies, dumped by ONNX Runtime into ``tmp``; the files' paths."""
    import numpy as np

    from moec.check import dump_trace

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, LM_TEXT), "rb") as f:
        text = f.read()
    paths = []
    for t in tokens:
        seq = 16 if t < 256 else 128
        if t % seq or t > len(text):
            raise SystemExit(f"--lm: {t} tokens: expected a multiple of {seq} up to {len(text)}")
        ids = np.frombuffer(text[:t], dtype=np.uint8).astype(np.int64).reshape(t // seq, seq)
        inputs = os.path.join(tmp, f"text{t}.npz")
        np.savez(inputs, input_ids=ids)
        trace = dump_trace(os.path.join(root, LM_MODEL), inputs=inputs, target=target)
        paths.append(os.path.join(tmp, f"lm{t}.json"))
        save_trace(trace, paths[-1])
    return paths


def _ms(v: float | None) -> str:
    """Milliseconds, with more digits below 1 ms (the tiny LM's layers take microseconds)."""
    if v is None:
        return "n/f"
    return f"{v * 1e3:.2f}" if v >= 1e-3 else f"{v * 1e3:.5f}"


def _short(choice: str) -> str:
    """The winner without the calibration path (the same file for every hydra/eplb row)."""
    if "{" not in choice:
        return choice
    name, rest = choice.split("{", 1)
    opts = [o for o in rest.rstrip("}").split(",") if not o.startswith("calibration=")]
    return name + ("{" + ",".join(opts) + "}" if opts else "")


def table(
    target: str, label: str, rows: list[dict[str, Any]], offset: int, resamples: int = 0,
    seen: str = "",
) -> str:  # fmt: skip
    head = " | ".join(f"{s} ms" for s in FIXED)
    out = [
        f"#### {target}, {label} "
        + ("(search on this batch" if offset == 0 else f"(search on {seen}")
        + (f", worst of it and {resamples} resamples)" if resamples else ")"),
        "",
        f"| model | tokens | {head} | best fixed | auto ms | auto's choice | auto / best "
        "| floor ms | best / floor | any floor ms | best / any floor |",
        "|---|---|" + "---|" * len(FIXED) + "---|---|---|---|---|---|---|---|",
    ]
    room = possible = 0
    for r in rows:
        ok = {s: v for s, v in r["fixed"].items() if v is not None}
        best = min(ok, key=lambda s: (ok[s], FIXED.index(s)))
        cells = " | ".join(_ms(v) for v in r["fixed"].values())
        lat, floor = _ms(r["auto"]), "-" if r["floor"] is None else _ms(r["floor"])
        head_room = "-" if r["floor"] is None else f"{ok[best] / r['floor']:.3f}"
        room += r["floor"] is not None and ok[best] >= r["floor"] / 0.97
        possible += ok[best] >= r["any_floor"] / 0.97
        out.append(
            f"| {r['model']} | {r['tokens']} | {cells} | {best} | {lat} | "
            f"`{_short(r['choice'])}` | {ratio(r):.3f} | {floor} | {head_room} | "
            f"{_ms(r['any_floor'])} | {ok[best] / r['any_floor']:.3f} |"
        )
    out += [
        "",
        summary(f"{target} {label}", rows)
        + (
            f" The candidates' lowest bound leaves room for a 3% gain at {room} of {len(rows)}."
            if offset == 0
            else ""
        )
        + f" The any-schedule floor leaves room for a 3% gain at {possible} of {len(rows)}.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--targets", default=",".join(PAPER_TARGETS))
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--tokens", default=",".join(str(t) for t in PAPER_TOKENS))
    ap.add_argument("--zipf", default="1.0")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--budget", type=int, default=None, help="--search-budget (default: auto's)")
    ap.add_argument(
        "--search-on", choices=("batch", "other"), default="batch",
        help="batch: the search sees the evaluated trace (moec compile --routing); other: a "
        f"different draw (seed + {SEARCH_SEED_OFFSET})",
    )  # fmt: skip
    ap.add_argument(
        "--resamples", type=int, default=0,
        help="--search-resamples: score each candidate by its worst of the searched trace and R "
        "resamples of it (default 0)",
    )  # fmt: skip
    ap.add_argument(
        "--traces", default="",
        help="recorded routing traces (comma-separated files) instead of synthetic ones: each "
        "point runs at the trace's own token count for every --models entry",
    )  # fmt: skip
    ap.add_argument(
        "--only", default="",
        help="only these points, TARGET/MODEL/TOKENS comma-separated (the others' filters still "
        "apply to --zipf/--seeds); default: every --targets x --models x --tokens point",
    )  # fmt: skip
    ap.add_argument(
        "--lm", default="",
        help="token counts (comma-separated): the trained LM's routing on its held-out text, "
        f"dumped for each target ({LM_MODEL}), instead of synthetic traces",
    )  # fmt: skip
    ap.add_argument(
        "--held-out", action="store_true",
        help="the held-out traces in one run: Zipf "
        f"{','.join(f'{z:g}' for z in HELD_OUT_ZIPF)} at seed {HELD_OUT_SEED} and --lm "
        f"{','.join(str(t) for t in HELD_OUT_LM)}, with a summary over all of them",
    )  # fmt: skip
    args = ap.parse_args(argv)
    only = {tuple(p.split("/")) for p in args.only.split(",") if p}
    if any(len(p) != 3 for p in only):
        ap.error(f"--only: expected TARGET/MODEL/TOKENS entries, found {args.only!r}")
    if only:
        args.targets = ",".join(dict.fromkeys(p[0] for p in sorted(only)))
    if args.held_out:
        args.zipf = ",".join(f"{z:g}" for z in HELD_OUT_ZIPF)
        args.seeds, args.lm = str(HELD_OUT_SEED), ",".join(str(t) for t in HELD_OUT_LM)
    offset = 0 if args.search_on == "batch" else SEARCH_SEED_OFFSET
    everything: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="moec-auto-grid-") as tmp:
        for target in args.targets.split(","):
            if args.traces or args.lm:
                paths = args.traces.split(",") if args.traces else []
                models = args.models.split(",") if args.traces else [LM_MODEL]
                if args.lm:
                    paths += lm_traces([int(t) for t in args.lm.split(",")], target, tmp)
                rows = [trace_point(m, target, p, args.budget) for p in paths for m in models]
                print(table(target, "recorded traces", rows, 0), flush=True)
                everything += rows
            if (args.traces or args.lm) and not args.held_out:
                continue
            for zipf in (float(z) for z in args.zipf.split(",")):
                for seed in (int(s) for s in args.seeds.split(",")):
                    rows = [
                        point(m, target, int(t), zipf, seed, tmp, args.budget, offset,
                              args.resamples)
                        for m in (args.models.split(",") if not only else
                                  dict.fromkeys(p[1] for p in sorted(only) if p[0] == target))
                        for t in (args.tokens.split(",") if not only else
                                  [p[2] for p in sorted(only) if p[:2] == (target, m)])
                    ]  # fmt: skip
                    label = f"synth:zipf={zipf:g},seed={seed}"
                    seen = f"seed {seed + offset}"
                    print(table(target, label, rows, offset, args.resamples, seen), flush=True)
                    everything += rows
    if args.held_out:
        print(summary(f"held-out traces, {args.targets}", everything), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
