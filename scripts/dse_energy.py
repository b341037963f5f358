"""Energy per token in the Qwen3-30B-A3B design-space exploration (issue 15's "Results").

    python scripts/dse_energy.py                               # run both sweeps, print the tables
    python scripts/dse_energy.py --update docs/results.md      # rewrite the marked section
    python scripts/dse_energy.py --out DIR --reuse             # read journals already in DIR

Runs two shipped sweeps in-process (``moec sweep SPEC -o DIR --local``), then reads their
journals (``sweep.sqlite``, table ``points``):

1. ``examples/sweeps/qwen3_strategies.toml``: every strategy spelling x 16/64/256/1024 tokens on
   ``fsedp-2x2``: energy per token of each, the lowest per batch, and the breakdown per token
   (compute, SRAM, DRAM, D2D, static) that decides it;
2. ``examples/sweeps/qwen3_dse.toml``: FSE-DP-paired over D2D x DDR bandwidth at 16 MiB per die:
   energy per token per cell, and its static share (the part that bandwidth changes, through
   the latency; bytes, MACs and pJ/bit do not move);
3. ``examples/sweeps/qwen3_buffering.toml``: EP, Hydra, TP and FSE-DP with single- and
   double-buffered weight-stationary arrays: energy per token and latency side by side.

Every figure is the interpreter's own energy ledger (``docs/targets.md``, "Energy"); nothing is
computed here but ratios and sums of stored columns.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from pathlib import Path

from doc_sections import update_section

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES_SPEC = ROOT / "examples" / "sweeps" / "qwen3_strategies.toml"
DSE_SPEC = ROOT / "examples" / "sweeps" / "qwen3_dse.toml"
BUFFERING_SPEC = ROOT / "examples" / "sweeps" / "qwen3_buffering.toml"
BEGIN, END = "<!-- dse-energy:begin -->", "<!-- dse-energy:end -->"
PARTS = ("compute", "sram", "dram", "d2d", "static")


def sweep(spec: Path, out: Path, reuse: bool) -> Path:
    """The journal of ``spec`` run into ``out`` (run now unless ``reuse`` and it exists)."""
    journal = out / "sweep.sqlite"
    if not (reuse and journal.exists()):
        cmd = [sys.executable, "-m", "moec", "-q", "sweep", str(spec), "-o", str(out), "--local"]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    if not journal.exists():
        raise SystemExit(f"{spec.name}: no journal at {journal}")
    return journal


def _rows(journal: Path, where: str = "1") -> list[dict]:
    con = sqlite3.connect(journal)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"select * from points where {where}")]
    finally:
        con.close()


def _mj(j: float) -> str:
    return f"{j * 1e3:.3f}"


def _uj(j: float) -> str:
    return f"{j * 1e6:.1f}"


def strategies_table(journal: Path) -> str:
    rows = _rows(journal)
    tokens = sorted({r["tokens"] for r in rows})
    names = list(dict.fromkeys(r["strategy"] for r in sorted(rows, key=lambda r: r["point_index"])))
    ok = {(r["strategy"], r["tokens"]): r for r in rows if r["status"] == "ok"}
    best = {
        t: min((r for (s, tt), r in ok.items() if tt == t), key=lambda r: (r["energy_per_token_j"], r["strategy"]))
        for t in tokens
        if any(tt == t for _, tt in ok)
    }  # fmt: skip
    out = [
        "Energy per token (mJ), latency (ms) in parentheses; **bold** the least energy per "
        "batch; `n/f` does not fit the 16 MiB die.",
        "",
        "| strategy | " + " | ".join(f"{t} tokens" for t in tokens) + " |",
        "|---|" + "---:|" * len(tokens),
    ]
    for s in names:
        cells = []
        for t in tokens:
            r = ok.get((s, t))
            if r is None:
                cells.append("n/f")
                continue
            cell = f"{_mj(r['energy_per_token_j'])} ({r['latency_s'] * 1e3:.2f})"
            cells.append(f"**{cell}**" if best.get(t) is r else cell)
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Breakdown per token (uJ) of the least-energy strategy, EP and FSE-DP-paired, per batch:",
        "",
        "| tokens | strategy | " + " | ".join(PARTS) + " | total |",
        "|---:|---|" + "---:|" * (len(PARTS) + 1),
    ]
    for t in tokens:
        shown = [best.get(t), ok.get(("ep", t)), ok.get(("fsedp-paired", t))]
        for k, r in enumerate(shown):
            if r is None or r in shown[:k]:
                continue
            per = [r[f"energy_breakdown_j_{p}"] / t for p in PARTS]
            out.append(
                f"| {t} | {r['strategy']} | " + " | ".join(_uj(x) for x in per)
                + f" | {_uj(r['energy_per_token_j'])} |"
            )  # fmt: skip
    return "\n".join(out) + "\n"


def dse_table(journal: Path, sram_mib: int = 16) -> str:
    rows = [r for r in _rows(journal, f"status = 'ok' and sram_mib_per_die = {sram_mib}")]
    d2d = sorted({r["d2d_gbps"] for r in rows})
    ddr = sorted({r["ddr_gbps_per_die"] for r in rows})
    at = {(r["ddr_gbps_per_die"], r["d2d_gbps"]): r for r in rows}
    out = [
        f"FSE-DP-paired, 1024 tokens, {sram_mib} MiB per die: energy per token (mJ), static share "
        "in parentheses.",
        "",
        "| DDR GB/s per die | " + " | ".join(f"D2D {g:g} GB/s" for g in d2d) + " |",
        "|---:|" + "---:|" * len(d2d),
    ]
    for m in ddr:
        cells = []
        for g in d2d:
            r = at.get((m, g))
            if r is None:
                cells.append("-")
                continue
            share = r["energy_breakdown_j_static"] / r["energy_j"]
            cells.append(f"{_mj(r['energy_per_token_j'])} ({100 * share:.0f}%)")
        out.append(f"| {m:g} | " + " | ".join(cells) + " |")
    every = _rows(journal)
    out += [
        "",
        "Over SRAM per die (every D2D x DDR cell of that size; `n/f`: no cell fits):",
        "",
        "| SRAM MiB per die | energy per token (mJ) | latency (ms) | SRAM / DRAM / D2D / static share |",
        "|---:|---:|---:|---:|",
    ]
    for mib in sorted({r["sram_mib_per_die"] for r in every}):
        fit = [r for r in every if r["sram_mib_per_die"] == mib and r["status"] == "ok"]
        if not fit:
            out.append(f"| {mib:g} | n/f | n/f | |")
            continue
        e = [r["energy_per_token_j"] for r in fit]
        lat = [r["latency_s"] * 1e3 for r in fit]
        shares = " / ".join(
            f"{100 * sum(r[f'energy_breakdown_j_{p}'] / r['energy_j'] for r in fit) / len(fit):.0f}%"
            for p in ("sram", "dram", "d2d", "static")
        )
        out.append(
            f"| {mib:g} | {_mj(min(e))}-{_mj(max(e))} | {min(lat):.1f}-{max(lat):.1f} | {shares} |"
        )
    return "\n".join(out) + "\n"


def buffering_table(journal: Path) -> str:
    rows = [r for r in _rows(journal, "status = 'ok'")]
    tokens = sorted({r["tokens"] for r in rows})
    names = list(dict.fromkeys(r["strategy"] for r in sorted(rows, key=lambda r: r["point_index"])))
    at = {(r["strategy"], r["tokens"], r["weight_buffering"]): r for r in rows}
    out = [
        "Energy per token (mJ) and latency (ms), single -> double-buffered weights; `n/f` does "
        "not fit the 16 MiB die.",
        "",
        "| strategy | " + " | ".join(f"{t} tokens" for t in tokens) + " |",
        "|---|" + "---:|" * len(tokens),
    ]

    def cell(r: dict | None) -> str:
        if r is None:
            return "n/f"
        return f"{_mj(r['energy_per_token_j'])} ({r['latency_s'] * 1e3:.2f})"

    for s in names:
        cells = [
            f"{cell(at.get((s, t, 'single')))} -> {cell(at.get((s, t, 'double')))}" for t in tokens
        ]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/dse_energy", help="folder for the two journals")
    ap.add_argument("--reuse", action="store_true", help="read journals already in --out")
    ap.add_argument("--update", metavar="RESULTS.md", help="rewrite the marked section there")
    args = ap.parse_args()
    out = Path(args.out)
    text = (
        "#### Every strategy (`qwen3_strategies.toml`)\n\n"
        + strategies_table(sweep(STRATEGIES_SPEC, out / "strategies", args.reuse))
        + "\n#### FSE-DP-paired over D2D x DDR bandwidth (`qwen3_dse.toml`)\n\n"
        + dse_table(sweep(DSE_SPEC, out / "dse", args.reuse))
        + "\n#### Single- against double-buffered weights (`qwen3_buffering.toml`)\n\n"
        + buffering_table(sweep(BUFFERING_SPEC, out / "buffering", args.reuse))
    )
    if not args.update:
        print(text)
        return 0
    return update_section(args.update, BEGIN, END, text)


if __name__ == "__main__":
    sys.exit(main())
