"""A layer's expert declarations made in one go (``Lowering.expert_tensors`` in
``compiler/lower/common.py``), and shared between the programs of a slice choice
(``lowerings_shared``): the same program, to the printed byte, as one ``expert_tensor``
call per expert, with and without experts offloaded to the host tier."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from slice_cases import bench_case

from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower.common import LayerPlan, Lowering, lowerings_shared
from moec.ir.errors import MoecError
from moec.ir.stream.printer import print_program
from moec.ir.stream.program import HOST_CHANNEL


def _one_by_one(self: Lowering, plan: LayerPlan, channels: Sequence[int]) -> None:
    for e, ch in enumerate(channels):
        self.expert_tensor(plan, e, ch)


@pytest.mark.parametrize("strategy", ["fsedp", "fsedp-r5", "ep"])
@pytest.mark.parametrize("resident", [None, "0.5"])
def test_bulk_declarations_print_as_one_call_per_expert(
    strategy: str, resident: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, ref, trace = bench_case("qwen3-30b-a3b", "npu8-hbm", (), 256, layers=2)
    opts = {"resident": resident} if resident is not None else {}
    with lowerings_shared():
        shared = [lower_strategy(module, ref, strategy, opts, trace) for _ in range(2)]
    alone = lower_strategy(module, ref, strategy, opts, trace)
    monkeypatch.setattr(Lowering, "expert_tensors", _one_by_one)
    reference = lower_strategy(module, ref, strategy, opts, trace)
    text = print_program(reference)
    for p in [*shared, alone]:
        assert p.tensors == reference.tensors
        assert print_program(p) == text
    on_host = sum(t.channel == HOST_CHANNEL for t in reference.tensors)
    assert on_host == (0 if resident is None else 2 * 64)  # half of 128 experts, 2 layers
    # inside the block the two programs hold the same declarations, outside each its own
    assert all(a is b for a, b in zip(shared[0].tensors, shared[1].tensors, strict=True))
    assert not any(a is b for a, b in zip(shared[0].tensors, alone.tensors, strict=True))


def test_a_routing_is_checked_once_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import moec.compiler.lower.common as common

    module, ref, trace = bench_case("qwen3-30b-a3b", "npu8-hbm", (), 256, layers=2)
    _, _, other = bench_case("qwen3-30b-a3b", "npu8-hbm", (), 256, layers=2)
    checked: list[object] = []
    real = common.validate

    def counting(routing: object, *args: object, **kw: object) -> None:
        checked.append(routing)
        real(routing, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(common, "validate", counting)
    with lowerings_shared():
        for slices in (4, 8, 4):
            lower_strategy(module, ref, "fsedp", {"slices": str(slices)}, trace, fit_only=True)
        lower_strategy(module, ref, "fsedp", {}, other, fit_only=True)  # another trace object
        assert checked == [trace, other]
        # a trace that does not fit is refused inside the block as outside
        _, _, eight = bench_case("qwen3-30b-a3b", "fsedp-4x4", (), 256, layers=2)  # 16 dies
        with pytest.raises(MoecError, match="home"):
            lower_strategy(module, ref, "fsedp", {}, eight)
    lower_strategy(module, ref, "fsedp", {}, trace, fit_only=True)  # outside: checked again
    assert checked == [trace, other, eight, trace]
