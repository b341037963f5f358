"""When does an online choice beat every single static choice? (issue 18, item 3)

    python scripts/online_choice.py                                  # phi3.5-moe, 2x2, 16/64/256
    python scripts/online_choice.py --models qwen3-30b-a3b --tokens 64 --alternatives 3
    moec trace dump models/tiny_moe_lm.onnx --decode 32 --batch 16 --target fsedp-4x4 -o lm.json
    python scripts/online_choice.py --models models/tiny_moe_lm.onnx --trace lm.json --target fsedp-4x4

Per model and token count (first MoE layer, as ``moec bench`` times it): the online program is
built as ``moec compile --strategy auto --alternatives N`` builds it (:func:`moec.online.
online_search`: the search on ``synth:zipf=1.0,seed=0``, the pool re-lowered with one static
part, the rule fitted on the calibration draws ``moec.online.DEFAULT_DRAWS``, seeds 11-15). It
then runs on held-out batches (Zipf exponents ``--zipf``, seeds ``--seeds``, none of them a
calibration seed) beside every static choice, each compiled alone with its own options: the
six fixed strategies and auto's winner (what ``--strategy auto`` writes for the search's
batch). Prints one Markdown table per point (a row per batch: its skew, each static
choice's latency, the online program's and the alternative it ran) and the totals over the
batches; the best single static choice is the one with the lowest total, chosen in hindsight
on the held-out batches themselves (the strongest static comparator there is).

``--trace FILE`` (a ``moec trace dump --decode`` sequence of a model with weights, e.g. the
trained LM): every MoE layer of the model, the search on the first iteration, the rule fitted
on the first half of the iterations (the calibration draws), the table over the second half.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moec.auto import search
from moec.backends.interp import simulate
from moec.bench import DEFAULT_ROUTING, moe_metrics
from moec.compiler.bench.spec import load_bench_model, truncate
from moec.compiler.lower import lower, parse_strategy
from moec.ir.errors import MoecError
from moec.ir.routing import RoutingTrace
from moec.ir.routing_seq import load_sequence
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import Program, TargetRef
from moec.ir.stream.online import routing_stats
from moec.ir.target import load_target
from moec.online import DEFAULT_DRAWS, explain_online, online_search

FIXED = ("ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired")
#: a per-batch difference smaller than this is reported as equal
TOL = 0.005


def _latency(p: Program, target: Any, trace: RoutingTrace) -> tuple[float | None, Any]:
    try:
        res = simulate(p, target=target, routings=trace, verify=False)
    except MoecError:  # does not fit SRAM on this batch
        return None, None
    return float(moe_metrics(res.timeline)["latency_s"]), res.report.extra.get("online_choice")


def _batches(
    shapes: list[tuple[int, int]], tokens: int, dies: int, model: str, zipfs: list[float],
    seeds: list[int],
) -> list[tuple[str, RoutingTrace]]:  # fmt: skip
    out = []
    for z in zipfs:
        for seed in seeds:
            label = f"synth:zipf={z:g},seed={seed}"
            batch = parse_routing_spec(label)
            assert isinstance(batch, SynthSpec)
            out.append((label, batch.make(shapes, tokens, dies, model=model)))
    return out


def point(
    model: str, target_name: str, tokens: int, alternatives: int, zipfs: list[float],
    seeds: list[int], trace_file: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One (model, target, tokens): the online program and every static choice on each batch."""
    bm = load_bench_model(model)
    ref = TargetRef(target_name)
    target = load_target(target_name, {})
    draws: list[Any] = list(DEFAULT_DRAWS)
    if trace_file is not None:
        seq = load_sequence(trace_file)
        module = bm.module
        its = [(f"iteration {i}", t) for i, t in enumerate(seq)]
        half = len(its) // 2
        draws, batches = its[:half], its[half:]
        routing, tokens, where = seq[0], seq[0].tokens, f"{trace_file} iteration 0"
    else:
        module = truncate(bm.module, 1)
        shapes = [(layer.num_experts, layer.top_k) for layer in bm.layers[:1]]
        spec = parse_routing_spec(DEFAULT_ROUTING)
        assert isinstance(spec, SynthSpec)
        routing = spec.make(shapes, tokens, target.num_dies, model=bm.name)
        batches = _batches(shapes, tokens, target.num_dies, bm.name, zipfs, seeds)
        where = DEFAULT_ROUTING
    online = online_search(module, ref, routing, alternatives=alternatives, tokens=tokens,
                           draws=draws, routing_name=where, name=bm.name)  # fmt: skip
    auto = search(module, ref, routing, routing_name=where, tokens=tokens, name=bm.name)
    statics: dict[str, Program] = {}
    for s in [*FIXED, auto.winner.strategy]:
        if s.startswith("per-layer["):  # auto's per-layer mix: its merged program as written
            statics[s] = auto.program
            continue
        name, opts = parse_strategy(s)
        try:
            statics[s] = lower(module, ref, name, opts, routing, tokens=tokens, name=bm.name)
        except MoecError:
            continue
    rows = []
    for label, trace in batches:
        lr = trace.layers[0]
        stats = routing_stats(lr.ids, lr.num_experts, target.num_dies)
        fixed = {s: _latency(p, target, trace)[0] for s, p in statics.items()}
        lat, chosen = _latency(online.program, target, trace)
        alt = ",".join(str(c["alternative"]) for c in chosen.values()) if chosen else None
        rows.append({"batch": label, "stats": stats, "fixed": fixed, "online": lat, "alt": alt})
    return {
        "model": bm.name, "target": target_name, "tokens": tokens, "rows": rows,
        "statics": list(statics), "auto": auto.winner.strategy, "online": online,
    }  # fmt: skip


def _ms(v: float | None) -> str:
    return f"{v * 1e3:.5g}" if v is not None else "n/f"


def table(pt: dict[str, Any]) -> str:
    """One point as Markdown: a row per batch, the totals, and the verdict."""
    statics, rows, online = pt["statics"], pt["rows"], pt["online"]
    alts = [online.pool[a][0] for a in online.alternatives]
    head = " | ".join(f"{s}{' (auto)' if s == pt['auto'] else ''} ms" for s in statics)
    out = [
        f"#### {pt['model']}, {pt['target']}, {pt['tokens']} tokens",
        "",
        "alternatives: " + ", ".join(f"{i} = `{a}`" for i, a in enumerate(alts))
        + "; rule: `" + "; ".join(_choice(c) for c in online.rule) + "`",
        "",
        f"| batch | skew (layer 0) | active | {head} | online ms | ran |",
        "|---|---|---|" + "---|" * len(statics) + "---|---|",
    ]  # fmt: skip
    totals = {s: 0.0 for s in statics}
    online_total = 0.0
    wins = ties = 0
    for r in rows:
        cells = " | ".join(_ms(r["fixed"][s]) for s in statics)
        st = r["stats"]
        out.append(
            f"| {r['batch']} | {st.skew:g} | {st.active} | {cells} | {_ms(r['online'])} | "
            f"{r['alt'] if r['alt'] is not None else '-'} |"
        )
        for s in statics:
            totals[s] += r["fixed"][s] if r["fixed"][s] is not None else float("inf")
        online_total += r["online"] if r["online"] is not None else float("inf")
    best = min(statics, key=lambda s: (totals[s], statics.index(s)))
    oracle = 0.0  # each batch's fastest static choice: the most any per-batch choice could get
    for r in rows:
        b, o = r["fixed"][best], r["online"]
        known = [v for v in r["fixed"].values() if v is not None]
        oracle += min(known) if known else float("inf")
        if o is not None and b is not None:
            wins += o < b * (1 - TOL)
            ties += abs(o - b) <= b * TOL
    tot = " | ".join(_ms(totals[s]) if totals[s] != float("inf") else "n/f" for s in statics)
    out.append(f"| **total** | | | {tot} | {_ms(online_total)} | |")
    out.append("")
    out.append(
        f"Best single static choice over these batches: `{best}` ({_ms(totals[best])} ms); "
        f"online {_ms(online_total)} ms, {totals[best] / online_total:.3f}x; per batch, online "
        f"more than {TOL:.1%} faster than it on {wins} of {len(rows)} batches, within "
        f"{TOL:.1%} on {ties}; each batch's fastest static choice (an oracle) "
        f"{_ms(oracle)} ms; auto's static choice `{pt['auto']}` {_ms(totals[pt['auto']])} ms."
    )
    return "\n".join(out)


def _choice(c: Any) -> str:
    from moec.ir.stream.online import choice_text

    return choice_text(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="phi3.5-moe")
    ap.add_argument("--target", default="fsedp-2x2")
    ap.add_argument("--tokens", default="16,64,256")
    ap.add_argument("--alternatives", type=int, default=2)
    ap.add_argument("--zipf", default="0.2,0.6,1.0,1.4,1.8,2.2")
    ap.add_argument("--seeds", default="100,101")
    ap.add_argument("--trace", metavar="FILE", help="a decode routing sequence (see above)")
    ap.add_argument(
        "--explain", action="store_true",
        help="also print the online search (pool, per-draw latencies, rule)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    for model in args.models.split(","):
        for t in (int(x) for x in args.tokens.split(",")) if not args.trace else [0]:
            pt = point(
                model, args.target, t, args.alternatives,
                [float(z) for z in args.zipf.split(",")], [int(s) for s in args.seeds.split(",")],
                args.trace,
            )  # fmt: skip
            if args.explain:
                print(explain_online(pt["online"]), end="\n\n")
            print(table(pt), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
