"""The compiled relay's output written into the builder: a run's ops, edges, charges, bytes,
SRAM records and slot state from :func:`.relay_kernel.relay`'s arrays.

:func:`.relay_compiled.run` hands a run's output here: :func:`append_run` appends it to the
op graph's columns and the builder's logs in the order the reference
(:func:`.relay_chain.relay_run`) appends them (kind, dur and res packed as arrays,
:mod:`.packed_ops`; the charges logged as arrays, :meth:`.energy.EnergyLedger.log_indexed`;
the ops' instructions as places in the record stream, :class:`.instr_column.InstrColumn`),
and :func:`slots_back` leaves the die's slot maps as the reference does.
"""

from __future__ import annotations

from array import array
from collections import deque
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from moec.backends.interp import packed_ops, relay_records
from moec.backends.interp.opgraph import Builder, DieState
from moec.ir.stream.program import HOST_CHANNEL

if TYPE_CHECKING:
    from moec.backends.interp.relay_compiled import _Tables

RECV, LOAD = relay_records.RECV, relay_records.LOAD


def append_run(b: Builder, s: DieState, rs: relay_records.RecordStream, e: int, t: _Tables,
               cols: dict[str, Any], n: list[int], out_i: tuple[Any, ...],
               out_f: tuple[Any, ...], row: np.ndarray, j: int, hb: np.ndarray) -> None:  # fmt: skip
    """Append the kernel's output (of the run from ``ins[j]``, entry ``e`` of its record
    stream ``rs``) to the builder: the ops (their instructions as places in ``rs``), the
    edges and chains, the fence's edges, the charges, the bytes, the SRAM records and fills
    (``hb``: per slice compute template, its h bytes), the pairings' renames."""
    g, die = b.g, s.die
    nop = n[0]
    packed_ops.pack(g, out_i[0][:nop], out_f[0][:nop], out_i[1][:nop])
    g.die += [die] * nop
    g.instr.placed(rs, out_i[3][:nop] + e)
    g.layer.frombytes(out_i[2][:nop].tobytes())
    if n[29]:  # a send names its transfer
        hold, op, r = out_i[29][: n[29]].T.tolist()
        sent = (out_i[29][: n[29], 2] + e).tolist()
        for at in (hold, op):
            g.instr.point(at, rs, sent)
            deque(map(g.die.__setitem__, at, repeat(die)), 0)
    if n[30]:  # a recv tags its transfer with its layer, if the send did not
        fix = out_i[30][: n[30]]
        layer = np.frombuffer(g.layer, np.int64)  # a view: dropped before g.layer grows
        fix = fix[layer[fix[:, 1]] < 0]
        layer[fix[:, 0]] = fix[:, 2]
        layer[fix[:, 1]] = fix[:, 2]
        del layer
    g.src.frombytes(out_i[4][: n[4]].tobytes())
    g.dst.frombytes(out_i[5][: n[4]].tobytes())
    g.runs.frombytes(out_i[6][: n[6]].tobytes())
    if s.fence is not None:
        g.src += array("q", (s.fence,)) * n[7]
        g.dst.frombytes(out_i[7][: n[7]].tobytes())
    _log_energy(b, t, out_i[9][: n[9]], out_i[10][: n[9]])
    nbytes = cols["nbytes"][j:]
    _add_bytes(b.link_bytes, out_i[11][: n[10]], nbytes[out_i[12][: n[10]]])
    lw = np.flatnonzero(cols["code"][j : j + len(row)] == LOAD)
    if len(lw):
        ch = cols["peer"][j + lw]
        host = ch == HOST_CHANNEL
        if host.any():
            b.host_bytes[die] += int(nbytes[lw[host]].sum())
        dram: dict[int, int] = {}
        _add_bytes(dram, ch[~host], nbytes[lw[~host]])
        for c, v in dram.items():
            b.dram_bytes[c] += v
    if n[12]:
        g.back_of.update(zip((out_i[13][: n[12]]).tolist(),
                             map(t.l_back.__getitem__, out_i[14][: n[12]].tolist()), strict=True))  # fmt: skip
    since = s.since_signal  # typed from here on, as a slice run leaves it
    if type(since) is list:
        since = s.since_signal = array("q", since)
    since.frombytes(out_i[8][: n[8]].tobytes())
    _acts(b, die, rs, e, t, n, out_i, row, hb)
    t.fill_base = len(b.fills)
    if n[23]:  # flat: die, fill op, free op (-1: not freed yet)
        flat = np.empty((n[23], 3), np.int64)
        flat[:, 0], flat[:, 1], flat[:, 2] = die, out_i[23][: n[23]], out_i[24][: n[23]]
        b.fills.frombytes(flat.tobytes())


def _log_energy(b: Builder, t: _Tables, firsts: np.ndarray, blocks: np.ndarray) -> None:
    """The run's charges (at ops ``firsts``, blocks ``blocks`` of ``t.blocks``) logged as
    arrays: each of ``t.blocks`` registered with the ledger once (its index kept in
    ``t.ledger_ix`` while the ledger keeps its blocks), its ledger index taken per charge."""
    ledger = b.energy
    if t.ledger != (ledger, ledger.epoch):  # another ledger, or its blocks forgotten
        t.ledger, t.ledger_ix = (ledger, ledger.epoch), np.zeros(0, np.int64)
    known = len(t.ledger_ix)
    if known < len(t.blocks):
        new = [ledger.register(blk) for blk in t.blocks[known:]]
        t.ledger_ix = np.concatenate([t.ledger_ix, np.asarray(new, np.int64)])
    ledger.log_indexed(firsts, t.ledger_ix[blocks])


def _add_bytes(into: dict[int, int], keys: np.ndarray, nbytes: np.ndarray) -> None:
    """``into[k] += bytes`` for each pair in turn (the sums, keys in first-seen order)."""
    if not len(keys):
        return
    u, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    sums = np.zeros(len(u), np.int64)
    np.add.at(sums, inv.reshape(-1), nbytes)
    for q in np.argsort(first, kind="stable").tolist():
        key = int(u[q])
        into[key] = into.get(key, 0) + int(sums[q])


def _acts(b: Builder, die: int, rs: relay_records.RecordStream, e: int, t: _Tables,
          n: list[int], out_i: tuple[Any, ...], row: np.ndarray, hb: np.ndarray) -> None:  # fmt: skip
    """The run's SRAM records (from entry ``e`` of ``rs``), per layer in the order the run
    first touched it; the computes' tokens read from the records, handed to the layer's acts
    as columns (an op array, a list of token sets: no ``(op, tokens)`` pair per op)."""
    tags, ops = out_i[15][: n[15]], out_i[16][: n[15]]
    if not len(tags):
        return
    xt, xo, xr = out_i[17][: n[17]], out_i[18][: n[17]], out_i[19][: n[17]]
    u, first = np.unique(tags, return_index=True)
    one = len(u) == 1
    for tag in u[np.argsort(first, kind="stable")].tolist():
        la = b.acts.get((die, tag)) or b.layer_acts(die, tag)
        la.add_ops(ops.copy() if one else ops[tags == tag])  # not a view of the run's buffer
        sel = slice(None) if one else xt == tag
        gops, grs = xo[sel], xr[sel]
        if not len(gops):
            continue
        toks = rs.tokens(grs + e)
        same = (rs.trip[grs + e] == rs.trip[grs + e + 2]).all()  # a slice's gemm and accum
        la.add_x_uses(gops.copy(), toks, rs.tokens_once(grs + e))  # ops: not a view of the buffer
        la.add_accums(gops + 2, toks if same else rs.tokens(grs + e + 2))
        la.add_h(np.stack((gops, gops + 2, hb[row[grs]]), axis=1).ravel())


def slots_back(b: Builder, s: DieState, rs: relay_records.RecordStream, e: int, t: _Tables,
               n: list[int], out_i: tuple[Any, ...], row: np.ndarray, code: np.ndarray, S: int,
               fill_op: np.ndarray, free_op: np.ndarray, slot_rec: np.ndarray,
               use_first: np.ndarray, uses_on: np.ndarray, pool_op: np.ndarray,
               pool_next: np.ndarray) -> None:  # fmt: skip
    """The die's slot maps as the reference leaves them after the run (from entry ``e`` of
    ``rs``)."""
    pre, fills_ = s.slot_fill_rec, b.fills
    for q, op in zip(out_i[27][: n[27]].tolist(), out_i[28][: n[27]].tolist(), strict=True):
        fills_[pre.pop(q)] = op  # a fill from before the run, freed in it
    fills, frees = fill_op.tolist(), free_op.tolist()
    for q in range(S):
        if fills[q] >= 0:
            s.slot_fill[q] = fills[q]
        if frees[q] >= 0:
            s.slot_free[q] = frees[q]
        k = int(slot_rec[q])
        if k >= 0:
            pre[q] = t.fill_base + 3 * k + 2
        elif k == -1:
            pre.pop(q, None)
        if uses_on[q]:
            lst, p = [], int(use_first[q])
            while p >= 0:
                lst.append(int(pool_op[p]))
                p = int(pool_next[p])
            s.slot_uses[q] = lst
        else:
            s.slot_uses.pop(q, None)
    # each slot's last fill in the run: what it holds, at which precision
    last: dict[int, int] = dict(
        zip(out_i[25][: n[23]].tolist(), out_i[26][: n[23]].tolist(), strict=True)
    )
    for q, r in last.items():
        hid = t.x[5][row[r]] if code[r] == RECV else t.ld[2][row[r]]
        s.slot_fill_info[q] = (rs.content(e + r), t.held[hid][1])
