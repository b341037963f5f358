"""The relay's kernel (numba): :func:`.relay_chain.relay_run`'s loop over a die's run, on arrays.

Imported only by :mod:`.relay_compiled`, and only when numba is installed. :func:`run_end`
finds where the reference's run ends (the first instruction it does not cover, or a ``gemm``
on a slot holding no micro-slice) and which fill each ``gemm`` reads; :func:`relay` then takes
the run's instructions in order, as the reference does, and writes what it appends: the new
ops' columns, the edge log and the chains in order, the fence's successors, the energy log,
the SRAM records, the slot fills and the transfers' pairings, as rows of arrays that
:mod:`.relay_compiled` appends to the builder's lists. The die's slot state (each slot's fill,
free, uses and fill record, the latest compute) comes in as arrays and goes out updated.

Instruction codes (``code``): 0 not covered, then the ones below; a ``gemm`` stands for its
``act`` and ``accum`` (the two entries after it are skipped).
"""

from __future__ import annotations

import numba
import numpy as np

# the helpers' compile options, the FSE-DP kernel's: cached, without reference counting (they
# allocate nothing, and :func:`relay`, their caller, holds every array they are passed; counted,
# each call copied and counted each array it takes: :mod:`.expand.fsedp_kernel`'s note)
from moec.backends.interp.expand.fsedp_kernel import NO_NRT

RECV, SEND, FREE, GEMM, LOAD = 1, 2, 3, 4, 5
#: op kinds (:mod:`.opgraph`'s)
COMPUTE, XFER, SYNC, DELAY = 0, 2, 3, 5


@numba.njit(cache=True)
def run_end(code, slot, has_c, fill_at):  # type: ignore[no-untyped-def]
    """The run's length from 0 (``has_c``: per slot whether it holds a micro-slice, updated;
    ``fill_at``: per slot its latest fill's entry, -1 before the run) and per entry, for a
    ``gemm``, the entry of the fill it reads (-1: before the run)."""
    m = code.shape[0]
    reads = np.full(m, -1, np.int64)
    r = 0
    while r < m:
        c = code[r]
        if c == 0:
            break
        s = slot[r]
        if c == GEMM:
            if not has_c[s]:
                break
            reads[r] = fill_at[s]
            r += 3
            continue
        if c == RECV or c == LOAD:
            has_c[s] = True
            fill_at[s] = r
        r += 1
    return r, reads


@numba.njit(cache=True)
def relay(  # type: ignore[no-untyped-def]
    m,
    base,
    die,
    code,
    slot,
    peer,
    row,
    x_res,
    x_occ,
    x_lat,
    x_tag,
    x_chg,
    u_dur,
    u_lk,
    u_x,
    u_chg,
    l_tag,
    l_ptr,
    l_kind,
    l_dur,
    l_res,
    l_bptr,
    l_bo,
    l_lptr,
    l_links,
    l_chg,
    fill_op,
    free_op,
    slot_tag,
    slot_rec,
    use_first,
    use_last,
    pool_op,
    pool_next,
    npool,
    uses_on,
    last_compute,
    ws_hold,
    ws_op,
    ws_head,
    ws_end,
    wr_hold,
    wr_op,
    wr_head,
    wr_end,
    out_i,
    out_f,
):
    """Take entries ``0 .. m-1`` (the run :func:`run_end` found). ``row``: per entry its
    template's row (a transfer's in ``x_*``, a slice compute's in ``u_*``, a load's in
    ``l_*``; ``*_chg``: its charges' entry in the caller's list). The slot state and the waiting transfers (``ws_*``: sends waiting for this die's
    recvs, per peer; ``wr_*``: recvs waiting for its sends) are updated in place. Returns the
    counts of each output (:data:`.relay_compiled.OUT`) and the latest compute."""
    (o_kind, o_res, o_layer, o_instr, e_src, e_dst, runs, fenced, since, log_op, log_row,
     lb_res, lb_n, back_op, back_row, a_tag, a_op, xu_tag, xu_op, xu_r, h_tag, h_op, h_row,
     fill_hold, fill_free, fill_slot, fill_r, pre_slot, pre_op, fix_send, fix_recv,
     new_pend) = out_i  # fmt: skip
    (o_dur,) = out_f
    n = np.zeros(32, np.int64)
    nop = 0
    r = 0
    while r < m:
        c = code[r]
        s = slot[r]
        if c == RECV or c == SEND:
            p = peer[r]
            t = row[r]
            if c == RECV:
                tag = x_tag[t]
                have = ws_head[p] < ws_end[p]
                a = free_op[s]
            else:
                tag = -1
                have = wr_head[p] < wr_end[p]
                a = fill_op[s]
            if have:
                if c == RECV:
                    hold, op = ws_hold[ws_head[p]], ws_op[ws_head[p]]
                    ws_head[p] += 1
                    k = n[30]
                    fix_recv[k, 0], fix_recv[k, 1], fix_recv[k, 2] = hold, op, tag
                    n[30] += 1
                else:
                    hold, op = wr_hold[wr_head[p]], wr_op[wr_head[p]]
                    wr_head[p] += 1
                    k = n[29]
                    fix_send[k, 0], fix_send[k, 1], fix_send[k, 2] = hold, op, r
                    n[29] += 1
                _fence(hold, fenced, n)
                if a >= 0 and a != hold:
                    _edge(a, hold, e_src, e_dst, n)
            else:
                hold = base + nop
                _fence(hold, fenced, n)
                if a >= 0:
                    _edge(a, hold, e_src, e_dst, n)
                o_kind[nop], o_dur[nop], o_res[nop], o_layer[nop], o_instr[nop] = (
                    XFER, x_occ[t], x_res[t], tag, r,
                )  # fmt: skip
                nop += 1
                if x_lat[t] <= 0.0:
                    op = hold
                else:
                    op = hold + 1
                    o_kind[nop], o_dur[nop], o_res[nop], o_layer[nop], o_instr[nop] = (
                        DELAY, x_lat[t], -1, tag, r,
                    )  # fmt: skip
                    nop += 1
                    runs[n[6]], runs[n[6] + 1] = hold, 1
                    n[6] += 2
                lb_res[n[10]], lb_n[n[10]] = x_res[t], r
                n[10] += 1
                log_op[n[9]], log_row[n[9]] = hold, x_chg[t]
                n[9] += 1
                k = n[31]
                new_pend[k, 0], new_pend[k, 1], new_pend[k, 2], new_pend[k, 3] = c, p, hold, op
                n[31] += 1
            if c == SEND:
                npool = _use(s, op, use_first, use_last, pool_op, pool_next, npool, uses_on)
            else:
                a_tag[n[15]], a_op[n[15]] = tag, hold
                a_tag[n[15] + 1], a_op[n[15] + 1] = tag, op
                n[15] += 2
                _fill(s, op, tag, hold, r, n, fill_op, slot_tag, use_first, use_last, uses_on,
                      fill_hold, fill_free, fill_slot, fill_r, slot_rec)  # fmt: skip
            since[n[8]] = op
            n[8] += 1
        elif c == FREE:
            tag = slot_tag[s]
            op = base + nop
            o_kind[nop], o_dur[nop], o_res[nop], o_layer[nop], o_instr[nop] = (
                SYNC, 0.0, -1, tag, r,
            )  # fmt: skip
            nop += 1
            if tag >= 0:
                a_tag[n[15]], a_op[n[15]] = tag, op
                n[15] += 1
            _fence(op, fenced, n)
            if fill_op[s] >= 0:
                _edge(fill_op[s], op, e_src, e_dst, n)
            if uses_on[s]:
                q = use_first[s]
                while q >= 0:
                    _edge(pool_op[q], op, e_src, e_dst, n)
                    q = pool_next[q]
            use_first[s], use_last[s], uses_on[s] = -1, -1, False
            free_op[s] = op
            k = slot_rec[s]
            slot_rec[s] = -1
            if k >= 0:
                fill_free[k] = op
            elif k == -2:
                pre_slot[n[27]], pre_op[n[27]] = s, op
                n[27] += 1
            since[n[8]] = op
            n[8] += 1
        elif c == GEMM:
            t = row[r]
            op = base + nop
            _fence(op, fenced, n)
            if last_compute >= 0:
                _edge(last_compute, op, e_src, e_dst, n)
            if fill_op[s] >= 0:
                _edge(fill_op[s], op, e_src, e_dst, n)
            if u_x[t] >= 0:
                _edge(u_x[t], op, e_src, e_dst, n)
            lk = u_lk[t]
            for q in range(3):
                o_kind[nop], o_dur[nop], o_res[nop], o_layer[nop], o_instr[nop] = (
                    COMPUTE, u_dur[t, q], die, lk, r + q,
                )  # fmt: skip
                nop += 1
            runs[n[6]], runs[n[6] + 1] = op, 2
            n[6] += 2
            log_op[n[9]], log_row[n[9]] = op, u_chg[t]
            n[9] += 1
            for q in range(3):
                a_tag[n[15] + q], a_op[n[15] + q] = lk, op + q
            n[15] += 3
            xu_tag[n[17]], xu_op[n[17]], xu_r[n[17]] = lk, op, r
            n[17] += 1
            h_tag[n[20]], h_op[n[20]], h_row[n[20]] = lk, op, r
            n[20] += 1
            last_compute = op + 2
            npool = _use(s, op + 2, use_first, use_last, pool_op, pool_next, npool, uses_on)
            since[n[8]] = op + 2
            n[8] += 1
            r += 3
            continue
        else:  # LOAD
            t = row[r]
            tag = l_tag[t]
            first = base + nop
            a0, a1 = l_ptr[t], l_ptr[t + 1]
            for q in range(a0, a1):
                o_kind[nop], o_dur[nop], o_res[nop], o_layer[nop], o_instr[nop] = (
                    l_kind[q], l_dur[q], l_res[q], tag, r,
                )  # fmt: skip
                nop += 1
            op = first + a1 - a0 - 1
            runs[n[6]], runs[n[6] + 1] = first, a1 - a0 - 1
            n[6] += 2
            for q in range(l_bptr[t], l_bptr[t + 1]):
                back_op[n[12]], back_row[n[12]] = first + l_bo[q], q
                n[12] += 1
            log_op[n[9]], log_row[n[9]] = first, l_chg[t]
            n[9] += 1
            for q in range(l_lptr[t], l_lptr[t + 1]):
                lb_res[n[10]], lb_n[n[10]] = l_links[q], r
                n[10] += 1
            a_tag[n[15]], a_op[n[15]] = tag, first
            a_tag[n[15] + 1], a_op[n[15] + 1] = tag, op
            n[15] += 2
            _fence(first, fenced, n)
            if free_op[s] >= 0:
                _edge(free_op[s], first, e_src, e_dst, n)
            _fill(s, op, tag, first, r, n, fill_op, slot_tag, use_first, use_last, uses_on,
                  fill_hold, fill_free, fill_slot, fill_r, slot_rec)  # fmt: skip
            since[n[8]] = op
            n[8] += 1
        r += 1
    n[0] = nop
    n[1] = npool
    return n, last_compute


@numba.njit(**NO_NRT)
def _use(s, op, use_first, use_last, pool_op, pool_next, npool, uses_on):  # type: ignore[no-untyped-def]
    """``slot_uses[s].append(op)`` (a new list if the slot has none); the pool's new size."""
    pool_op[npool] = op
    pool_next[npool] = -1
    if uses_on[s] and use_last[s] >= 0:
        pool_next[use_last[s]] = npool
    else:
        use_first[s] = npool
    use_last[s] = npool
    uses_on[s] = True
    return npool + 1


@numba.njit(**NO_NRT)
def _fill(  # type: ignore[no-untyped-def]
    s, op, tag, first, r, n, fill_op, slot_tag, use_first, use_last, uses_on, fill_hold,
    fill_free, fill_slot, fill_r, slot_rec,
):  # fmt: skip
    """Slot ``s`` filled by ``op`` (a ``recv`` or ``load`` of layer ``tag``, its first op
    ``first``, entry ``r`` of the run): no uses yet, and the next fill record (its free -1
    until the slot is freed)."""
    fill_op[s] = op
    slot_tag[s] = tag
    use_first[s], use_last[s], uses_on[s] = -1, -1, True
    k = n[23]
    fill_hold[k], fill_free[k], fill_slot[k], fill_r[k] = first, -1, s, r
    n[23] += 1
    slot_rec[s] = k


@numba.njit(**NO_NRT)
def _edge(a, b, e_src, e_dst, n):  # type: ignore[no-untyped-def]
    """The edge log's next edge, ``a`` before ``b``."""
    e_src[n[4]], e_dst[n[4]] = a, b
    n[4] += 1


@numba.njit(**NO_NRT)
def _fence(op, fenced, n):  # type: ignore[no-untyped-def]
    """``op`` waits for the die's fence (its edge written by the driver)."""
    fenced[n[7]] = op
    n[7] += 1


#: Fibonacci hashing's multiplier (2**64 over the golden ratio, odd)
_GOLDEN = np.uint64(11400714819323198485)


@numba.njit(**NO_NRT)
def distinct(flat, table, shift, first, inv):  # type: ignore[no-untyped-def]
    """The distinct values of ``flat`` (non-negative) in first-seen order, by one pass over an
    open-addressing hash table (``table``: ``2**(64 - shift)`` entries of -1, at least twice
    ``len(flat)``): their number; each one's first place in ``first`` and per entry its
    value's number in ``inv``."""
    mask = table.shape[0] - 1
    nd = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        k = np.int64((np.uint64(v) * _GOLDEN) >> shift)
        while True:
            d = table[k]
            if d < 0:
                table[k] = nd
                first[nd] = i
                inv[i] = nd
                nd += 1
                break
            if flat[first[d]] == v:
                inv[i] = d
                break
            k = (k + 1) & mask
    return nd


#: record codes the static checks read besides the relay's (:mod:`.relay_records`')
ACT, ACCUM = 6, 7


@numba.njit(**NO_NRT)
def _chained_head(full, slot, x, m):  # type: ignore[no-untyped-def]
    """Whether entry ``x`` is a ``load`` that starts a streamed micro-slice: ``load, gemm,
    act, accum, free`` on one slot."""
    if x + 4 >= m or full[x] != LOAD:
        return False
    s = slot[x]
    for q, want in ((1, GEMM), (2, ACT), (3, ACCUM), (4, FREE)):
        if full[x + q] != want or slot[x + q] != s:
            return False
    return True


@numba.njit(**NO_NRT)
def checked(kind, slot, trip, trip_bytes, of_record, full, code):  # type: ignore[no-untyped-def]
    """:func:`.relay_records._checked` in one pass over a record stream (``kind``, ``slot``,
    ``trip``: its records; ``trip_bytes``: per trip its bytes; ``of_record``: per record kind
    its code): the relay's codes into ``code`` (``full``: room for the unchecked codes)."""
    m = kind.shape[0]
    for r in range(m):
        full[r] = of_record[kind[r]]
    for r in range(m):
        f = full[r]
        c = f
        if f == GEMM:
            c = 0
            if r + 2 < m and full[r + 1] == ACT and full[r + 2] == ACCUM:
                if slot[r + 1] == slot[r] and slot[r + 2] == slot[r]:
                    c = GEMM
        elif f == ACT or f == ACCUM:
            c = 0
        elif f == RECV or f == SEND or f == LOAD:
            if trip_bytes[trip[r]] == 0:
                c = 0
            if f == LOAD:
                if r + 4 >= m:
                    c = 0
                elif _chained_head(full, slot, r, m) and _chained_head(full, slot, r + 5, m):
                    c = 0
        code[r] = c


@numba.njit(**NO_NRT)
def stops(code, out):  # type: ignore[no-untyped-def]
    """:func:`.relay_records.stops` in one pass from the end, into ``out``."""
    n = code.shape[0]
    nxt = n
    for k in range(n - 1, -1, -1):
        if code[k] == 0:  # a taken gemm's act or accum is not a stop
            if not (k >= 1 and code[k - 1] == GEMM) and not (k >= 2 and code[k - 2] == GEMM):
                nxt = k
        out[k] = nxt
