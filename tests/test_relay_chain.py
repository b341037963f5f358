"""The relay (:mod:`moec.backends.interp.relay_chain`) builds the graph the handlers build.

Its reference is the handlers one instruction at a time (with the slice unit, as it stands for
it): the same ops, successor lists in the same order, dependency counts, SRAM records, energy
charges and transfer pairings, compared field by field on the builder, not only on the timeline.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from moec.backends.interp import opgraph, packed_ops
from moec.backends.interp.event_loop import chained_successors
from moec.backends.interp.opgraph import Builder
from moec.backends.interp.relay_chain import starts_chain
from moec.backends.interp.timing import run_timing
from moec.ir.errors import ScheduleError
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
    load_program,
)
from moec.ir.target import Target, load_target

GOLDEN = Path(__file__).parent / "golden" / "msp"
FSEDP = sorted(p.name for p in GOLDEN.glob("tiny*.fsedp*.msp"))


def _built(p: Program, target: Target, relay: bool, monkeypatch: pytest.MonkeyPatch) -> Builder:
    with monkeypatch.context() as m:
        if not relay:
            m.setattr(opgraph, "RELAY", [])
        b = Builder(p, target)
        b.build()
    return b


def _state(b: Builder) -> str:
    """Everything the build leaves for the event loop, the SRAM accounting and the energy."""
    g, e = b.g, b.energy
    e.flush()
    packed_ops.unpack(g)  # a compiled relay's runs as the lists the reference has
    return repr((
        g.kind, g.dur, g.res, chained_successors(len(g.kind), g.runs, g.src, g.dst), g.die, g.instr, g.layer,
        sorted(g.island_of.items()), sorted(g.back_of.items()), _fills(b),
        list(b.acts.items()), e.joules, e.by_op, sorted(b.link_bytes.items()), b.dram_bytes,
        b.host_bytes, sorted((k, list(v)) for k, v in b.pending_send.items()),
        sorted((k, list(v)) for k, v in b.pending_recv.items()), b.signal_event,
    ))  # fmt: skip


def _fills(b: Builder) -> list[tuple[int, ...]]:
    """The slot fills (die, fill op, free op), ``fills`` and ``closed_fills`` together in op
    order: where a fill is listed is not read (:func:`~moec.backends.interp.sram.sram_peaks`),
    and a lone streamed micro-slice's goes to one or the other as the relay or
    :mod:`~moec.backends.interp.slice_chain` adds it."""
    flat = [*b.fills, *b.closed_fills]
    return sorted(zip(flat[0::3], flat[1::3], flat[2::3], strict=True))


def _same_with_and_without(p: Program, t: Target, monkeypatch: pytest.MonkeyPatch) -> Builder:
    fast = _built(p, t, True, monkeypatch)
    ref = _built(p, t, False, monkeypatch)
    assert len(fast.g.kind) == len(ref.g.kind) > 0
    assert _state(fast) == _state(ref)
    return fast


def _covered(p: Program, t: Target, monkeypatch: pytest.MonkeyPatch) -> list[Instr]:
    """The instructions the relay added (a run from j to its return)."""
    real = opgraph.RELAY[0]
    out: list[Instr] = []

    def counted(b: Builder, s: opgraph.DieState, ins: list[Instr], j: int) -> int:
        k = real[0](b, s, ins, j)
        out.extend(ins[j:k])
        return k

    monkeypatch.setattr(opgraph, "RELAY", [(counted, *real[1:])])
    Builder(p, t).build()
    return out


@pytest.mark.parametrize("name", FSEDP)
def test_relay_builds_every_fsedp_golden_as_the_handlers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moec.run import run_program

    res = run_program(
        load_program(str(GOLDEN / name)), routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN)
    )
    p, t = res.expanded, res.timeline.target
    assert p is not None
    _same_with_and_without(p, t, monkeypatch)
    # the path is taken: every slot transfer, and every free but a streamed micro-slice's
    # (:mod:`.slice_chain`'s), goes through the relay
    covered = {id(i) for i in _covered(p, t, monkeypatch)}
    relayed = [
        i for st in p.streams for k, i in enumerate(st.instrs)
        if (type(i) in (Recv, Send) and i.slot is not None)
        or (type(i) is Free and not (k >= 4 and starts_chain(st.instrs, k - 4, k + 1)))
    ]  # fmt: skip
    assert relayed and all(id(i) in covered for i in relayed)


# a hand-made two-die exchange: every branch of the relay and each way it hands back
HIDDEN, FFN = 64, 128
BYTES = 3 * HIDDEN * FFN * 2


def _exchange() -> Program:
    layer = MoEDecl("moe0", 4, 1, HIDDEN, FFN, 8, "x", "y")
    e = [SliceRef("moe0", k, 0) for k in range(4)]
    ts, one = TokenSet.span(0, 4), TokenSet.span(2, 3)
    x = Block("moe0", "x", TokenSet.span(4, 8))

    def unit(s: int, a: TokenSet, b: TokenSet, c: TokenSet) -> list[Instr]:
        return [Gemm(s, a), Act(s, b), Accum(s, c)]

    d0: list[Instr] = [
        Recv(1, 32, block=x), Signal("go"),  # a block: the handlers take it
        Load(0, 0, e[0], BYTES), Send(1, BYTES, slot=0), Load(1, 0, e[1], BYTES),
        *unit(0, ts, ts, ts), Free(0),  # a streamed micro-slice: the chain takes it
        Recv(1, BYTES, slot=0, content=e[2]),  # this side comes first: it makes the transfer
        *unit(0, ts, one, ts), Send(1, BYTES, slot=1), Free(1), Free(0),
        Load(1, 0, e[3], BYTES), Gemm(1, ts), Act(1, ts), Accum(1, ts), Free(1),
        Signal("done"),
    ]  # fmt: skip
    d1: list[Instr] = [
        Send(0, 32, block=x), Wait("go", 1),
        Recv(0, BYTES, slot=0, content=e[0]), *unit(0, one, one, one),
        Load(1, 1, e[2], BYTES), Send(0, BYTES, slot=1),
        Recv(0, BYTES, slot=2, content=e[1]), Free(0), Free(1), *unit(2, ts, ts, one), Free(2),
        Free(3),  # a slot never filled
        Signal("done"),
    ]  # fmt: skip
    return Program(
        "relay", TargetRef("fsedp-2x2", (("ideal", "true"),)), layers=[layer],
        layouts=[SliceLayout.even("moe0", FFN, 1)],
        slots=[SlotPool(d, 4, BYTES) for d in range(4)],
        streams=[DieStream(0, d0), DieStream(1, d1), DieStream(2, []), DieStream(3, [])],
    )  # fmt: skip


@pytest.mark.parametrize("latency", [0.0, 5e-6])
def test_relay_builds_a_hand_made_exchange_as_the_handlers(
    latency: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = load_target("fsedp-2x2", {"ideal": "true"})
    t = replace(t, links=tuple(replace(lk, latency_s=latency) for lk in t.links))
    p = _exchange()
    _same_with_and_without(p, t, monkeypatch)
    covered = _covered(p, t, monkeypatch)
    # all but the block transfers: die 0's recv and frees of s0, s1, s0 and of the lone
    # streamed micro-slice at its end (:func:`.relay_chain.chains_follow`), die 1's two recvs
    # and four frees
    assert sum(type(i) is Recv for i in covered) == 3 and sum(type(i) is Free for i in covered) == 8
    assert run_timing(p, t).makespan > 0


def test_relay_takes_a_lone_streamed_slice_and_leaves_a_run_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = load_target("fsedp-2x2", {"ideal": "true"})
    p = _exchange()
    d0 = p.streams[0].instrs
    lone = d0[-6:-1]  # die 0's last load, gemm, act, accum, free on s1
    assert type(lone[0]) is Load and type(lone[-1]) is Free
    assert {id(i) for i in lone} <= {id(i) for i in _covered(p, t, monkeypatch)}
    ts = TokenSet.span(0, 4)
    e = SliceRef("moe0", 3, 0)
    again = [Load(2, 0, e, BYTES), Gemm(2, ts), Act(2, ts), Accum(2, ts), Free(2)]
    d0[-1:-1] = again  # now two one after the other: slice_chain's run
    _same_with_and_without(p, t, monkeypatch)
    covered = {id(i) for i in _covered(p, t, monkeypatch)}
    assert not covered & {id(i) for i in [*lone, *again]}
    before = d0[-12]  # the free of s0 before them: the relay's run ends after it
    assert type(before) is Free and before.slot == 0 and id(before) in covered


def test_relay_leaves_an_empty_slot_to_the_handlers_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = _exchange()
    d1 = p.streams[1].instrs
    k = next(j for j, i in enumerate(d1) if type(i) is Free)
    ts = TokenSet.span(0, 1)
    d1[k + 2 : k + 2] = [Gemm(3, ts), Act(3, ts), Accum(3, ts)]  # s3 was never filled
    t = load_target("fsedp-2x2", {"ideal": "true"})
    errors = []
    for relay in (True, False):
        with pytest.raises(ScheduleError) as e:
            _built(p, t, relay, monkeypatch)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "needs a micro-slice in s3" in errors[0]
