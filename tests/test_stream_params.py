"""Typed runtime-policy parameters (``moec.ir.stream.params``): the text form is unchanged, the
typed view has the family's types and defaults, and a wrong type, length or range is a verifier
error at the parameter's file:line:col."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moec.ir.errors import Location, ProgramError
from moec.ir.stream import parse_program, print_program, strategy_params, verify_program
from moec.ir.stream.params import EPLBParams, EPParams, FSEDPParams, TPParams
from moec.ir.stream.verify import resolve_target

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = next(  # the ISA reference's main example (the online-choice one has no static part)
    b
    for b in re.findall(r"```msp\n(.*?)```", (ROOT / "docs" / "isa.md").read_text(), re.S)
    if 'program "isa-example"' in b
)
FILE = "prog.msp"


def at(text: str, needle: str) -> Location:
    pos = text.index(needle)
    line = text.count("\n", 0, pos) + 1
    return Location(FILE, line, pos - (text.rfind("\n", 0, pos) + 1) + 1)


def fails(text: str, message: str, where: str) -> None:
    with pytest.raises(ProgramError) as info:
        verify_program(parse_program(text, FILE))
    assert message in info.value.message, info.value.message
    assert info.value.where == at(text, where)


def edit(old: str, new: str) -> str:
    assert old in EXAMPLE
    return EXAMPLE.replace(old, new, 1)


def test_typed_view_of_the_example() -> None:
    p = parse_program(EXAMPLE, FILE)
    r = p.runtime[0]
    typed = strategy_params(r, p.layers[0], resolve_target(p))
    assert typed == FSEDPParams(trajectory=(0, 1, 3, 2), order="paired", r5=False, slack=0.2)
    assert typed is not None and typed.rules == "r1-r4" and typed.closed  # defaults
    assert isinstance(typed.slack, float) and typed.channels is None
    assert r.params["slack"] == 0.2 and print_program(p) == EXAMPLE  # text form as written


@pytest.mark.parametrize(
    ("old", "new", "message", "where"),
    [
        ("param r5 = false", "param r5 = 1", "param r5 must be true or false, found 1", "r5 = 1"),
        ("param slack = 0.2", "param slack = 1.5", "param slack must be a number in 0..1", "slack"),
        ('param order = "paired"', 'param order = "hot"',
         "param order must be one of natural, paired, balanced, found 'hot'", "order"),
        ("[0, 1, 3, 2]", "[0, 1, 3, 9]",
         "param trajectory must be a list of 4 integers in 0..3, found [0, 1, 3, 9]", "trajectory"),
        ("[0, 1, 3, 2]", "[0, 1, 3]", "must be a list of 4 integers in 0..3", "trajectory"),
        ("[0, 1, 3, 2]", "[0, 3, 1, 2]",
         "param trajectory [0, 3, 1, 2] is not a Hamiltonian cycle of fsedp-2x2: dies (0, 3) "
         "are not neighbours", "trajectory"),
        ("param slack = 0.2", "param slak = 0.2",
         "param slak is not a parameter of strategy fsedp, expected one of channels, closed",
         "slak"),
        ("param slack = 0.2", 'param channels = ["ch0", "ch1"]',
         "param channels must be a list of 2 integers in 0..3", "channels"),
    ],
)  # fmt: skip
def test_bad_parameter_is_located(old: str, new: str, message: str, where: str) -> None:
    fails(edit(old, new), message, where)


def test_missing_required_parameter_is_located_at_the_policy() -> None:
    text = edit("  strategy fsedp\n", "  strategy ep\n")
    text = re.sub(r"  param \w+ = .*\n", "", text)
    fails(text, "param placement is required: a list of 2 integers in 0..3", "runtime L0")
    text = text.replace("  strategy ep\n", "  strategy ep\n  param placement = [0, 3]\n")
    verify_program(parse_program(text, FILE))


def test_ranges_need_a_target() -> None:
    p = parse_program(edit("[0, 1, 3, 2]", "[0, 1, 3, 9]"), FILE)
    typed = strategy_params(p.runtime[0], p.layers[0])  # no target: lengths, ranges unknown
    assert isinstance(typed, FSEDPParams) and typed.trajectory == (0, 1, 3, 9)


def test_unknown_strategy_is_not_typed() -> None:
    p = parse_program(edit("  strategy fsedp\n", "  strategy mine\n"), FILE)
    assert strategy_params(p.runtime[0], p.layers[0], resolve_target(p)) is None
    verify_program(p)  # a new strategy's expander reads its own parameters


def test_eplb_channels_per_replica() -> None:
    text = edit("  strategy fsedp\n", "  strategy eplb\n")
    text = re.sub(r"  param \w+ = .*\n", "", text)
    good = text.replace(
        "  strategy eplb\n",
        "  strategy eplb\n  param channels = [[0, 1], [3]]\n  param replicas = [[0, 1], [3]]\n",
    )
    p = parse_program(good, FILE)
    verify_program(p)
    typed = strategy_params(p.runtime[0], p.layers[0], resolve_target(p))
    assert typed == EPLBParams(replicas=((0, 1), (3,)), channels=((0, 1), (3,)))
    fails(good.replace("[[0, 1], [3]]\n", "[[0], [3]]\n", 1),
          "param channels must give a channel per replica", "channels")  # fmt: skip
    fails(good.replace("replicas = [[0, 1], [3]]", "replicas = [[0, 0], [3]]"),
          "param replicas must be 2 lists of distinct dies in 0..3", "replicas")  # fmt: skip


@pytest.mark.parametrize("model", ["tiny_moe", "tiny_deepseek"])
@pytest.mark.parametrize(
    "strategy", ["ep", "hydra", "eplb", "tp", "fsedp-naive", "fsedp-paired", "fsedp-buf"]
)
def test_every_compiled_policy_is_typed(model: str, strategy: str) -> None:
    path = ROOT / "tests" / "golden" / "msp" / f"{model}.{strategy}.msp"
    p = parse_program(path.read_text(), str(path))
    target = resolve_target(p)
    layouts = {(lay.layer, lay.shared): lay for lay in p.layouts}
    family = {"ep": EPParams, "hydra": EPParams, "eplb": EPLBParams, "tp": TPParams}
    for r in p.runtime:
        m = p.layer(r.layer)
        assert m is not None
        typed = strategy_params(r, m, target, layouts, p.filename)
        assert isinstance(typed, family.get(strategy, FSEDPParams))
        assert typed.slice_bytes is not None and len(typed.slice_bytes) == p.layouts[0].count


def test_a_list_of_plain_ints_is_checked_as_one_item_at_a_time() -> None:
    """``Ints`` checks a list of plain ints by its least and greatest (the lowering's lists:
    256 channels per layer); every list gets the verdict the item-by-item check gives."""
    import numpy as np

    from moec.ir.stream.params import Ints, ParamContext, _Bad, _is_int

    ctx = ParamContext("moe0", 8, channels=4)
    kinds = [Ints(), Ints(hi="channels"), Ints(lo=1, hi="channels"), Ints(distinct=True)]

    def item_by_item(t: Ints, raw: list) -> bool:
        hi = ctx.size(t.hi)
        ok = all(_is_int(v) and v >= t.lo and (hi is None or v < hi) for v in raw)
        return ok and not (t.distinct and len(set(raw)) != len(raw))

    lists = [[], [0], [3, 1, 2], [0, 4], [-1, 2], [1, 1], [1, True], [True], [2, 1.0], [1, "1"]]
    lists += [[1, np.int64(2)], [np.int64(5)], [1, None]]
    for t in kinds:
        for raw in lists:
            try:
                got = t.convert(raw, ctx) == tuple(raw)
            except _Bad:
                got = False
            assert got == item_by_item(t, raw), (t, raw)
