"""Whether FSE-DP's slice choice writes its predictions' streams (``writes_ahead``): a matter
of cost only, the choice and everything it reports are the same either way."""

from __future__ import annotations

import pytest
from slice_cases import phi_case

import moec.fsedp_slices as fs
from moec.compiler.lower import lower as lower_strategy
from moec.ir.stream import TargetRef
from moec.ir.target import load_target


@pytest.mark.parametrize(
    ("strategy", "dies", "ahead"),
    [
        ("fsedp", (2, 2), True),
        ("fsedp-paired", (4, 4), True),
        ("fsedp", (8, 8), False),
        ("fsedp-paired", (8, 8), False),
        ("fsedp-r5", (8, 8), True),
        ("fsedp-naive", (8, 8), True),
    ],
)
def test_streams_are_written_ahead_on_small_packages_and_for_r5_and_naive_rules(
    strategy: str, dies: tuple[int, int], ahead: bool
) -> None:
    module, _, _ = phi_case(64.0, 16)
    overrides = (("dies_x", dies[0]), ("dies_y", dies[1]))
    target = load_target("fsedp-2x2", dict(overrides))
    program = lower_strategy(module, TargetRef("fsedp-2x2", overrides), strategy, {})
    assert (target.num_dies <= fs.AHEAD_DIES) == (dies != (8, 8))
    assert fs.writes_ahead(program, target) is ahead


@pytest.mark.parametrize("strategy", ["fsedp", "fsedp-paired"])
def test_the_choice_is_the_same_with_and_without_streams_written_ahead(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, ref, trace = phi_case(64.0, 256)
    base = lower_strategy(module, ref, strategy, {}, trace)
    choices = []
    for ahead in (True, False):
        monkeypatch.setattr(fs, "writes_ahead", lambda p, t, a=ahead: a)
        choices.append(fs.choose_slices(module, ref, strategy, {}, trace, base))
    with_, without = choices
    assert with_ is not None and without is not None and len(with_.measured) >= 1
    assert with_ == without  # count, bounds, predictions, measurements, stopped timings
