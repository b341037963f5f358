"""Monotonicity on the paper grid: does more SRAM, DRAM or D2D bandwidth ever make a strategy slower?

    python scripts/monotonicity.py                          # every target, strategy, resource
    python scripts/monotonicity.py --targets fsedp-2x2 --resources sram

Runs :func:`moec.monotone.check_point` on the paper grid (4 models x 16/64/256/1024 tokens) for
the six fixed strategies and prints every violation (SRAM: any rise; DRAM/D2D: a rise above
1%), then one count line per resource. Several minutes on 2 cores for the whole grid.
"""

from __future__ import annotations

import argparse
import sys

from moec.compiler.bench.spec import PAPER_MODELS, PAPER_TARGETS, PAPER_TOKENS
from moec.monotone import Comparison, check_point

STRATEGIES = ("ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--targets", default=",".join(PAPER_TARGETS))
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--tokens", default=",".join(str(t) for t in PAPER_TOKENS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--resources", default="sram,dram,d2d")
    args = ap.parse_args(argv)
    resources = args.resources.split(",")
    comps: list[Comparison] = []
    for target in args.targets.split(","):
        for model in args.models.split(","):
            for tokens in (int(t) for t in args.tokens.split(",")):
                got = check_point(model, target, tokens, args.strategies.split(","), resources)
                for c in got:
                    if c.violated:
                        print(c.line(), flush=True)
                comps += got
    for r in resources:
        mine = [c for c in comps if c.resource == r]
        bad = [c for c in mine if c.violated]
        worst = max(mine, key=lambda c: c.rise, default=None)
        rise = worst.rise if worst is not None else 0.0
        print(
            f"{r}: {len(bad)} of {len(mine)} comparisons violate (largest rise {rise * 100:+.2f}%)"
            + (f"; largest: {worst.line()}" if worst is not None and rise > 0 else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
