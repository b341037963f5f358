"""What a stream program plans, in numbers: the data behind ``moec inspect prog.msp``.

:func:`summarize` returns a JSON-able dict (fixed key order): per die, instruction counts by
opcode, peak SRAM planned by the static part, bytes loaded from DRAM (in total and per channel),
dense FLOPs, and bytes sent over each outgoing link; per link, bytes; per MoE layer, the runtime
policy. :func:`render` turns it into rich-formatted tables as plain text.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from moec.ir.stream.printer import channel as channel_text
from moec.ir.stream.program import OPCODES, Dense, Load, Program, RuntimePolicy, Send
from moec.ir.stream.verify import peak_sram


def summarize(p: Program) -> dict[str, Any]:
    """Per-die and per-layer numbers of ``p`` (static part only; runtime part as declared)."""
    peaks = peak_sram(p)
    links: dict[str, int] = defaultdict(int)
    dies = []
    for st in sorted(p.streams, key=lambda s: s.die):
        counts = dict.fromkeys(OPCODES, 0)
        by_channel: dict[str, int] = defaultdict(int)
        out_links: dict[str, int] = defaultdict(int)
        flops = 0
        for i in st.instrs:
            counts[i.opcode] += 1
            if isinstance(i, Load):
                by_channel[channel_text(i.channel)] += i.nbytes
            elif isinstance(i, Send):
                out_links[f"{st.die}->{i.peer}"] += i.nbytes
            elif isinstance(i, Dense):
                flops += i.flops
        for k, v in out_links.items():
            links[k] += v
        dies.append(
            {
                "die": st.die,
                "instructions": len(st.instrs),
                "counts": {k: v for k, v in counts.items() if v},
                "peak_sram_bytes": peaks.get(st.die, 0),
                "slot_bytes": _slot_bytes(p, st.die),
                "dram_bytes": sum(v for k, v in by_channel.items() if k != "host"),
                "dram_bytes_by_channel": dict(sorted(by_channel.items())),
                "dense_flops": flops,
                "link_bytes": dict(sorted(out_links.items())),
            }
        )
    layers = []
    for m in p.layers:
        r = p.policy(m.name)
        layers.append(
            {
                "name": m.name,
                "experts": m.experts,
                "top_k": m.top_k,
                "tokens": m.tokens,
                "strategy": _strategy(r) if r else None,
                "params": {k: r.params[k] for k in sorted(r.params)} if r else {},
                "precision": list(r.precision) if r else [],
                "skip": {"rule": r.skip.rule, "threshold": r.skip.threshold}
                if r and r.skip
                else None,
                "annotations": sorted(r.annotations) if r else [],
            }
        )
    return {
        "program": p.name,
        "target": p.target.spec if p.target else None,
        "static": p.is_static,
        "instructions": p.num_instructions(),
        "dies": dies,
        "links": dict(sorted(links.items(), key=lambda kv: tuple(map(int, kv[0].split("->"))))),
        "layers": layers,
    }


def _slot_bytes(p: Program, die: int) -> int:
    """SRAM the die's slot pool reserves for weight slices (held for the whole run)."""
    pool = p.slot_pool(die)
    return pool.count * pool.nbytes if pool is not None else 0


def _short(v: Any, limit: int = 8) -> str:
    """A parameter value for a table cell: a long list as its repeating unit or its head."""
    if not isinstance(v, (list, tuple)) or len(v) <= limit:
        return str(v)
    n = len(v)
    for period in range(1, limit + 1):
        if n % period == 0 and all(v[i] == v[i % period] for i in range(n)):
            return f"{list(v[:period])} x{n // period}"
    return f"[{', '.join(map(str, v[: limit // 2]))}, ... ({n} values)]"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def render(summary: dict[str, Any], width: int = 120) -> str:
    """The summary as text tables (no colour codes)."""
    from rich.console import Console  # imported here: a program's import need not load rich
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    head = f"program {summary['program']!r}"
    if summary["target"]:
        head += f" for target {summary['target']!r}"
    kind = "fully static" if summary["static"] else "static + runtime"
    console.print(f"{head}: {summary['instructions']} instructions ({kind})")

    dies = Table(title="dies")
    cols = (
        "die",
        "instrs",
        "by opcode",
        "slots",
        "peak SRAM",
        "DRAM loaded",
        "dense FLOPs",
        "sent",
    )
    for col in cols:
        dies.add_column(col, justify="left" if col in ("by opcode", "sent") else "right")
    runtime_note = False
    for d in summary["dies"]:
        runtime = bool(d["counts"].get("moe"))  # placeholders: expanded only once routing is known
        runtime_note |= runtime
        extra = " + run time" if runtime else ""
        dies.add_row(
            str(d["die"]),
            str(d["instructions"]),
            " ".join(f"{k}:{v}" for k, v in d["counts"].items()),
            _bytes(d["slot_bytes"]) if d["slot_bytes"] else "-",
            _bytes(d["peak_sram_bytes"]) + extra
            if d["peak_sram_bytes"] or not runtime
            else "at run time",
            _bytes(d["dram_bytes"]) + extra if d["dram_bytes"] or not runtime else "at run time",
            f"{d['dense_flops']:.3g}",
            " ".join(f"{k}:{_bytes(v)}" for k, v in d["link_bytes"].items()) or "-",
        )
    console.print(dies)
    if runtime_note:
        console.print(
            "SRAM and DRAM of the runtime part depend on the routing: `moec run PROG` (or "
            "`--dump-expanded`) gives them for one."
        )

    if summary["layers"]:
        layers = Table(title="MoE layers (runtime part)")
        for col in ("layer", "experts", "top_k", "tokens", "strategy", "params", "precision"):
            layers.add_column(col)
        for m in summary["layers"]:
            params = ", ".join(f"{k}={_short(v)}" for k, v in m["params"].items())
            if m["skip"]:
                params += (
                    f"{', ' if params else ''}skip={m['skip']['rule']}@{m['skip']['threshold']}"
                )
            prec = ",".join(sorted(set(m["precision"]))) or "-"
            layers.add_row(
                m["name"],
                str(m["experts"]),
                str(m["top_k"]),
                str(m["tokens"]),
                m["strategy"] or "-",
                params or "-",
                prec,
            )
        console.print(layers)
    return buf.getvalue()


def _strategy(r: RuntimePolicy) -> str:
    """The strategy column; an online choice lists its alternatives: ``online: ep | tp``."""
    if not r.alternatives:
        return r.strategy
    return f"{r.strategy}: " + " | ".join(a.strategy for a in r.alternatives)
