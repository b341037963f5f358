"""What a run reports: latency per layer and in total, utilization, SRAM, bytes, Chrome trace.

:class:`Report` is plain data with a fixed-order JSON form (``moec run --json``); :func:`render`
draws it as rich tables; :func:`chrome_trace` turns a :class:`~.timing.Timeline` into a
Chrome/Perfetto trace (``traceEvents`` of ``"X"`` events in microseconds): process 0 holds one
track per die's compute unit, process 1 one per DRAM channel, process 2 one per link direction,
process 3 (targets with a host tier) one per die's host link, each named by metadata events.

Energy (:mod:`.energy`, formulas in :mod:`moec.ir.cost.energy`): ``energy_j``,
``energy_breakdown_j`` (``compute``, ``sram``, ``dram``, ``d2d``, ``host``, ``static``, summing
to ``energy_j``), ``energy_per_die_j`` (the same parts per die) and ``energy_per_token_j`` (over
the tokens of one iteration, when the program has MoE layers). The Chrome trace has a power
counter (``"C"`` events, watts) per die in process 0.

On a target with a host tier the JSON form also has ``utilization.host`` (per die's host link)
and ``host_bytes`` / ``host_bytes_total`` (bytes each die loaded from host memory: offloaded
experts); without one these keys are absent.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moec.backends.interp.energy import power_counters
from moec.backends.interp.timing import COMPUTE, DELAY, DENSE_DRAM, LOAD, XFER, Timeline
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import Block, Load, Recv, Send, SliceRef

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class Span:
    """A named part of the run (an MoE layer or a dense island) and its time span."""

    name: str
    start_s: float
    end_s: float

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Report:
    """Timing results of one simulated iteration."""

    program: str
    target: str
    latency_s: float
    layers: list[Span]
    islands: list[Span]
    peak_sram_bytes: list[int]
    compute_utilization: list[float]
    dram_utilization: list[float]
    link_utilization: dict[str, float]
    dram_bytes: list[int]
    link_bytes: dict[str, int]
    instructions: int = 0
    events: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: per die's host link (None: the target has no host tier)
    host_utilization: list[float] | None = None
    host_bytes: list[int] | None = None
    #: per die, the activation bytes within ``peak_sram_bytes`` (the rest is slots)
    peak_sram_activation_bytes: list[int] = field(default_factory=list)
    #: per die, the most slot bytes held at once, activations aside
    peak_slot_bytes: list[int] = field(default_factory=list)
    #: joules per part (:data:`moec.ir.energy.PARTS`) over all dies, and per die
    energy_breakdown_j: dict[str, float] = field(default_factory=dict)
    energy_per_die_j: list[dict[str, float]] = field(default_factory=list)
    #: tokens per iteration (the program's first MoE layer's), for energy per token; 0: unknown
    tokens: int = 0

    @property
    def energy_j(self) -> float:
        return sum(self.energy_breakdown_j.values())

    @property
    def total_dram_bytes(self) -> int:
        return sum(self.dram_bytes)

    @property
    def total_link_bytes(self) -> int:
        return sum(self.link_bytes.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "program": self.program,
            "target": self.target,
            "latency_s": self.latency_s,
            "layers": [
                {"name": s.name, "latency_s": s.latency_s, "start_s": s.start_s, "end_s": s.end_s}
                for s in self.layers
            ],
            "islands": [{"name": s.name, "latency_s": s.latency_s} for s in self.islands],
            "peak_sram_bytes": self.peak_sram_bytes,
            "peak_sram_activation_bytes": self.peak_sram_activation_bytes,
            "peak_slot_bytes": self.peak_slot_bytes,
            "utilization": {
                "compute": self.compute_utilization,
                "dram": self.dram_utilization,
                "links": self.link_utilization,
            },
            "dram_bytes": self.dram_bytes,
            "link_bytes": self.link_bytes,
            "dram_bytes_total": self.total_dram_bytes,
            "link_bytes_total": self.total_link_bytes,
            "instructions": self.instructions,
            "energy_j": self.energy_j,
            "energy_breakdown_j": self.energy_breakdown_j,
            "energy_per_die_j": self.energy_per_die_j,
        }
        if self.tokens > 0:
            out["energy_per_token_j"] = self.energy_j / self.tokens
        if self.host_utilization is not None and self.host_bytes is not None:
            out["utilization"]["host"] = self.host_utilization
            out["host_bytes"] = self.host_bytes
            out["host_bytes_total"] = sum(self.host_bytes)
        if "sram_over_bytes" in self.extra:  # a run past a die's SRAM (--allow-overflow)
            out["sram_over_bytes"] = self.extra["sram_over_bytes"]
        if "online_choice" in self.extra:  # per layer, the alternative an online policy ran
            out["online_choice"] = self.extra["online_choice"]
        if "deferred_pairs" in self.extra:  # token buffering: work charged to the next iteration
            out["deferred_pairs"] = self.extra["deferred_pairs"]
            out["deferred_s"] = self.extra.get("deferred_s", 0.0)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _spans(
    names: list[str], tags: list[int], tl: Timeline, kept: dict[int, tuple[float, float]] | None
) -> list[Span]:
    """Each tagged group's span: its ops' earliest start and latest end, or the spans a run
    summarized layer by layer ``kept``."""
    if kept is not None:
        return [Span(n, *kept[k]) for k, n in enumerate(names) if k in kept]
    lo = [float("inf")] * len(names)
    hi = [float("-inf")] * len(names)
    start, end = tl.start, tl.end
    for op, k in enumerate(tags):
        if k >= 0:
            if start[op] < lo[k]:
                lo[k] = start[op]
            if end[op] > hi[k]:
                hi[k] = end[op]
    return [Span(n, lo[k], hi[k]) for k, n in enumerate(names) if hi[k] >= lo[k]]


def make_report(tl: Timeline, program: str) -> Report:
    t = tl.target
    D, C = t.num_dies, len(t.channels)
    span = tl.makespan if tl.makespan > 0 else 1.0
    util = [b / span for b in tl.busy]
    L = len(t.links)
    has_host = t.host is not None
    sm = tl.summary
    return Report(
        program=program,
        target=t.name,
        latency_s=tl.makespan,
        layers=_spans(tl.layer_names, tl.layer, tl, None if sm is None else sm.layer_spans),
        islands=_spans(tl.island_names, tl.island, tl, None if sm is None else sm.island_spans),
        peak_sram_bytes=list(tl.peak_sram),
        peak_sram_activation_bytes=list(tl.peak_sram_activations),
        peak_slot_bytes=list(tl.peak_slot_bytes),
        compute_utilization=util[:D],
        dram_utilization=util[D : D + C],
        link_utilization={f"{lk.src}->{lk.dst}": util[D + C + k] for k, lk in enumerate(t.links)},
        dram_bytes=list(tl.dram_bytes),
        link_bytes=dict(tl.link_bytes),
        instructions=tl.instructions,
        events=tl.events,
        host_utilization=util[D + C + L : D + C + L + D] if has_host else None,
        host_bytes=list(tl.host_bytes) if has_host else None,
        energy_breakdown_j=tl.energy.breakdown() if tl.energy is not None else {},
        energy_per_die_j=tl.energy.per_die() if tl.energy is not None else [],
    )


def _si(v: float, unit: str) -> str:
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(v) >= scale or scale == 1e-9:
            return f"{v / scale:.4g} {prefix}{unit}"
    return f"{v:g} {unit}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def render(r: Report, width: int = 110) -> str:
    """Rich tables: summary, per-layer latency, per-resource utilization and bytes."""
    from rich.console import Console  # only the text report needs rich (not a bench's JSON)
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=False, color_system=None)
    con.print(
        f"[bold]{r.program}[/] on {r.target}: latency {_si(r.latency_s, 's')}, "
        f"{r.instructions} instructions, DRAM {_bytes(r.total_dram_bytes)}, "
        f"links {_bytes(r.total_link_bytes)}"
        + (f", host {_bytes(sum(r.host_bytes))}" if r.host_bytes else "")
    )
    if "deferred_pairs" in r.extra:
        con.print(
            f"token buffering: {r.extra['deferred_pairs']} (token, expert) pairs deferred to the "
            f"next iteration ({_si(float(r.extra.get('deferred_s', 0.0)), 's')} of catch-up, "
            "not in the layer latency)"
        )
    for layer, c in r.extra.get("online_choice", {}).items():
        stats = ", ".join(f"{k} {v:g}" for k, v in c["stats"].items())
        con.print(
            f"online choice: {layer} ran alternative {c['alternative']} ({c['strategy']}): {stats}"
        )
    if "sram_over_bytes" in r.extra:
        con.print(
            f"warning: SRAM overflow allowed (--allow-overflow): a die exceeded its SRAM by up to "
            f"{_bytes(int(r.extra['sram_over_bytes']))}; the run went on as if it had room"
        )
    if r.layers or r.islands:
        lt = Table(title="layers")
        for col in ("name", "kind", "start", "latency"):
            lt.add_column(col, justify="right" if col in ("start", "latency") else "left")
        rows = [(s, "moe") for s in r.layers] + [(s, "dense") for s in r.islands]
        for s, kind in sorted(rows, key=lambda x: (x[0].start_s, x[0].name)):
            lt.add_row(s.name, kind, _si(s.start_s, "s"), _si(s.latency_s, "s"))
        con.print(lt)
    rt = Table(title="resources")
    for col in ("resource", "utilization", "bytes", "peak SRAM"):
        rt.add_column(col, justify="left" if col == "resource" else "right")
    for d, u in enumerate(r.compute_utilization):
        acts = r.peak_sram_activation_bytes[d] if r.peak_sram_activation_bytes else 0
        sram = _bytes(r.peak_sram_bytes[d]) + (f" ({_bytes(acts)} act.)" if acts else "")
        rt.add_row(f"die {d} compute", f"{100 * u:.1f}%", "", sram)
    for c, u in enumerate(r.dram_utilization):
        rt.add_row(f"ch{c}", f"{100 * u:.1f}%", _bytes(r.dram_bytes[c]), "")
    for name, u in r.link_utilization.items():
        rt.add_row(f"link {name}", f"{100 * u:.1f}%", _bytes(r.link_bytes.get(name, 0)), "")
    if r.host_utilization is not None and r.host_bytes is not None:
        for d, u in enumerate(r.host_utilization):
            rt.add_row(f"host link {d}", f"{100 * u:.1f}%", _bytes(r.host_bytes[d]), "")
    con.print(rt)
    if r.energy_breakdown_j:
        if r.energy_per_die_j:
            con.print(energy_table(r))
        con.print(energy_line(r))
    return buf.getvalue()


def energy_table(r: Report) -> Table:
    """Joules per die and part (each die's own compute, SRAM, the DRAM channels and links it
    drives, static power), a package row, and each die's joules per token of the run."""
    from rich.table import Table

    parts = list(r.energy_breakdown_j)
    et = Table(title="energy")
    for col in ("die", "total", "per token", *parts):
        et.add_column(col, justify="left" if col == "die" else "right")

    def row(name: str, by_part: dict[str, float]) -> None:
        total = sum(by_part.values())
        per_token = _joules(total / r.tokens) if r.tokens > 0 else ""
        cells = (_joules(j) if (j := by_part.get(p, 0.0)) else "0" for p in parts)
        et.add_row(name, _joules(total), per_token, *cells)

    for d, by_part in enumerate(r.energy_per_die_j):
        row(f"die {d}", by_part)
    row("package", r.energy_breakdown_j)
    return et


def _joules(j: float) -> str:
    for scale, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")):
        if abs(j) >= scale or scale == 1e-12:
            return f"{j / scale:.4g} {prefix}J"
    return f"{j:g} J"


def energy_line(r: Report) -> str:
    """``energy 1.234 mJ, 154.2 uJ/token (compute 12.3%, sram ...)``: mJ, per token, shares."""
    total = r.energy_j
    shares = ", ".join(
        f"{part} {100 * j / total:.1f}%" if total > 0 else f"{part} 0%"
        for part, j in r.energy_breakdown_j.items()
    )
    per_token = f", {_joules(total / r.tokens)}/token" if r.tokens > 0 else ""
    return f"energy {total * 1e3:.4g} mJ{per_token} ({shares})"


def _event_name(i: object) -> str:
    if isinstance(i, Load) and isinstance(i.content, SliceRef):
        return f"load {i.content}"
    if isinstance(i, Send | Recv):
        b: Block | None = i.block
        if b is not None:
            return f"{b.which} {b.layer}"
        return f"slot s{i.slot}"
    op = getattr(i, "opcode", "?")
    layer = getattr(i, "island", None)
    return f"{op} {layer}" if layer else str(op)


def chrome_trace(tl: Timeline) -> dict[str, Any]:
    """The timeline as a Chrome trace object (``{"traceEvents": [...]}``)."""
    t = tl.target
    D, C = t.num_dies, len(t.channels)
    events: list[dict[str, Any]] = []
    L = len(t.links)
    procs = [(0, "dies"), (1, "DRAM channels"), (2, "D2D links")]
    if tl.num_resources > D + C + L:
        procs.append((3, "host links"))
    for pid, pname in procs:
        events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_name",
                       "args": {"name": pname}})  # fmt: skip
        events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index",
                       "args": {"sort_index": pid}})  # fmt: skip
    track: list[tuple[int, int]] = []
    for r, name in enumerate(tl.resource_names):
        pid, tid = (
            (0, r) if r < D
            else (1, r - D) if r < D + C
            else (2, r - D - C) if r < D + C + L
            else (3, r - D - C - L)
        )  # fmt: skip
        track.append((pid, tid))
        events.append(
            {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}
        )
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": tid}})  # fmt: skip
    names = {COMPUTE: "compute", LOAD: "dma", XFER: "d2d", DENSE_DRAM: "dense"}
    held = -1  # what the instruction's latest holding op held
    for op, r in enumerate(tl.res):
        if tl.kind[op] == DELAY and held >= 0 and tl.instr[op] is tl.instr[op - 1]:
            # A latency holds nothing and overlaps later requests (pipelined): an async slice
            # on the resource's process, so the trace ends where the run does.
            pid, _ = track[held]
            ev = {"pid": pid, "tid": 0, "id": op, "cat": "latency",
                  "name": f"latency {tl.resource_names[held]}"}  # fmt: skip
            events.append({**ev, "ph": "b", "ts": tl.start[op] * 1e6})
            events.append({**ev, "ph": "e", "ts": tl.end[op] * 1e6})
            continue
        held = r
        if r < 0:
            continue
        i = tl.instr[op]
        ts = tl.start[op] * 1e6
        dur = (tl.end[op] - tl.start[op]) * 1e6
        name = _event_name(i)
        args = {"instr": instr_text(i) if i is not None else "", "die": tl.die[op]}
        pid, tid = track[r]
        events.append({"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur,
                       "name": name, "cat": names.get(tl.kind[op], "op"), "args": args})  # fmt: skip
    if tl.energy is not None:
        events += power_counters(tl.energy, t, tl.start, tl.end)
    return {"traceEvents": events, "displayTimeUnit": "ns"}


def chrome_trace_json(tl: Timeline) -> str:
    return json.dumps(chrome_trace(tl), separators=(",", ":")) + "\n"
