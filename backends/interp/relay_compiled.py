"""The relay, compiled: a long run of :func:`.relay_chain.relay_run` taken by a numba kernel.

A whole-model FSE-DP run relays millions of instructions (a layer of Qwen3-30B-A3B on 4x4
dies about 40k a die), at about 1 us each in Python, the interpreter's floor. Making them and
reading them back costs about as much, so the compiled FSE-DP scheduler hands each die's stream
on as its records (:class:`.relay_records.RecordStream`, its instructions made only when read),
and a stream holding such a piece is read as columns from them (code, slot, peer or channel,
bytes, slice shape, token counts); the run's ops keep the places of their instructions
(:class:`.instr_column.InstrColumn`), not objects. Each run's templates are found per distinct key (the relay's own memoized templates,
:mod:`.relay_chain`), and :func:`.relay_kernel.relay` writes the run's ops, edges, charges,
SRAM records, fills and pairings as arrays, appended to the builder's lists in the order the
reference appends them (:mod:`.relay_output`). The graph, the records and the die's state are the reference's, to
the byte (``tests/test_relay_compiled.py`` compares them on the tiny goldens and FSE-DP
points); a run is cut where a record stream ends (the reference's run would go on: the same graph,
the event loop reading the edge log source by source).

:data:`COMPILED` says when: True every run it can take, False never (the reference), None (the
default) runs of at least :data:`MIN_RUN` instructions (shorter ones cost more in setup than
they save) in record streams, which exist only where the compiled scheduler ran (numba is
loaded, and the work is big enough to have paid for it) and the relay will take most of a
die's stream (:meth:`.relay_records.RecordStream.lazy`). moec works without numba:
the reference takes every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from moec.backends.interp import relay_chain as rc
from moec.backends.interp import relay_records
from moec.backends.interp.event_loop import OptionalKernel
from moec.backends.interp.opgraph import Builder, DieState
from moec.backends.interp.relay_output import append_run, slots_back
from moec.backends.interp.transfer_queue import TransferQueue
from moec.ir.stream.program import Instr, SliceRef

#: True: every run the kernel can take; False: none; None: runs of :data:`MIN_RUN` or more
COMPILED: bool | None = None
#: the shortest run an undecided process gives the kernel. Measured (session 16, four layers of
#: DeepSeek-V3 at 1024 tokens, in one process alternating): the builds of fsedp, fsedp-paired
#: and fsedp-r5 (runs of thousands) take the same CPU at 256, 1024, 2048 and 4096 (0.36-0.43 s),
#: 0.53-0.57 s with no run compiled; naive rules' short runs pay at none (their schedules offer
#: no records, :func:`~.expand.fsedp_compiled.offered`)
MIN_RUN = 256

RECV, SEND, FREE, GEMM, LOAD = (
    relay_records.RECV, relay_records.SEND, relay_records.FREE, relay_records.GEMM, relay_records.LOAD,
)  # fmt: skip
_KERNEL = OptionalKernel("moec.backends.interp.relay_kernel")


def available() -> bool:
    """Whether the kernel can run here (numba imports); imports it once."""
    return _KERNEL.available()


def offered() -> int | None:
    """The shortest run the kernel takes (:mod:`.relay_records`), None: none."""
    return None if COMPILED is False else 1 if COMPILED else MIN_RUN


def wanted(length: int) -> bool:
    """Whether a run of at most ``length`` instructions may go to the kernel (records held)."""
    if COMPILED is False or not relay_records.active():
        return False
    return (COMPILED or length >= MIN_RUN) and available()


class _Tables:
    """A builder's templates as rows of arrays (a transfer's, a slice compute's, a load's),
    found by shape, and each stream's columns (:func:`_columns`)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], int] = {}  # (die, code, peer, bytes, shape) -> row
        self.shape_of: dict[tuple[str, bool, int], int] = {}
        self.shape_ref: list[SliceRef] = []
        self.blocks: list[Any] = []  # charges, by entry
        self.x: list[list[Any]] = [[], [], [], [], [], []]  # res, occ, lat, tag, chg, held
        self.u: list[list[Any]] = [[], [], [], [], []]  # durs, lk, chg, hb, layer name
        self.u_rows: dict[tuple[Any, ...], int] = {}
        self.helds: dict[tuple[int, str], int] = {}
        self.held: list[tuple[Any, str, SliceRef]] = []
        self.ld: list[list[Any]] = [[], [], []]  # tag, chg, held
        self.l_ptr, self.l_kind, self.l_dur, self.l_res = [0], [], [], []  # type: ignore[var-annotated]
        self.l_bptr, self.l_bo, self.l_back = [0], [], []  # type: ignore[var-annotated]
        self.l_lptr, self.l_links = [0], []  # type: ignore[var-annotated]
        self.stream: tuple[Any, Any] | None = None
        self.arrays: dict[str, np.ndarray] = {}
        self.sized = (-1, -1, -1)
        #: the energy ledger (and its :attr:`~.energy.EnergyLedger.epoch`) ``ledger_ix`` is
        #: of: per entry of ``blocks``, its index there
        self.ledger: tuple[Any, int] | None = None
        self.ledger_ix = np.zeros(0, np.int64)
        #: where the current run's fills start in the builder's (flat) fills
        self.fill_base = 0

    def block(self, charges: Any) -> int:
        self.blocks.append(charges)
        return len(self.blocks) - 1

    def hold_id(self, units: dict[Any, Any], prec: str, c: SliceRef) -> int:
        key = (id(units), prec)
        k = self.helds.get(key)
        if k is None:
            k = self.helds[key] = len(self.held)
            self.held.append((units, prec, c))
        return k


def _tables(b: Builder) -> _Tables:
    t = b.relay_tables
    if t is None:
        t = b.relay_tables = _Tables()
    return t


def _columns(t: _Tables, ins: Sequence[Instr]) -> dict[str, Any]:
    """The stream's columns (per instruction its code, slot, peer or channel, bytes, slice
    shape, token count) where it holds the scheduler's records (:mod:`.relay_records`);
    elsewhere code 0: the Python relay takes those instructions. ``piece``, per entry, the
    start of its record stream (-1: none): a run stays in one."""
    if t.stream is not None and t.stream[0] is ins:
        return t.stream[1]
    n = len(ins)
    code = np.zeros(n, np.int64)
    cols: dict[str, Any] = {"code": code, "slot": np.zeros(n, np.int64), "peer": np.zeros(n, np.int64),
            "nbytes": np.zeros(n, np.int64), "shape": np.full(n, -1, np.int64),
            "size": np.zeros(n, np.int64), "piece": np.full(n, -1, np.int64)}  # fmt: skip
    pieces: dict[int, relay_records.RecordStream] = {}
    for p, rs in relay_records.record_pieces(ins):
        pcode, slot, peer, nbytes, shape, size, shapes = rs.columns()
        w = slice(p, p + len(rs))
        code[w] = pcode
        cols["slot"][w], cols["peer"][w] = slot, peer
        cols["nbytes"][w], cols["size"][w] = nbytes, size
        cols["piece"][w] = p
        pieces[p] = rs
        ours = []  # the stream's shapes as this builder numbers them
        for c in shapes:
            key = (c.layer, c.expert is None, c.slice)
            k = t.shape_of.get(key)
            if k is None:
                k = t.shape_of[key] = len(t.shape_ref)
                t.shape_ref.append(c)
            ours.append(k)
        cols["shape"][w] = np.asarray(ours, np.int64)[shape]
    # where a run from each entry must stop at the latest, so a run too short to pay is
    # turned down before its setup
    cols["stop"] = relay_records.stops(code)
    cols["pieces"] = pieces
    t.stream = (ins, cols)
    return cols


class _Recv(NamedTuple):
    """What a ``recv``'s template reads of it (:func:`.relay_chain._recv_template`): no
    instruction is made for it."""

    peer: int
    nbytes: int


def _x_row(t: _Tables, b: Builder, die: int, key: tuple[int, ...]) -> int:
    """The row of a ``recv``'s or ``send``'s template (the reference's, memoized alike)."""
    _, code, p, nb, sh = key
    if code == RECV:
        c = t.shape_ref[sh]
        rkey = ("recv", p, die, nb, c.layer, c.expert is None, c.slice)
        side: Any = _Recv(p, nb)
        tpl = b.chains.get(rkey) or rc._recv_template(b, rkey, side, c, die)
        res, occ, lat, charges, tag, prec, (_, units) = tpl
        hid = t.hold_id(units, prec, c)
    else:
        xkey = ("xfer", die, p, nb)
        res, occ, lat, charges = b.chains.get(xkey) or rc._transfer(b, xkey, die, p, nb)
        tag, hid = -1, -1
    row = t.rows[key] = len(t.x[0])
    for col, v in zip(t.x, (res, occ, lat, tag, t.block(charges), hid), strict=True):
        col.append(v)
    return row


def _l_row(t: _Tables, b: Builder, die: int, key: tuple[int, ...]) -> int:
    """The row of a slice ``load``'s template."""
    _, _, channel, nb, sh = key
    c = t.shape_ref[sh]
    lkey = ("load", channel, die, c.layer, c.expert is None, c.slice, nb)
    tpl = b.chains.get(lkey) or rc._load_template(b, lkey, c, channel, die, nb)
    tag, prec, _, kinds, durs, ress, _, _, backs, charges, links, (_, units) = tpl
    row = t.rows[key] = len(t.ld[0])
    for col, v in zip(t.ld, (tag, t.block(charges), t.hold_id(units, prec, c)), strict=True):
        col.append(v)
    t.l_kind += kinds
    t.l_dur += durs
    t.l_res += ress
    t.l_ptr.append(len(t.l_kind))
    for o, back in backs:
        t.l_bo.append(o)
        t.l_back.append(back)
    t.l_bptr.append(len(t.l_bo))
    t.l_links += links
    t.l_lptr.append(len(t.l_links))
    return row


def _u_row(t: _Tables, b: Builder, die: int, key: tuple[int, ...]) -> int:
    """The row of a slice compute's template (its fill's held templates, its token counts)."""
    hid, ng, na, nc = key
    units, prec, c = t.held[hid]
    ukey = (prec, ng, na, nc)
    durs, hb, charges, lk, _ = units.get(ukey) or rc._unit_template(b, units, ukey, c, die)
    row = t.u_rows[key] = len(t.u[0])
    for col, v in zip(t.u, (durs, lk, t.block(charges), hb, c.layer), strict=True):
        col.append(v)
    return row


def _arrays(t: _Tables) -> dict[str, np.ndarray]:
    """The template tables as the kernel reads them: the lists' entries added since the last
    call converted and appended (every list only grows)."""
    sized = (len(t.x[0]), len(t.u[0]), len(t.ld[0]))
    if sized != t.sized:
        i64, f64 = np.int64, np.float64
        cols = (
            ("x_res", t.x[0], i64), ("x_occ", t.x[1], f64), ("x_lat", t.x[2], f64),
            ("x_tag", t.x[3], i64), ("x_chg", t.x[4], i64), ("u_dur", t.u[0], f64),
            ("u_lk", t.u[1], i64), ("u_chg", t.u[2], i64), ("u_hb", t.u[3], i64),
            ("l_tag", t.ld[0], i64), ("l_ptr", t.l_ptr, i64), ("l_kind", t.l_kind, i64),
            ("l_dur", t.l_dur, f64), ("l_res", t.l_res, i64), ("l_bptr", t.l_bptr, i64),
            ("l_bo", t.l_bo, i64), ("l_lptr", t.l_lptr, i64), ("l_links", t.l_links, i64),
            ("l_chg", t.ld[1], i64),
        )  # fmt: skip
        arrays = t.arrays
        for name, values, dtype in cols:
            have = arrays.get(name)
            k = 0 if have is None else len(have)
            if have is None or k < len(values):
                fresh = np.asarray(values[k:], dtype)
                if name == "u_dur":  # a slice compute's three durations
                    fresh = fresh.reshape(-1, 3)
                arrays[name] = fresh if have is None else np.concatenate([have, fresh])
        t.sized = sized
    return t.arrays


def _rows_of(t: _Tables, b: Builder, die: int, keys: list[np.ndarray], make: Any) -> np.ndarray:
    """Each entry's row (``keys``: columns of ints, a key per entry), made (``make``) for the
    keys not seen yet: the distinct keys looked up once."""
    low = [int(col.min()) for col in keys]  # a column at a time: contiguous, unlike a row's
    span = [int(col.max()) - lo + 1 for col, lo in zip(keys, low, strict=True)]
    flat = np.zeros(len(keys[0]), np.int64)
    if float(np.prod(span, dtype=np.float64)) < 2.0**62:  # the columns mixed into one key
        for col, lo, width in zip(keys, low, span, strict=True):
            flat = flat * width + (col - lo)
    else:  # the columns' ranks, mixed
        for col in keys:
            vals, rank = np.unique(col, return_inverse=True)
            flat = flat * len(vals) + rank.reshape(-1)
    first, inv = _distinct(flat)
    u = np.stack([col[first] for col in keys], axis=1)
    unit = make is _u_row
    table = t.u_rows if unit else t.rows
    rows = []
    for key in map(tuple, u.tolist()):
        key = key if unit else (die, *key)
        got = table.get(key)
        if got is None:
            got = make(t, b, die, key)
        rows.append(got)
    return np.asarray(rows, np.int64)[inv.reshape(-1)]


def _distinct(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_distinct_sorted`'s answer from the kernel's hash pass
    (:func:`.relay_kernel.distinct`): the few distinct values sorted, not every entry."""
    m = len(flat)
    bits = max((2 * m).bit_length(), 4)  # a table of at least twice the entries
    table = np.full(1 << bits, -1, np.int64)
    first, inv = np.empty(m, np.int64), np.empty(m, np.int64)
    nd = _KERNEL.module.distinct(flat, table, np.uint64(64 - bits), first, inv)
    first = first[:nd]
    order = np.argsort(flat[first], kind="stable")
    rank = np.empty(nd, np.int64)
    rank[order] = np.arange(nd)
    return first[order], rank[inv]


def _distinct_sorted(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(flat, return_index=True, return_inverse=True)``'s index and inverse (the
    distinct values in order, each one's first place), from one stable sort: the reference
    :func:`_distinct` is tested against."""
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    new = np.empty(len(flat), np.bool_)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inv = np.empty(len(flat), np.int64)
    inv[order] = np.cumsum(new) - 1
    return order[new], inv


def run(b: Builder, s: DieState, ins: Sequence[Instr], j: int) -> int | None:
    """:func:`.relay_chain.relay_run` of ``ins[j:]`` by the kernel: the index after the run,
    or None where the reference must take it (a run too short to pay, a stream or state the
    kernel does not hold)."""
    t = _tables(b)
    if (t.stream is None or t.stream[0] is not ins) and not relay_records.record_pieces(ins):
        return None  # no records: the reference's
    cols = _columns(t, ins)
    if not cols["code"][j] or cols["stop"][j] - j < (MIN_RUN if COMPILED is None else 1):
        return None
    k = _KERNEL.module
    die = s.die
    at = int(cols["piece"][j])
    rs = cols["pieces"][at]  # the record stream of the run, from ``at``
    code, slot = cols["code"][j : at + len(rs)], cols["slot"][j : at + len(rs)]
    S = int(max([int(cols["slot"].max(initial=-1))] + list(s.slot_fill_info) + list(s.slot_uses)
                + list(s.slot_fill) + list(s.slot_free) + list(s.slot_fill_rec))) + 1  # fmt: skip
    info = s.slot_fill_info
    has_c = np.zeros(S, np.bool_)
    for q, (c, _) in info.items():
        has_c[q] = c is not None
    m, reads = k.run_end(code, slot, has_c, np.full(S, -1, np.int64))
    if m < (MIN_RUN if COMPILED is None else 1):
        return None
    code, slot = code[:m], slot[:m]
    peer, nb, sh = cols["peer"][j : j + m], cols["nbytes"][j : j + m], cols["shape"][j : j + m]
    xw = np.flatnonzero((code == RECV) | (code == SEND))
    if len(xw) and (peer[xw] == die).any():
        return None  # a die's transfer to itself: both sides on one die, the reference's
    row = np.zeros(m, np.int64)
    if len(xw):
        keys = [code[xw], peer[xw], nb[xw], sh[xw]]
        row[xw] = _rows_of(t, b, die, keys, _x_row)
    lw = np.flatnonzero(code == LOAD)
    if len(lw):
        keys = [code[lw], peer[lw], nb[lw], sh[lw]]
        row[lw] = _rows_of(t, b, die, keys, _l_row)
    gw = np.flatnonzero(code == GEMM)
    if len(gw):
        x_hid, l_hid = np.asarray(t.x[5], np.int64), np.asarray(t.ld[2], np.int64)
        src = reads[gw]
        hid = np.full(len(gw), -1, np.int64)
        inrun = src >= 0
        fill_code = code[src[inrun]]
        fill_row = row[src[inrun]]
        held = np.empty(len(fill_row), np.int64)
        by_recv = fill_code == RECV
        held[by_recv] = x_hid[fill_row[by_recv]]
        held[~by_recv] = l_hid[fill_row[~by_recv]]
        hid[inrun] = held
        for q in np.flatnonzero(~inrun).tolist():
            c, prec = info[int(slot[gw[q]])]
            skey = ("unit", die, c.layer, c.expert is None, c.slice)
            units = b.chains.get(skey) or rc._units_of(b, skey, c, die)
            hid[q] = t.hold_id(units, prec, c)
        size = cols["size"][j : j + m]
        keys = [hid, size[gw], size[gw + 1], size[gw + 2]]
        row[gw] = _rows_of(t, b, die, keys, _u_row)
    a = _arrays(t)
    # the latest x block's arrival per layer, for the slice computes
    names = t.u[4]
    x_of = {nm: s.last_recv.get((nm, "x")) for nm in set(names)}
    u_x = np.asarray([-1 if x_of[nm] is None else x_of[nm] for nm in names], np.int64)
    # the die's slot state
    fill_op, free_op = np.full(S, -1, np.int64), np.full(S, -1, np.int64)
    slot_tag, slot_rec = np.full(S, -1, np.int64), np.full(S, -1, np.int64)
    for q, v in s.slot_fill.items():
        fill_op[q] = v
    for q, v in s.slot_free.items():
        free_op[q] = v
    for q, (c, _) in info.items():
        if c is not None:
            slot_tag[q] = b.layers[c.layer][0]
    for q in s.slot_fill_rec:
        slot_rec[q] = -2
    uses = s.slot_uses
    npre = sum(map(len, uses.values()))
    cap = npre + m + 1
    pool_op, pool_next = np.full(cap, -1, np.int64), np.full(cap, -1, np.int64)
    use_first, use_last = np.full(S, -1, np.int64), np.full(S, -1, np.int64)
    uses_on = np.zeros(S, np.bool_)
    npool = 0
    for q, lst in uses.items():
        uses_on[q] = True
        for op in lst:
            npool = k._use(q, op, use_first, use_last, pool_op, pool_next, npool, uses_on)
    # the transfers waiting for this die's side, per peer (as many as its run may pair)
    D = b.D
    ws_flat, ws_head, ws_end = _waiting(
        b.pending_send, [(p, die) for p in range(D)], peer[code == RECV], D
    )
    wr_flat, wr_head, wr_end = _waiting(
        b.pending_recv, [(die, p) for p in range(D)], peer[code == SEND], D
    )
    ws_head0, wr_head0 = ws_head.copy(), wr_head.copy()
    # room for the outputs
    nops = int(2 * len(xw) + 3 * len(gw) + (code == FREE).sum()) + int(
        (a["l_ptr"][row[lw] + 1] - a["l_ptr"][row[lw]]).sum() if len(lw) else 0
    )
    nx = int(max((a["l_lptr"][1:] - a["l_lptr"][:-1]).max(initial=0), 1))
    nbk = int(max((a["l_bptr"][1:] - a["l_bptr"][:-1]).max(initial=0), 1))
    E = 4 * m + cap
    z = np.empty
    out_i = (
        z(nops, np.int64), z(nops, np.int64), z(nops, np.int64), z(nops, np.int64),
        z(E, np.int64), z(E, np.int64), z(2 * m, np.int64), z(m, np.int64), z(m, np.int64),
        z(m, np.int64), z(m, np.int64), z(m * nx + m, np.int64), z(m * nx + m, np.int64),
        z(m * nbk, np.int64), z(m * nbk, np.int64), z(3 * m, np.int64), z(3 * m, np.int64),
        z(m, np.int64), z(m, np.int64), z(m, np.int64), z(m, np.int64), z(m, np.int64),
        z(m, np.int64), z(m, np.int64), z(m, np.int64), z(m, np.int64), z(m, np.int64),
        z(S + 1, np.int64), z(S + 1, np.int64), z((m, 3), np.int64), z((m, 3), np.int64),
        z((m, 4), np.int64),
    )  # fmt: skip
    out_f = (z(nops, np.float64),)
    lc = s.last_compute
    n, lc = k.relay(
        m, len(b.g.kind), die, code, slot, peer, row,
        a["x_res"], a["x_occ"], a["x_lat"], a["x_tag"], a["x_chg"],
        a["u_dur"], a["u_lk"], u_x, a["u_chg"],
        a["l_tag"], a["l_ptr"], a["l_kind"], a["l_dur"], a["l_res"], a["l_bptr"], a["l_bo"],
        a["l_lptr"], a["l_links"], a["l_chg"],
        fill_op, free_op, slot_tag, slot_rec, use_first, use_last, pool_op, pool_next, npool,
        uses_on, -1 if lc is None else lc,
        ws_flat[0::2].copy(), ws_flat[1::2].copy(), ws_head, ws_end,
        wr_flat[0::2].copy(), wr_flat[1::2].copy(), wr_head, wr_end, out_i, out_f,
    )  # fmt: skip
    n = n.tolist()
    append_run(b, s, rs, j - at, t, cols, n, out_i, out_f, row, j, a["u_hb"])
    # the die's state, as the reference leaves it
    s.last_compute = None if lc < 0 else int(lc)
    slots_back(b, s, rs, j - at, t, n, out_i, row, code, S, fill_op, free_op, slot_rec,
                use_first, uses_on, pool_op, pool_next)  # fmt: skip
    for p, k in enumerate((ws_head - ws_head0).tolist()):
        if k:
            b.pending_send[(p, die)].drop(k)
    for p, k in enumerate((wr_head - wr_head0).tolist()):
        if k:
            b.pending_recv[(die, p)].drop(k)
    left = out_i[31][: n[31]]
    if len(left):  # the run's transfers left waiting: per queue (in first-seen order) in order
        key = left[:, 0] * D + left[:, 1]
        u, first = np.unique(key, return_index=True)
        for kk in u[np.argsort(first)].tolist():
            grp = left[key == kk]
            c_, p = int(grp[0, 0]), int(grp[0, 1])
            q = b.pending_recv[(p, die)] if c_ == RECV else b.pending_send[(die, p)]
            q.extend_flat(grp[:, 2:4])
    if s.pending_h:
        for q in set(slot[gw].tolist()):
            s.pending_h.pop(q, None)
    return j + m


def _waiting(pending: dict[tuple[int, int], TransferQueue], keys: list[tuple[int, int]],
             peers: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The first transfers waiting on each key (per peer), as many as the run's ``peers``
    may take: flat ``hold, op`` pairs, each peer's start and end."""
    want = np.bincount(peers, minlength=D).tolist() if len(peers) else [0] * D
    parts = [np.zeros(0, np.int64)]
    ends = [0]
    for key, w in zip(keys, want, strict=True):
        q = pending.get(key)
        k = 0
        if q is not None and w:
            k = min(len(q), w)
            parts.append(q.first(k))
        ends.append(ends[-1] + k)
    bound = np.asarray(ends, np.int64)
    return np.concatenate(parts), bound[:-1].copy(), bound[1:].copy()  # heads move, ends not


rc.COMPILED_RUN[:] = [(wanted, run)]
relay_records.ENABLED[0] = offered
