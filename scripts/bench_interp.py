"""Interpreter speed on Qwen3-30B-A3B: shape-only, synthetic Zipf trace, EP on fsedp-2x2.

    python scripts/bench_interp.py [--tokens 256] [--layers 48] [--program q.msp] [--no-verify]

Builds the program with ``moec compile qwen3-30b-a3b --strategy ep --tokens N`` (into a temporary
folder) unless ``--program`` gives one, then runs the interpreter once with
``synth:zipf=1.0,seed=0`` and prints the phases' wall times, the simulated instructions (of the
expanded program) per second, and the simulated latency. Goal (issue 4): the whole run, all 48
layers at 256 tokens, under 10 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from moec.backends.interp import program_target, simulate
from moec.backends.interp.simulate import first_layers
from moec.ir.routing_synth import SynthSpec
from moec.ir.stream import load_program


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--layers", type=int, default=48, help="simulate the first N MoE layers")
    ap.add_argument("--program", help="an existing .msp instead of compiling")
    ap.add_argument("--target", default="fsedp-2x2")
    ap.add_argument("--no-verify", action="store_true", help="skip verifying the expansion")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.program
        t0 = time.perf_counter()
        if path is None:
            path = os.path.join(tmp, "qwen3.msp")
            cmd = [sys.executable, "-m", "moec", "compile", "qwen3-30b-a3b",
                   "-o", path, "--strategy", "ep", "--tokens", str(args.tokens),
                   "--target", args.target]  # fmt: skip
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        t_compile = time.perf_counter() - t0

        t0 = time.perf_counter()
        start = time.perf_counter()
        program = load_program(path)
        t_parse = time.perf_counter() - t0
        if args.layers < len(program.layers):
            program = first_layers(program, args.layers)
        layers = program.layers
        target = program_target(program)
        trace = SynthSpec(zipf=1.0, seed=0).make(
            [(m.experts, m.top_k) for m in layers], args.tokens, target.num_dies,
            model="qwen3-30b-a3b",
        )  # fmt: skip
        t0 = time.perf_counter()
        result = simulate(program, target=target, routings=trace, verify=not args.no_verify)
        t_sim = time.perf_counter() - t0
        wall = time.perf_counter() - start

    n = result.expanded.num_instructions()
    r = result.report
    print(f"program: qwen3-30b-a3b, {len(layers)} MoE layers, {args.tokens} tokens, "
          f"EP on {target.name}")  # fmt: skip
    print(f"compile (moec compile, not timed in the run): {t_compile:.2f} s")
    print(f"parse: {t_parse:.2f} s   simulate (expand + verify + time): {t_sim:.2f} s")
    print(f"expanded instructions: {n}   events: {r.events}")
    print(f"simulated instructions per second: {n / t_sim:,.0f}")
    print(f"wall time of the run (parse + simulate): {wall:.2f} s")
    print(f"simulated latency: {r.latency_s * 1e3:.3f} ms   DRAM {r.total_dram_bytes / 1e9:.3f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
