"""The whole-expert expansion's shortcuts (issue 19) against their references: the same program.

:func:`~moec.backends.interp.expand.streaming.stream_runs` makes a die's instructions a column
at a time; :func:`~.streaming.stream_slices_reference` one at a time. :func:`token_sets` finds
the runs of many arrays at once; :func:`token_set` one array at a time. The load order's greedy
pick keeps a heap per channel; the reference below scans every remaining item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from moec.backends.interp.expand import streaming, token_set, token_sets
from moec.backends.interp.expand.load_order import _list_schedule
from moec.ir.stream import Program, load_program
from moec.ir.stream.program import Free, Load, SliceRef, TokenSet

GOLDEN = Path(__file__).parent / "golden" / "msp"
STRATEGIES = ("ep", "tp", "hydra", "eplb")
TINY = sorted(
    p.name for p in GOLDEN.glob("tiny*.msp") if p.name.split(".")[1].split("-")[0] in STRATEGIES
)


def _shape(p: Program) -> list[tuple[int, list[str], list[int]]]:
    """Each die's instructions (their reprs, which show every field and the class) and which
    are one object (the index of each instruction's first occurrence in its stream)."""
    out = []
    for st in p.streams:
        first: dict[int, int] = {}
        out.append(
            (
                st.die,
                [repr(i) for i in st.instrs],
                [first.setdefault(id(i), n) for n, i in enumerate(st.instrs)],
            )
        )
    return out


def _expanded(
    program: Program, target: object, routings: object, monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> tuple[Program, int]:  # fmt: skip
    """The expansion with runs of ``batch`` slices or more by the column path, the rest one
    slice at a time, and how many runs took the column path."""
    from moec.backends.interp.expand import expand_program

    runs = [0]
    real = streaming.make

    def counted(cls: type, n: int, *columns: object) -> list[object]:
        runs[0] += cls is Load
        return real(cls, n, *columns)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(streaming, "make", counted)
        m.setattr(streaming, "BATCH", batch)
        p = expand_program(program, target, routings)  # type: ignore[arg-type]
    return p, runs[0]


def _check_same(
    program: Program, target: object, routings: object, mp: pytest.MonkeyPatch, batch: int
) -> None:  # fmt: skip
    fast, runs = _expanded(program, target, routings, mp, batch)
    ref, none = _expanded(program, target, routings, mp, 1 << 30)
    assert runs > 0 and none == 0  # both paths were taken
    assert _shape(fast) == _shape(ref)


@pytest.mark.parametrize("name", TINY)
def test_column_streams_match_the_reference_on_every_golden(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moec.backends.interp.simulate import check_routings, prepare
    from moec.ir.routing_synth import parse_routing_spec

    program = load_program(str(GOLDEN / name))
    target, _ = prepare(program, None, str(GOLDEN), False)
    spec = parse_routing_spec("synth:zipf=1.0,seed=0")
    shapes = [(m.experts, m.top_k) for m in program.layers]
    trace = spec.make(shapes, program.layers[0].tokens, target.num_dies)  # type: ignore[union-attr]
    # every run by columns: a tiny layer's runs are shorter than BATCH
    _check_same(program, target, check_routings(program, target, trace), monkeypatch, 1)


@pytest.mark.parametrize("strategy", [*STRATEGIES, "tp{order=balanced}", "hydra{split=2}"])
def test_column_streams_match_the_reference_on_real_layers(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two layers of DeepSeek-MoE-16B (shared experts, dozens of slices per expert) on 3x3."""
    from moec.backends.interp.simulate import check_routings, prepare
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.compiler.lower import lower, parse_strategy
    from moec.ir.routing_synth import parse_routing_spec
    from moec.ir.stream import TargetRef

    bm = load_bench_model("deepseek-moe-16b")
    target_ref = TargetRef("fsedp-3x3", ())
    name, options = parse_strategy(strategy)
    spec = parse_routing_spec("synth:zipf=1.0,seed=0")
    trace = spec.make(bm.layer_shapes()[:2], 64, 9, model=bm.name)  # type: ignore[union-attr]
    program = lower(truncate(bm.module, 2), target_ref, name, options, trace)
    target, _ = prepare(program, None, None, False)
    routings = check_routings(program, target, trace)
    _check_same(program, target, routings, monkeypatch, streaming.BATCH)


def test_make_sets_every_field_or_refuses() -> None:
    got = streaming.make(SliceRef, 2, ["moe0", "moe1"], [3, None], [0, 7])
    assert got == [SliceRef("moe0", 3, 0), SliceRef("moe1", None, 7)]
    assert [repr(r) for r in got] == [repr(SliceRef("moe0", 3, 0)), repr(SliceRef("moe1", None, 7))]
    assert streaming.make(Free, 1, [4], [None]) == [Free(4)]
    with pytest.raises(TypeError, match="Free has 2 fields, make\\(\\) got 1"):
        streaming.make(Free, 1, [4])
    with pytest.raises(TypeError, match="TokenSet is not a dataclass with slots"):
        streaming.make(TokenSet, 1, [()])


def test_token_sets_match_token_set_one_array_at_a_time() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        arrays = [
            np.unique(rng.integers(0, 40, size=int(rng.integers(0, 14)))).astype(np.int64)
            for _ in range(int(rng.integers(0, 7)))
        ]
        got, want = token_sets(arrays), [token_set(a) for a in arrays]
        assert got == want
        assert [ts.size for ts in got] == [len(a) for a in arrays]
        assert [hash(ts) for ts in got] == [hash(ts) for ts in want]


def _schedule_reference(
    work: Sequence[tuple[int, int, int, np.ndarray]], timeline: tuple, greedy: bool
) -> tuple:  # fmt: skip
    """The load order's list schedule by scans: of the dies for the one that frees first, and
    (``greedy``) of every remaining item of it for its pick (first least wins)."""
    chan_free, die_free = dict(timeline[0]), dict(timeline[1])
    load, busy = timeline[2], timeline[3]
    remaining = {c: 0.0 for c in chan_free}
    pending: dict[int, list[int]] = {}
    for i, (d, _, ch, _) in enumerate(work):
        remaining[ch] += load[i]
        pending.setdefault(d, []).append(i)
    out: dict[int, list[int]] = {d: [] for d in pending}
    while pending:
        d = min(pending, key=lambda x: (die_free[x], x))
        now = die_free[d]
        i = pending[d][0]
        if greedy:
            i = min(
                pending[d],
                key=lambda i: (max(now, chan_free[work[i][2]]), -remaining[work[i][2]], work[i][1]),
            )
        ch = work[i][2]
        start = max(now, chan_free[ch])
        chan_free[ch] = start + load[i]
        die_free[d] = start + busy[i]
        remaining[ch] -= load[i]
        out[d].append(i)
        pending[d].remove(i)
        if not pending[d]:
            del pending[d]
    span = max([*chan_free.values(), *die_free.values()], default=0.0)
    return span, [i for d in sorted(out) for i in out[d]]


@pytest.mark.parametrize("seed", range(40))
def test_load_order_matches_the_scans_of_every_die_and_item(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dies, channels = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    n = int(rng.integers(0, 30))
    # repeated experts and coarse times, so that ties are common
    work = [
        (int(rng.integers(dies)), int(rng.integers(8)), int(rng.integers(channels)), np.zeros(0))
        for _ in range(n)
    ]
    load = [float(rng.integers(1, 4)) for _ in work]
    busy = [max(x, float(rng.integers(1, 5))) for x in load]
    timeline = (
        {c: float(rng.integers(0, 3)) for c in range(channels)},
        {d: float(rng.integers(0, 3)) for d in range(dies)},
        load,
        busy,
    )
    for greedy in (True, False):
        span, order = _list_schedule(work, timeline, greedy)
        ref_span, ref_order = _schedule_reference(work, timeline, greedy)
        assert span == ref_span
        assert [id(w) for w in order] == [id(work[i]) for i in ref_order]
