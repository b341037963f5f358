"""Regenerate the cost-aware tables of docs/results.md (issue 6): CAEE latency and accuracy.

    python scripts/caee_results.py latency [--layers 4] [--tokens 16,64,256,1024] [--zipf 1.2]
    python scripts/caee_results.py accuracy [--ppl-bytes 16385] [--ppl-batches 8,1]
    python scripts/caee_results.py paper [--tokens 64,256]
    python scripts/caee_results.py offload [--layers 4] [--tokens 16,64,256] [--zipf 1.2]

``latency``: DeepSeek-V3 (shape-only preset) on ``npu8-hbm``, EP, a seeded Zipf trace; the exact
top-k program against ``caee-prune{threshold=t}`` for t in 0.6..0.9, measured like ``moec bench``
(sum of the MoE layers' spans, dense islands excluded), plus the share of (token, expert) pairs
and of gate mass the rule dropped. ``accuracy``: ``moec check --approx`` metrics of every
cost-aware pipeline (and of precision plans combined with a runtime rule) on the tiny models with
real weights and both trained LMs (``tiny_moe_lm``: 8 experts, top-2, softmax; ``tiny_moe_lm_fg``:
64 fine-grained experts, top-8, DeepSeek-style routing), plus their perplexity on the first
``--ppl-bytes`` of the held-out text with the interpreter running the approximated program, once
per batch in ``--ppl-batches`` (windows of 128 bytes per iteration: 8 is 1024 tokens, 1 is 128).
``paper``: the four paper models on ``fsedp-2x2`` with EP and FSE-DP, exact against cost-aware precision
(HOBBIT tiers calibrated on a 4096-token sample of the trace's distribution) and CAEE pruning.
``offload``: the ``latency`` setup with only a fraction of each layer's experts in HBM
(``ep{resident=F}``, F in 1, 0.5, 0.25; the hottest by ``annotate-importance`` calibrated on a
4096-token sample of the trace's distribution), the others loaded over each device's PCIe host
link; exact top-k against ``caee-prune{threshold=0.8}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from moec.backends.interp import simulate
from moec.backends.interp.offload import residency
from moec.bench import moe_metrics
from moec.compiler.bench.spec import load_bench_model, read_bench_model, truncate
from moec.compiler.lower import lower
from moec.compiler.passes import parse_pipeline
from moec.ir.routing_synth import synth_layers
from moec.ir.stream import TargetRef
from moec.ir.target import load_target

THRESHOLDS = (0.6, 0.7, 0.8, 0.9)


#: ``--set`` target overrides of every run (e.g. ``ideal=true``)
OVERRIDES: dict[str, str] = {}


def _ovr() -> tuple[tuple[str, str], ...]:
    return tuple(OVERRIDES.items())


def _over(result: Any) -> str:
    """``*`` after a latency whose run exceeded a die's SRAM (run with ``allow_overflow``)."""
    return "*" if "sram_over_bytes" in result.report.extra else ""


def latency_table(layers: int, tokens: list[int], zipf: float, resident: float) -> None:
    tgt = load_target("npu8-hbm", OVERRIDES)
    bm = load_bench_model("deepseek-v3")
    shapes = bm.layer_shapes()[:layers]
    suffix = f",resident={resident}" if resident < 1 else ""
    head = f"annotate-importance{{trace=synth:zipf={zipf:g};seed=0}}," if resident < 1 else ""
    print(
        "| tokens | rule | latency / MoE layer | reduction | pairs dropped | gate mass moved |\n"
        "|---:|---|---:|---:|---:|---:|"
    )
    for T in tokens:
        trace = synth_layers(shapes, T, zipf=zipf, seed=0, num_dies=tgt.num_dies, model=bm.name)
        base = None
        for thr in (None, *THRESHOLDS):
            module = truncate(read_bench_model("deepseek-v3").module, layers)
            passes = "" if thr is None else f"{head}caee-prune{{threshold={thr}{suffix}}}"
            if passes:
                module = parse_pipeline(passes).run(module)
            program = lower(module, TargetRef("npu8-hbm", _ovr()), "ep", {}, trace)
            result = simulate(
                program, target=tgt, routings=trace, verify=False, allow_overflow=True
            )
            lat = moe_metrics(result.timeline)["latency_s"] / layers
            dropped = sum(int((r.ids < 0).sum()) for r in result.routings)
            pairs = sum(int(r.ids.size) for r in result.routings)
            moved = sum(
                float(o.gates[r.ids < 0].sum())
                for r, o in zip(result.routings, trace.layers, strict=True)
            ) / sum(float(o.gates.sum()) for o in trace.layers)
            if base is None:
                base = lat
            rule = "exact top-k" if thr is None else f"caee {thr}"
            print(
                f"| {T} | {rule} | {lat * 1e3:.3f} ms{_over(result)} | {100 * (1 - lat / base):.1f}% | "
                f"{100 * dropped / pairs:.2f}% | {100 * moved:.2f}% |"
            )


RESIDENT = (1.0, 0.5, 0.25)


def offload_table(layers: int, tokens: list[int], zipf: float) -> None:
    """DeepSeek-V3 on npu8-hbm with offloaded experts: exact top-k vs CAEE 0.8 per residency."""
    tgt = load_target("npu8-hbm", OVERRIDES)
    bm = load_bench_model("deepseek-v3")
    shapes = bm.layer_shapes()[:layers]
    calib = f"annotate-importance{{trace=synth:zipf={zipf:g};seed=0,tokens=4096}}"
    print(
        "| tokens | resident | rule | latency / MoE layer | vs exact, same residency "
        "| vs all resident, exact | pairs dropped | experts over PCIe / layer "
        "| PCIe bytes / layer |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    for T in tokens:
        trace = synth_layers(shapes, T, zipf=zipf, seed=0, num_dies=tgt.num_dies, model=bm.name)
        resident_base = None
        for frac in RESIDENT:
            base = None
            for thr in (None, 0.8):
                module = truncate(read_bench_model("deepseek-v3").module, layers)
                passes = calib + ("" if thr is None else f",caee-prune{{threshold={thr}}}")
                module = parse_pipeline(passes).run(module)
                strategy = {} if frac >= 1 else {"resident": f"{frac:g}"}
                program = lower(module, TargetRef("npu8-hbm", _ovr()), "ep", strategy, trace)
                result = simulate(
                    program, target=tgt, routings=trace, verify=False, allow_overflow=True
                )
                lat = moe_metrics(result.timeline)["latency_s"] / layers
                dropped = sum(int((r.ids < 0).sum()) for r in result.routings)
                pairs = sum(int(r.ids.size) for r in result.routings)
                host_experts = 0
                for m, r in zip(program.layers, result.routings, strict=True):
                    res = residency(program.policy(m.name), m)
                    active = set(np.unique(r.ids[r.ids >= 0]).tolist())
                    host_experts += sum(1 for e in active if res is not None and not res[e])
                host_bytes = sum(result.report.host_bytes or [])
                if base is None:
                    base = lat
                if resident_base is None:
                    resident_base = lat
                rule = "exact top-k" if thr is None else f"caee {thr}"
                print(
                    f"| {T} | {frac:g} | {rule} | {lat * 1e3:.3f} ms{_over(result)} | "
                    f"{100 * (1 - lat / base):.1f}% | {lat / resident_base:.2f}x | "
                    f"{100 * dropped / pairs:.2f}% | {host_experts / layers:.1f} | "
                    f"{host_bytes / layers / 1e9:.2f} GB |"
                )


PIPELINES = (
    "annotate-importance,assign-precision{tiers=0.6/0.9}",
    "annotate-importance,assign-precision{budget=0.01}",
    "skip-second",
    *(f"caee-prune{{threshold={t}}}" for t in THRESHOLDS),
)
# Precision plans combined with a runtime rule (a layer holds one skip/prune rule, so CAEE and
# skip-second do not combine with each other).
COMBINATIONS = (
    "annotate-importance,assign-precision{tiers=0.6/0.9},caee-prune{threshold=0.8}",
    "annotate-importance,assign-precision{budget=0.01},caee-prune{threshold=0.8}",
    "annotate-importance,assign-precision{budget=0.01},skip-second",
)
TINY = ("tiny_moe", "tiny_moe_shared", "tiny_deepseek")
LMS = ("models/tiny_moe_lm.onnx", "models/tiny_moe_lm_fg.onnx")
HELDOUT = "models/tiny_moe_lm.heldout.txt"


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1].removesuffix(".onnx")


def accuracy_table(ppl_bytes: int, ppl_batches: list[int], target: str) -> None:
    from moec.approx import approx_check

    print(
        "| model | pipeline | max rel err | mean rel err | cosine | top-1 agree | pairs dropped "
        "| interp vs ORT(exported) |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for model in (*TINY, *LMS):
        dims = {"batch": 2, "seq": 64} if model in LMS else None
        for passes in (*PIPELINES, *COMBINATIONS):
            r = approx_check(model, passes, target=target, dims=dims).to_json()
            exp = r["vs_exported_max_rel_err"]
            exp_text = "n/a" if exp is None else f"{exp:.1e}"
            if r["export_note"].startswith("runtime"):
                exp_text += " (rules not exported)"
            elif r["export_note"]:
                exp_text = "not exportable"
            top1 = r["top1_agreement"]
            print(
                f"| {_short(model)} | `{passes}` | {r['max_rel_err']:.2e} | {r['mean_rel_err']:.2e} | "
                f"{r['cosine']:.5f} | {'-' if top1 is None else f'{top1:.3f}'} | "
                f"{r['dropped_pairs']}/{r['total_pairs']} | {exp_text} |"
            )
    text = open(HELDOUT, "rb").read()[:ppl_bytes]
    ids = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    for batch in ppl_batches:
        perplexity_table(ids, batch, target)


def perplexity_table(ids: np.ndarray, batch: int, target: str) -> None:
    """Both LMs' perplexity on ``ids`` with the interpreter running every pipeline, ``batch``
    windows of 128 bytes per iteration (the batch a runtime rule like CAEE sees)."""
    from moec.approx import program_perplexity
    from moec.backends.ort.perplexity import load_lm, perplexity

    rows: dict[str, list[str]] = {"ort": [], "": []}
    head = "| pipeline |"
    for model in LMS:
        lm = load_lm(model)
        ctx = lm.max_context or 128
        ref = perplexity(lm.logits, ids, ctx, batch=batch).perplexity
        head += f" {_short(model)} perplexity | change | pairs dropped |"
        rows["ort"].append(f" {ref:.4f} | | |")
        for passes in ("", *PIPELINES, *COMBINATIONS):
            ppl, dropped, total = program_perplexity(
                model, passes, ids, ctx, batch=batch, target=target
            )
            rows.setdefault(passes, []).append(
                f" {ppl:.4f} | {100 * (ppl / ref - 1):+.2f}% | {dropped}/{total} |"
            )
    print(
        f"\nPerplexity on the first {ids.size} held-out bytes (context 128, {batch} x 128 tokens "
        f"per iteration):\n"
    )
    print(head)
    print("|---|" + "---:|---:|---:|" * len(LMS))
    for passes, cells in rows.items():
        label = {"ort": "ONNX Runtime, original", "": "interpreter, exact"}.get(
            passes, f"`{passes}`"
        )
        print(f"| {label} |" + "".join(cells))


PAPER_PASSES = (
    "",
    "annotate-importance{trace=synth:zipf=1.0;seed=0,tokens=4096},assign-precision{tiers=0.6/0.9}",
    "caee-prune{threshold=0.8}",
    "annotate-importance{trace=synth:zipf=1.0;seed=0,tokens=4096},assign-precision{tiers=0.6/0.9},"
    "caee-prune{threshold=0.8}",
)
PAPER_LABELS = ("exact", "precision tiers 0.6/0.9", "caee 0.8", "tiers + caee 0.8")


def paper_table(tokens: list[int]) -> None:
    """fsedp-2x2, the four paper models, EP and FSE-DP with and without cost-aware passes."""
    from moec.bench import run_bench

    rows = run_bench(
        ["phi3.5-moe", "yuan2-m32", "deepseek-moe-16b", "qwen3-30b-a3b"], "fsedp-2x2", tokens, ["ep", "fsedp"], routing="synth:zipf=1.0,seed=0",
        passes=PAPER_PASSES,
    )  # fmt: skip
    base = {
        (r["model"], r["tokens"], r["strategy"]): r["latency_s"] for r in rows if not r["passes"]
    }
    print("| model | tokens | strategy | " + " | ".join(PAPER_LABELS) + " |")
    print("|---|---:|---|" + "---:|" * len(PAPER_LABELS))
    for key in base:
        cells = []
        for passes in PAPER_PASSES:
            r = next(
                r
                for r in rows
                if (r["model"], r["tokens"], r["strategy"]) == key and r["passes"] == passes
            )
            lat = r["latency_s"]
            cells.append(
                f"{lat * 1e3:.2f} ms"
                + ("" if not passes else f" ({100 * (lat / base[key] - 1):+.1f}%)")
            )
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("latency")
    a.add_argument("--layers", type=int, default=4)
    a.add_argument("--tokens", default="16,64,256,1024")
    a.add_argument("--zipf", type=float, default=1.2)
    a.add_argument("--resident", type=float, default=1.0)
    b = sub.add_parser("accuracy")
    b.add_argument("--ppl-bytes", type=int, default=16385, help="16385: 128 whole windows")
    b.add_argument("--ppl-batches", default="8,1", help="windows of 128 bytes per iteration")
    b.add_argument("--target", default="npu8-hbm")
    o = sub.add_parser("offload")
    o.add_argument("--layers", type=int, default=4)
    o.add_argument("--tokens", default="16,64,256")
    o.add_argument("--zipf", type=float, default=1.2)
    c = sub.add_parser("paper")
    c.add_argument("--tokens", default="64,256")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="target override of every latency/offload run (e.g. ideal=true)",
    )  # fmt: skip
    args = p.parse_args(argv)
    OVERRIDES.update(kv.split("=", 1) for kv in args.overrides)
    t0 = time.perf_counter()
    if args.what == "latency":
        latency_table(
            args.layers, [int(t) for t in args.tokens.split(",")], args.zipf, args.resident
        )
    elif args.what == "offload":
        offload_table(args.layers, [int(t) for t in args.tokens.split(",")], args.zipf)
    elif args.what == "paper":
        paper_table([int(t) for t in args.tokens.split(",")])
    else:
        accuracy_table(args.ppl_bytes, [int(b) for b in args.ppl_batches.split(",")], args.target)
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
