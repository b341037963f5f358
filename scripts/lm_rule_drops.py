"""What the runtime skip/prune rules drop on the trained LMs: pairs, gate mass, which choices.

For each language model, the exact program (compiled for ``--batch`` windows of 128 bytes) runs
in the interpreter on the first ``--bytes`` of the held-out text, cut into whole 128-byte
windows; each MoE layer's routing is then rewritten by each rule pipeline's runtime policy, as
the interpreter does before expanding a layer (:func:`moec.backends.interp.rules.apply_rules`,
on the same target). Per LM and pipeline it prints the (token, expert) pairs dropped, the share
of all routed gate weight the rule moved onto the tokens' kept experts, and the dropped pairs by
the rank of the choice (1 = a token's first choice, which no rule drops).

Every layer sees the exact run's routing: for the first MoE layer that is exactly what the
approximate run sees; later layers' inputs differ slightly under a rule, so their figures
describe the rule on exact inputs, not a compounded run (the perplexity tables of
``scripts/caee_results.py accuracy`` measure the compounded run).

    python scripts/lm_rule_drops.py [--bytes 16384] [--batch 8] [--target npu8-hbm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from moec.backends.interp import program_target, simulate
from moec.backends.interp.rules import apply_rules
from moec.compile import compile_model, write_compiled
from moec.ir.stream import Program, load_program

LMS = ("models/tiny_moe_lm.onnx", "models/tiny_moe_lm_fg.onnx")
HELDOUT = "models/tiny_moe_lm.heldout.txt"
RULES = (
    "caee-prune{threshold=0.6}",
    "caee-prune{threshold=0.7}",
    "caee-prune{threshold=0.8}",
    "caee-prune{threshold=0.9}",
    "skip-second",
)
CONTEXT = 128


def _compiled(model: str, passes: str, batch: int, target: str, path: str) -> Program:
    dims = {"batch": batch, "seq": CONTEXT}
    write_compiled(compile_model(model, path, passes=passes, dims=dims, target=target), path)
    return load_program(path)


def rule_drops(
    model: str, ids: np.ndarray, batch: int, target_name: str
) -> list[tuple[str, int, int, float, list[int]]]:
    """Per pipeline: (pipeline, pairs dropped, pairs, share of gate weight moved, drops by rank)."""
    with tempfile.TemporaryDirectory(prefix="moec-drops-") as tmp:
        exact = _compiled(model, "", batch, target_name, os.path.join(tmp, "exact.msp"))
        rules = {
            p: _compiled(model, p, batch, target_name, os.path.join(tmp, f"rule{i}.msp"))
            for i, p in enumerate(RULES)
        }
        target = program_target(exact, tmp)
        windows = ids[: ids.size // (batch * CONTEXT) * batch * CONTEXT].reshape(-1, batch, CONTEXT)
        routings = []
        for w in windows:
            result = simulate(exact, inputs={"input_ids": w}, base_dir=tmp)
            routings.extend(result.routings)
        rows = []
        for passes, program in rules.items():
            dropped, pairs, moved, weight = 0, 0, 0.0, 0.0
            by_rank = np.zeros(routings[0].top_k, np.int64)
            for r in routings:
                new = apply_rules(program, target, r.name, r)
                drop = new.ids < 0
                dropped += int(drop.sum())
                pairs += int(r.ids.size)
                moved += float(r.gates[drop].astype(np.float64).sum())
                weight += float(r.gates.astype(np.float64).sum())
                by_rank += drop.sum(axis=0)
            rows.append((passes, dropped, pairs, moved / weight, by_rank.tolist()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=int, default=16384)
    p.add_argument("--batch", type=int, default=8, help="windows of 128 bytes per iteration")
    p.add_argument("--target", default="npu8-hbm")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    data = open(HELDOUT, "rb").read()[: args.bytes]
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    print(
        "| model | pipeline | pairs dropped | gate weight moved | dropped by rank of choice (1..k) |"
        "\n|---|---|---:|---:|---|"
    )
    for model in LMS:
        name = model.rsplit("/", 1)[-1].removesuffix(".onnx")
        for passes, dropped, pairs, moved, by_rank in rule_drops(
            model, ids, args.batch, args.target
        ):
            print(
                f"| {name} | `{passes}` | {dropped}/{pairs} ({100 * dropped / pairs:.2f}%) | "
                f"{100 * moved:.2f}% | {' / '.join(str(n) for n in by_rank)} |"
            )
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
