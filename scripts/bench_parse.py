"""Time parsing (and verifying, and printing) a generated 100k-instruction stream program.

Usage: python scripts/bench_parse.py [--instructions N] [--tokens T]

The program streams micro-slices around a 2x2 package (load on a corner die, compute for a token
set, pass to the next die of the ring 0-1-3-2, free at the end), with activation blocks and
synchronization mixed in: the instruction mix of an expanded FSE-DP layer. Goal: parse under 3 s.
"""

from __future__ import annotations

import argparse
import time

from moec.ir.stream import (
    Accum,
    Act,
    Block,
    DieStream,
    Free,
    Gemm,
    Instr,
    Load,
    MoEDecl,
    Program,
    Recv,
    Send,
    Signal,
    SliceLayout,
    SliceRef,
    SlotPool,
    TargetRef,
    TokenSet,
    Wait,
    parse_program,
    print_program,
    verify_program,
)

RING = [0, 1, 3, 2]


def generate(n_instr: int, tokens: int = 1024, scattered: bool = False) -> Program:
    """A valid program of about ``n_instr`` instructions on the fsedp-2x2 preset.

    ``scattered``: every compute instruction lists every other token of its die (the longest
    token sets that cannot be written as ranges), instead of about 10% of them.
    """
    experts, slices = 64, 8
    layer = MoEDecl("L0", experts, 6, 2048, 1408, tokens, "x", "y")
    p = Program(
        name="bench",
        target=TargetRef("fsedp-2x2"),
        layers=[layer],
        layouts=[SliceLayout.even("L0", layer.ffn, slices)],
        slots=[SlotPool(d, 4, 4 << 20) for d in range(4)],
    )
    streams: dict[int, list[Instr]] = {d: [] for d in range(4)}
    # tokens stay on their die (die d holds a quarter of them); each expert gets a scattered
    # subset of them from routing (top-6 of 64 experts: about 10% of a die's tokens)
    per_die = tokens // 4

    def routed(e: int, d: int) -> TokenSet:
        if scattered:
            return TokenSet.of(range(d * per_die, (d + 1) * per_die, 2))
        picked = [t for t in range(per_die) if (t * 2654435761 + e * 97) % 1000 < 94]
        return TokenSet.of(d * per_die + t for t in picked) or TokenSet.span(
            d * per_die, d * per_die + 1
        )

    step = 0
    total = 0
    while total < n_instr:
        e, j = step % experts, (step // experts) % slices
        ref = SliceRef("L0", e, j)
        start = RING[step % 4]
        pos = RING.index(start)
        path = [RING[(pos + k) % 4] for k in range(4)]
        nbytes = 3 * layer.hidden * (layer.ffn // slices) * 2
        for k, d in enumerate(path):
            s = streams[d]
            if k == 0:
                s.append(Load(0, d // 3, ref, nbytes))
            else:
                s.append(Recv(path[k - 1], nbytes, slot=0, content=ref))
            s.append(Gemm(0, routed(e, d)))
            s.append(Act(0, routed(e, d)))
            s.append(Accum(0, routed(e, d)))
            if k + 1 < len(path):
                s.append(Send(path[k + 1], nbytes, slot=0))
            s.append(Free(0))
        src, dst = path[0], path[1]
        blk = Block("L0", "y", TokenSet.span(0, 16))
        streams[src].append(Send(dst, 16 * layer.hidden * 2, block=blk))
        streams[dst].append(Recv(src, 16 * layer.hidden * 2, block=blk))
        streams[src].append(Signal("step"))
        streams[dst].append(Wait("step", step + 1))
        step += 1
        total = sum(len(s) for s in streams.values())
    p.streams = [DieStream(d, streams[d]) for d in range(4)]
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instructions", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument(
        "--scattered", action="store_true", help="token sets of every other token (worst case)"
    )
    args = ap.parse_args()
    prog = generate(args.instructions, args.tokens, args.scattered)
    parse_program('moec 1\nprogram "warm-up"\n')  # build the parser once, outside the timing
    timings = []
    for step in ("print", "parse", "verify"):
        w0, c0 = time.perf_counter(), time.process_time()
        if step == "print":
            text = print_program(prog)
        elif step == "parse":
            parsed = parse_program(text, "bench.msp")
        else:
            verify_program(parsed)
        timings.append(
            f"{step} {time.perf_counter() - w0:.2f} s (cpu {time.process_time() - c0:.2f} s)"
        )
    if print_program(parsed) != text:
        raise SystemExit("round trip changed the text")
    print(
        f"{parsed.num_instructions()} instructions, {len(text) / 1e6:.2f} MB of text: "
        + ", ".join(timings)
    )


if __name__ == "__main__":
    main()
