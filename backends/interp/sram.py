"""SRAM over a timing run: slot holds and the activation buffers of each die's MoE layers.

:mod:`moec.ir.activations` states the model (sizes; ``docs/isa.md``, "SRAM: slots and
activations"); the timing builder records, per die and MoE layer, which ops read, receive,
accumulate and send which tokens (:class:`LayerActs`) and each slot's fill and free;
:func:`sram_peaks` turns those into allocation and release events at the ops' simulated times
and finds each die's peak (releases before allocations at equal times).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import chain, compress, filterfalse
from operator import attrgetter, itemgetter, methodcaller

import numpy as np

from moec.backends.interp.layer_acts import _SET, LayerActs, _pair_columns
from moec.ir.activations import x_row_bytes, y_row_bytes
from moec.ir.stream.program import MoEDecl, TokenSet
from moec.ir.target import Target

#: an item's op and token set: ``(op, tokens)`` items; ``recv_y``'s arrival op and token set
#: (``(hold, op, tokens, bytes)``)
_OP2, _Y_SET = itemgetter(1), itemgetter(2)
#: items as columns: their ops (int64), their token sets
_Columns = tuple[np.ndarray, list[TokenSet]]
_RANGES = attrgetter("ranges")
_KNOWN = methodcaller("known_indices")


def _ranges(sets: list[TokenSet]) -> tuple[np.ndarray, np.ndarray]:
    """Token indices covered by ``sets`` (one entry per set and token) and, per entry, the
    position of its set in ``sets``: the ranges expanded in one vectorized step (the range
    bounds are read in C, through ``chain``: a set may hold hundreds of ranges)."""
    ranges = list(map(_RANGES, sets))  # read in C, once
    counts = np.fromiter(map(len, ranges), dtype=np.int64, count=len(sets))
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bounds = np.fromiter(
        chain.from_iterable(chain.from_iterable(ranges)), dtype=np.int64, count=2 * total
    ).reshape(total, 2)
    firsts = bounds[:, 0]
    length = bounds[:, 1] - firsts + 1
    owner = np.repeat(np.arange(len(sets), dtype=np.int64), counts)
    offset = np.cumsum(length) - length  # where each range starts in the flat index
    idx = np.arange(int(length.sum()), dtype=np.int64) + np.repeat(firsts - offset, length)
    return idx, np.repeat(owner, length)


class TokenIndex:
    """Each distinct token set's indices, expanded once (:func:`_ranges`) and reused.

    The rules below ask for the tokens of the same sets many times (an expert's slices share
    one set; a die's ``x`` uses are read for its home mask, its first and last uses, and its
    receptions), and expanding a set's ranges from Python tuples is most of their cost. One
    index lives for one :func:`sram_peaks` call."""

    __slots__ = ("_arr", "_sets")

    def __init__(self) -> None:
        #: each set's tokens by the set object's id (equal sets are often distinct objects,
        #: and comparing their ranges costs more than expanding them twice)
        self._arr: dict[int, np.ndarray] = {}
        #: the sets expanded, kept alive (so that their ids stay theirs)
        self._sets: list[TokenSet] = []

    def arrays(self, sets: list[TokenSet], distinct: bool = False) -> list[np.ndarray]:
        """Each set's tokens, one array per set, or per distinct set object (``distinct``:
        in the order they first appear); lookups by id, in C."""
        arr = self._arr
        ids = list(map(id, sets))
        by_id = dict(zip(ids, sets, strict=True))
        fresh = list(map(by_id.__getitem__, filterfalse(arr.__contains__, by_id)))
        if fresh:
            self._expand(fresh)
        return list(map(arr.__getitem__, by_id if distinct else ids))

    def distinct_tokens(self, sets: list[TokenSet]) -> np.ndarray:
        """The tokens of each distinct set object of ``sets``, concatenated in no particular
        order (what a mask needs): the sets not yet expanded as the one array expanding them
        gives, not set by set."""
        arr = self._arr
        by_id = dict(zip(map(id, sets), sets, strict=True))
        pieces = list(map(arr.__getitem__, filter(arr.__contains__, by_id)))
        fresh = list(map(by_id.__getitem__, filterfalse(arr.__contains__, by_id)))
        if fresh:
            pieces.append(self._expand(fresh))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def _expand(self, fresh: list[TokenSet]) -> np.ndarray:
        """Put ``fresh`` (sets not in the index yet) into it: a set's tokens its kept array
        (:meth:`~moec.ir.stream.values.TokenSet.known_indices`), else expanded, each a view of
        one array of all the expanded sets' tokens, set after set; every fresh set's tokens
        (the kept arrays, then the expanded ones)."""
        known = list(map(_KNOWN, fresh))
        kept = [k for k in known if k is not None]
        if kept:
            pairs = list(zip(fresh, known, strict=True))
            self._arr.update((id(ts), k) for ts, k in pairs if k is not None)
            self._sets += [ts for ts, k in pairs if k is not None]
            rest = [ts for ts, k in pairs if k is None]
            return np.concatenate(kept + ([self._expand(rest)] if rest else []))
        flat, owner = _ranges(fresh)
        # each set's size from its entries (``ts.size`` would add its ranges in Python); the
        # views made in C (``np.split`` makes each in Python)
        ends = np.cumsum(np.bincount(owner, minlength=len(fresh)))
        starts = np.r_[0, ends[:-1]]
        views = map(flat.__getitem__, map(slice, starts.tolist(), ends.tolist()))
        self._arr.update(zip(map(id, fresh), views, strict=True))
        self._sets += fresh
        return flat

    def tokens(self, sets: list[TokenSet]) -> np.ndarray:
        """The first of :func:`_ranges`'s arrays for ``sets`` (their tokens, set after set)."""
        if not sets:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.arrays(sets))

    def ranges(self, sets: list[TokenSet]) -> tuple[np.ndarray, np.ndarray]:
        """What :func:`_ranges` gives for ``sets``: the same arrays, from the cache."""
        if not sets:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        arrays = self.arrays(sets)
        sizes = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        return np.concatenate(arrays), np.repeat(np.arange(len(sets), dtype=np.int64), sizes)


def _mask(sets: list[TokenSet], n: int, index: TokenIndex | None = None) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    if sets:  # each set object once (a token set twice is harmless; comparing sets costs more)
        m[(index or TokenIndex()).distinct_tokens(sets)] = True
    return m


def _first_last(
    items: _Columns, times: np.ndarray | Mapping[int, int], n: int, first: bool,
    index: TokenIndex | None = None,
) -> np.ndarray:  # fmt: skip
    """Per token, the earliest (``first``) or latest ``times[op]`` of the items (columns: ops,
    token sets) covering it.

    Many ops share one token set (every slice of an expert reads the same tokens), so each
    distinct set's earliest or latest time is found first, in Python, and the sets are then
    spread over the tokens in one ``np.minimum.at`` / ``np.maximum.at``: min and max are exact,
    so the result is the same as per item."""
    best: dict[TokenSet, float] = {}
    get = best.get
    prev: TokenSet | None = None
    cur = 0.0
    ops, sets = items
    if isinstance(times, np.ndarray):  # the items' times in one gather
        at = times[ops].tolist()
    else:
        at = list(map(times.__getitem__, ops.tolist()))
    # runs of one set object (an expert's slices share theirs) are reduced before the dict
    for t, ts in zip(at, sets, strict=True):
        if ts is prev:
            if t < cur if first else t > cur:
                cur = t
            continue
        if prev is not None:
            old = get(prev)
            if old is None or (cur < old if first else cur > old):
                best[prev] = cur
        prev, cur = ts, t
    if prev is not None:
        old = get(prev)
        if old is None or (cur < old if first else cur > old):
            best[prev] = cur
    out = np.full(n, np.inf if first else -np.inf)
    idx, owner = (index or TokenIndex()).ranges(list(best))
    vals = np.asarray(list(best.values()), dtype=np.float64)[owner]
    (np.minimum if first else np.maximum).at(out, idx, vals)
    return out


def _entries(
    items: _Columns, pos: dict[int, int], times: np.ndarray, index: TokenIndex
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One row per (item, token) of ``items`` (columns: ops, token sets): the token, the
    item's program position on the die, its ``times[op]``, and the item's index."""
    ops, sets = items
    idx, owner = index.ranges(sets)
    p = np.fromiter(map(pos.__getitem__, ops.tolist()), dtype=np.int64, count=len(sets))
    t = times[ops]
    return idx, p[owner], t[owner], owner


def _groups(
    tok: np.ndarray, pos: np.ndarray, opens: np.ndarray, ends: np.ndarray, restarts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each row's group and each group's token, rows taken in (token, program position)
    order: a token's rows form one group, except that an opening row (``opens``) that may
    restart one (``restarts``) right after a row that ends one (``ends``) starts a new group.
    Rows before a token's first opening get group -1."""
    order = np.lexsort((pos, tok))
    t_s, o_s = tok[order], opens[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = t_s[1:] != t_s[:-1]
    after_end = np.zeros(order.size, dtype=bool)
    after_end[1:] = ends[order][:-1]
    start = o_s & (first | (after_end & restarts[order]))
    gid = np.cumsum(start) - 1
    g_tok = t_s[start]
    ok = gid >= 0
    ok[ok] = g_tok[gid[ok]] == t_s[ok]
    row_gid = np.full(order.size, -1, dtype=np.int64)
    row_gid[order[ok]] = gid[ok]
    return row_gid, g_tok


def _x_per_reception(
    acts: LayerActs, pos: dict[int, int], start: np.ndarray, end: np.ndarray, xb: int,
    index: TokenIndex,
) -> tuple[list[float], list[int]] | None:  # fmt: skip
    """Received inputs when a die receives a token again after computing with it (chunked
    dispatch): one row per stretch, from the first reception's link hold to the later of its
    receptions' arrivals and its uses before the next reception after a ``gemm``. None when no
    token is received again after a ``gemm`` of it (a relay die that also computes a token
    receives it twice before either use: the first-to-last rule applies)."""
    r_tok, r_pos, r_arr, r_item = _entries(_pair_columns(acts.recv_x), pos, end, index)
    holds = start[np.fromiter(map(itemgetter(0), acts.recv_x_start), np.int64)]
    r_open = holds[r_item]
    uses = acts.x_use_columns()
    u_tok, u_pos, u_end, u_item = _entries(uses, pos, end, index)
    is_gemm = np.isin(uses[0], acts.h_array()[0::3])[u_item]
    nr, nu = r_tok.size, u_tok.size
    opens = np.r_[np.ones(nr, dtype=bool), np.zeros(nu, dtype=bool)]
    gid, g_tok = _groups(
        np.r_[r_tok, u_tok], np.r_[r_pos, u_pos], opens, np.r_[np.zeros(nr, bool), is_gemm],
        opens,
    )  # fmt: skip
    if g_tok.size == np.unique(g_tok).size:
        return None
    n = g_tok.size
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    g = gid[:nr]
    np.minimum.at(lo, g, r_open)
    np.maximum.at(hi, g, r_arr)
    gu = gid[nr:]
    used = gu >= 0
    np.maximum.at(hi, gu[used], u_end[used])
    return lo.tolist() + hi.tolist(), [xb] * n + [-xb] * n


def _y_per_send(
    acts: LayerActs, pos: dict[int, int], start: np.ndarray, end: np.ndarray,
    remote: np.ndarray, hi: float, yb: int, index: TokenIndex,
) -> tuple[list[float], list[int]] | None:  # fmt: skip
    """Other dies' partial outputs when a die accumulates into a token's again after sending
    it (chunked dispatch): one row per stretch, from its first write (an ``accum``'s start, a
    ``recv y``'s arrival) to the end of its last ``send y`` before the next ``accum`` after a
    send; a stretch never sent is held to the end of the layer (``hi``). Only ``remote``
    tokens (not the die's own). None when no token is accumulated into after a send of it (a
    relay die forwarding several blocks of a token: the first-to-last rule applies)."""
    writes = [(acts.accum_columns(), start), (_recv_y_columns(acts), end)]
    parts = [(_entries(items, pos, t, index), k) for k, (items, t) in enumerate(writes) if items[1]]
    if not parts:
        return None
    w_tok = np.concatenate([p[0] for p, _ in parts])
    w_pos = np.concatenate([p[1] for p, _ in parts])
    w_t = np.concatenate([p[2] for p, _ in parts])
    is_accum = np.concatenate([np.full(p[0].size, k == 0) for p, k in parts])
    c_tok, c_pos, c_end, _ = _entries(_pair_columns(acts.send_y), pos, end, index)
    keep_w, keep_c = remote[w_tok], remote[c_tok]
    w_tok, w_pos, w_t, is_accum = w_tok[keep_w], w_pos[keep_w], w_t[keep_w], is_accum[keep_w]
    c_tok, c_pos, c_end = c_tok[keep_c], c_pos[keep_c], c_end[keep_c]
    nw, nc = w_tok.size, c_tok.size
    opens = np.r_[np.ones(nw, dtype=bool), np.zeros(nc, dtype=bool)]
    gid, g_tok = _groups(
        np.r_[w_tok, c_tok], np.r_[w_pos, c_pos], opens, ~opens,
        np.r_[is_accum, np.zeros(nc, dtype=bool)],
    )  # fmt: skip
    if g_tok.size == np.unique(g_tok).size:
        return None
    n = g_tok.size
    lo, close = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(lo, gid[:nw], w_t)
    gc = gid[nw:]
    sent = gc >= 0
    np.maximum.at(close, gc[sent], c_end[sent])
    close = np.where(np.isfinite(close), np.maximum(close, lo), hi)
    return lo.tolist() + close.tolist(), [yb] * n + [-yb] * n


def _repeats(tokens: np.ndarray) -> bool:
    """Whether some token index appears more than once."""
    return tokens.size > 1 and bool((np.bincount(tokens) > 1).any())


def _reopened(
    opens: _Columns, ends: _Columns, pos: dict[int, int], n: int, index: TokenIndex,
    among: np.ndarray | None = None,
) -> bool:  # fmt: skip
    """Whether some token (of ``among``) has an item of ``opens`` after an item of ``ends``
    (each columns: ops, token sets) in the die's program order (``pos``). :func:`_groups` starts a token's second group only at
    an opening row right after an ending row of that token, so when this is False
    :func:`_x_per_reception` (opens: receptions, ends: ``gemm`` uses) and :func:`_y_per_send`
    (opens: ``accum``, ends: ``send y``) return None; it costs two passes over the distinct
    sets instead of a sort of every (item, token) row."""
    last_open = _first_last(opens, pos, n, False, index)
    first_end = _first_last(ends, pos, n, True, index)
    later = last_open > first_end
    return bool((later if among is None else later & among).any())


def _activation_events(
    acts: LayerActs, tokens: int, hidden: int, dtype: str, start: np.ndarray, end: np.ndarray,
    span: tuple[float, float], index: TokenIndex,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Allocation (+bytes) and release (-bytes) events of one die's activations of one layer
    (the rules of :mod:`moec.ir.activations`); ``span``: the earliest start and latest end of
    ``acts.ops``."""
    # the events in pieces (arrays), concatenated once, in the order the rules add them (the
    # order ties are broken in)
    t_parts: list[np.ndarray] = []
    d_parts: list[np.ndarray] = []
    if not acts.has_ops():
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    lo, hi = span
    xb, yb = x_row_bytes(hidden, dtype), y_row_bytes(hidden)
    n = tokens
    received = _mask(list(map(_SET, acts.recv_x)), n, index)
    # each x read's set once per run of a compiled relay (not a set per op), for the mask;
    # the reads as columns only where the received tokens need them
    home = _mask(acts.x_use_sets_once(), n, index) & ~received
    uses = acts.x_use_columns() if acts.recv_x else (np.zeros(0, np.int64), [])
    if acts.recv_y:
        sent_y = _mask(list(map(_SET, acts.send_y)), n, index)
        home |= _mask(list(map(_Y_SET, acts.recv_y)), n, index) & ~sent_y & ~received
    k = int(home.sum())
    if k:
        t_parts.append(np.array([lo, hi], dtype=np.float64))
        d_parts.append(np.array([k * (xb + yb), -k * (xb + yb)], dtype=np.int64))
    # some token received (sent) in more than one block
    many_x = bool(acts.recv_x) and _repeats(index.tokens(list(map(_SET, acts.recv_x))))
    many_y = bool(acts.send_y) and _repeats(index.tokens(list(map(_SET, acts.send_y))))
    pos = {op: i for i, op in enumerate(acts.op_array().tolist())} if many_x or many_y else {}
    # a token received again after a use, or written again after a send (chunked dispatch):
    # a row per stretch; otherwise (a relay that also computes the token) first to last
    if many_x:
        is_gemm = np.isin(uses[0], acts.h_array()[0::3])
        gemm_uses = uses[0][is_gemm], list(compress(uses[1], is_gemm.tolist()))
        many_x = _reopened(_pair_columns(acts.recv_x), gemm_uses, pos, n, index)
    if many_y:
        many_y = _reopened(acts.accum_columns(), _pair_columns(acts.send_y), pos, n, index, ~home)
    x_rows = _x_per_reception(acts, pos, start, end, xb, index) if many_x else None
    y_rows = _y_per_send(acts, pos, start, end, ~home, hi, yb, index) if many_y else None
    if x_rows is not None:
        t_parts.append(np.asarray(x_rows[0], dtype=np.float64))
        d_parts.append(np.asarray(x_rows[1], dtype=np.int64))
    elif acts.recv_x:  # other dies' inputs: first recv to last use
        first = _first_last(_pair_columns(acts.recv_x_start), start, n, True, index)
        last = _first_last(uses, end, n, False, index)
        arrived = _first_last(_pair_columns(acts.recv_x), end, n, True, index)
        idx = np.nonzero(received)[0]
        t_parts += [first[idx], np.maximum(last[idx], arrived[idx])]
        d_parts.append(np.repeat(np.array([xb, -xb], dtype=np.int64), idx.size))
    if y_rows is not None:
        t_parts.append(np.asarray(y_rows[0], dtype=np.float64))
        d_parts.append(np.asarray(y_rows[1], dtype=np.int64))
    elif acts.recv_x or acts.recv_y:  # other dies' partial outputs: first write to last send
        first = np.minimum(
            _first_last(acts.accum_columns(), start, n, True, index),
            _first_last(_recv_y_columns(acts), end, n, True, index),
        )
        last = _first_last(_pair_columns(acts.send_y), end, n, False, index)
        idx = np.nonzero(~home & np.isfinite(first))[0]
        f = first[idx]
        t_parts += [f, np.where(np.isfinite(last[idx]), np.maximum(last[idx], f), hi)]
        d_parts.append(np.repeat(np.array([yb, -yb], dtype=np.int64), idx.size))
    if acts.recv_y:  # landing buffer while the block crosses the link: (+, -) pairs
        y = np.asarray([(hold, op, nbytes) for hold, op, _, nbytes in acts.recv_y], np.int64)
        _pairs(y, start, end, t_parts, d_parts)
    h = acts.h_array()
    if h.size:  # each slice's h, from its gemm's start to its accum's end: (+, -) pairs
        _pairs(h.reshape(-1, 3), start, end, t_parts, d_parts)
    if not t_parts:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    return np.concatenate(t_parts), np.concatenate(d_parts)


def _recv_y_columns(acts: LayerActs) -> _Columns:
    """The y blocks received as columns: arrival ops, token sets."""
    y = acts.recv_y
    return np.fromiter(map(_OP2, y), np.int64, len(y)), list(map(_Y_SET, y))


def _pairs(
    rows: np.ndarray, start: np.ndarray, end: np.ndarray, t_parts: list[np.ndarray],
    d_parts: list[np.ndarray],
) -> None:  # fmt: skip
    """Append one (+bytes, -bytes) pair of events per row ``(open op, close op, bytes)``: at
    the open op's start and the close op's end, pair after pair."""
    t_parts.append(np.stack([start[rows[:, 0]], end[rows[:, 1]]], axis=1).ravel())
    d_parts.append(np.stack([rows[:, 2], -rows[:, 2]], axis=1).ravel())


def sram_peaks(
    num_dies: int,
    pools: dict[int, int],
    fills: Sequence[int],
    acts: dict[tuple[int, int], LayerActs],
    layers: Sequence[MoEDecl],
    start: Sequence[float],
    end: Sequence[float],
    makespan: float,
    closed: Sequence[int] = (),
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per die: peak SRAM (slots + activations), its slot and activation parts at the peak,
    and the peak of slots alone.

    ``pools``: slot bytes per die; ``fills``: per slot fill, flat, ``die, fill op, free op``
    (free op -1: held to the end); ``closed``: more fills, the same way (their place among
    ``fills`` does not matter: a die's fills are all one slot size, so equal times give equal
    events); ``acts``: per (die, layer index) what it did.
    """
    D = num_dies
    start_a, end_a = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    times: dict[int, list[np.ndarray]] = defaultdict(list)
    slot_d: dict[int, list[np.ndarray]] = defaultdict(list)
    act_d: dict[int, list[np.ndarray]] = defaultdict(list)
    if fills or closed:
        # each fill is two events, (fill start, +size) and (free end or makespan, -size), in
        # fills order within each die (the order ties are broken in)
        f_die, f_op, f_free = _fill_columns(fills, closed)
        f_t = np.empty((f_die.size, 2), dtype=np.float64)
        f_t[:, 0] = start_a[f_op]
        f_t[:, 1] = np.where(f_free >= 0, end_a[f_free], makespan)
        pool = np.zeros(max([D, *pools]) + 1, dtype=np.int64)
        for d, nb in pools.items():
            pool[d] = nb
        sizes = pool[f_die]
        f_s = np.stack([sizes, -sizes], axis=1)
        order = np.argsort(f_die, kind="stable")
        dies, first = np.unique(f_die[order], return_index=True)
        for die, rows in zip(dies.tolist(), np.split(order, first[1:]), strict=True):
            times[die].append(f_t[rows].ravel())
            slot_d[die].append(f_s[rows].ravel())
            act_d[die].append(np.zeros(2 * rows.size, dtype=np.int64))
    index = TokenIndex()
    for (die, k), la in sorted(acts.items()):
        m = layers[k]
        span = (0.0, 0.0)
        if la.has_ops():
            ops = la.op_array()
            span = (float(start_a[ops].min()), float(end_a[ops].max()))
        ts, ds = _activation_events(la, m.tokens, m.hidden, m.dtype, start_a, end_a, span, index)
        times[die].append(ts)
        act_d[die].append(ds)
        slot_d[die].append(np.zeros(ds.size, dtype=np.int64))
    peak, slots, act, slot_peak = [0] * D, [0] * D, [0] * D, [0] * D
    for die, tv in times.items():
        s_arr = np.concatenate(slot_d[die])
        a_arr = np.concatenate(act_d[die])
        order = _event_order(np.concatenate(tv), s_arr + a_arr)  # releases first at equal times
        cs, ca = np.cumsum(s_arr[order]), np.cumsum(a_arr[order])
        total = cs + ca
        j = int(np.argmax(total))
        peak[die], slots[die], act[die] = int(total[j]), int(cs[j]), int(ca[j])
        slot_peak[die] = int(cs.max())
    return peak, slots, act, slot_peak


def _event_order(times: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The events by time, then by byte delta (releases first), then as given:
    ``np.lexsort((deltas, times))``, as one stable sort of complex numbers (numpy orders them
    by real part, then imaginary part), a quarter of lexsort's time on a die's events. The
    deltas are exact as floats (bytes, far under 2**53); lexsort itself past that."""
    if deltas.size and int(np.abs(deltas).max()) >= 1 << 53:
        return np.lexsort((deltas, times))
    z = np.empty(times.size, np.complex128)
    z.real = times
    z.imag = deltas
    return np.argsort(z, kind="stable")


def _fill_columns(
    fills: Sequence[int], closed: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`sram_peaks`'s ``fills`` then ``closed`` (each flat: die, fill op, free op) as
    three columns: die, fill op, free op (-1: none)."""
    flat = np.concatenate([np.array(fills, np.int64), np.array(closed, np.int64)]).reshape(-1, 3)
    return flat[:, 0], flat[:, 1], flat[:, 2]


def sram_overflow(
    target: Target,
    peak: Sequence[int],
    slots: Sequence[int],
    acts: Sequence[int],
    part: str = "",
) -> str | None:
    """Why a run did not fit SRAM (the die furthest past it: its peak, split into slots and
    activations at that moment), or None when every die's peak fits. A run that does not fit
    reports no latency unless the user allows the overflow (``--allow-overflow``). ``part``
    names the layer the peak is in, when the run knows it (a layer-by-layer run)."""
    over = [(pk - target.die(d).sram_bytes, d) for d, pk in enumerate(peak)]
    worst, d = max(over, key=lambda x: (x[0], -x[1]), default=(0, 0))
    if worst <= 0:
        return None
    at = f" in {part}" if part else ""
    return (
        f"does not fit SRAM: die {d} holds {peak[d]} bytes at its peak{at} ({slots[d]} of slots, "
        f"{acts[d]} of activations), target {target.name} has {target.die(d).sram_bytes} bytes "
        "per die (--allow-overflow runs it anyway)"
    )
