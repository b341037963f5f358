"""A lone streamed micro-slice inside a relay run: the records' codes and the Python relay agree.

The relay (:func:`~moec.backends.interp.relay_chain.relay_run`) takes a lone streamed
micro-slice (``load``, ``gemm``, ``act``, ``accum``, ``free`` on one slot, the next entry not
another) like any load and leaves a run of them to :mod:`~moec.backends.interp.slice_chain`
(:func:`~moec.backends.interp.relay_chain.chains_follow`); a record stream's codes
(:func:`~moec.backends.interp.relay_records._checked`) stop a compiled run at the same loads.
The builds are compared with and without the relay in ``tests/test_relay_chain.py`` and
compiled against Python in ``tests/test_relay_compiled.py``."""

from __future__ import annotations

import numpy as np
import pytest

from moec.backends.interp import relay_records as rr
from moec.backends.interp.relay_chain import chains_follow
from moec.ir.stream import Accum, Act, Free, Gemm, Instr, Load, Send, SliceRef, TokenSet

TS = TokenSet.span(0, 4)
NB = 4096


def _stream(seed: int) -> tuple[list[Instr], np.ndarray, np.ndarray, np.ndarray]:
    """Random blocks (a streamed micro-slice, a load alone, a slot's compute, a send, a free)
    as instructions and as a record stream's relay codes, slots and bytes."""
    rng = np.random.default_rng(seed)
    ins: list[Instr] = []
    rows: list[tuple[int, int, int]] = []  # code, slot, bytes
    for _ in range(int(rng.integers(5, 60))):
        what, s = int(rng.integers(0, 5)), int(rng.integers(0, 3))
        c = SliceRef("moe0", int(rng.integers(0, 4)), 0)
        if what <= 1:  # a streamed micro-slice, twice as often as the others
            ins += [Load(s, 0, c, NB), Gemm(s, TS), Act(s, TS), Accum(s, TS), Free(s)]
            rows += [(rr.LOAD, s, NB), (rr.GEMM, s, 0), (rr.ACT, s, 0), (rr.ACCUM, s, 0),
                     (rr.FREE, s, 0)]  # fmt: skip
        elif what == 2:
            ins.append(Load(s, 0, c, NB))
            rows.append((rr.LOAD, s, NB))
        elif what == 3:
            ins += [Gemm(s, TS), Act(s, TS), Accum(s, TS), Send(1, NB, slot=s)]
            rows += [(rr.GEMM, s, 0), (rr.ACT, s, 0), (rr.ACCUM, s, 0), (rr.SEND, s, NB)]
        else:
            ins.append(Free(s))
            rows.append((rr.FREE, s, 0))
    code, slot, nbytes = (np.asarray(col, np.int64) for col in zip(*rows, strict=True))
    return ins, code, slot, nbytes


@pytest.mark.parametrize("seed", range(12))
def test_records_stop_a_run_at_the_loads_the_python_relay_stops_at(seed: int) -> None:
    ins, full, slot, nbytes = _stream(seed)
    n = len(ins)
    code = rr._checked(full, slot, nbytes)
    loads = [k for k in range(n) if type(ins[k]) is Load and k + 4 < n]
    stopped = [k for k in loads if code[k] == 0]
    assert stopped == [k for k in loads if chains_follow(ins, k, n)]
    assert [k for k in loads if code[k] == rr.LOAD] == [
        k for k in loads if not chains_follow(ins, k, n)
    ]


def test_a_lone_chain_is_relayed_and_a_run_of_them_is_not() -> None:
    c = SliceRef("moe0", 0, 0)
    chain = [Load(1, 0, c, NB), Gemm(1, TS), Act(1, TS), Accum(1, TS), Free(1)]
    ins = [Free(0), *chain, Free(2), *chain, *chain, Free(2)]
    assert not chains_follow(ins, 1, len(ins))  # followed by a free
    assert chains_follow(ins, 7, len(ins)) and not chains_follow(ins, 12, len(ins))
