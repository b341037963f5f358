"""Trajectory orders: Hamiltonian cycles (or, on odd x odd meshes, paths) of the dies."""

from __future__ import annotations

import pytest

from moec.compiler.lower.trajectory import CYCLE_KINDS, mesh_cycle, trajectory_cycle
from moec.ir.errors import ScheduleError
from moec.ir.target import Target, load_target


def mesh(nx: int, ny: int) -> Target:
    return load_target("fsedp-2x2", {"dies_x": nx, "dies_y": ny})


def steps(order: tuple[int, ...], closed: bool) -> list[tuple[int, int]]:
    pairs = list(zip(order, order[1:], strict=False))
    return pairs + [(order[-1], order[0])] if closed else pairs


@pytest.mark.parametrize("kind", CYCLE_KINDS)
@pytest.mark.parametrize("nx,ny", [(2, 2), (4, 4), (2, 3), (3, 2), (3, 4), (4, 6), (6, 6), (1, 2)])
def test_even_meshes_get_hamiltonian_cycles(nx: int, ny: int, kind: str) -> None:
    t = mesh(nx, ny)
    c = trajectory_cycle(t, kind)
    assert c.closed
    assert sorted(c.order) == list(range(t.num_dies))  # every die exactly once
    for a, b in steps(c.order, closed=True):  # consecutive dies are neighbours, wrap included
        assert t.are_neighbors(a, b), (a, b)


@pytest.mark.parametrize("kind", CYCLE_KINDS)
@pytest.mark.parametrize("n", [3, 5])
def test_odd_meshes_get_hamiltonian_paths(n: int, kind: str) -> None:
    t = mesh(n, n)
    c = trajectory_cycle(t, kind)
    # a mesh is bipartite (colour x + y); an n x n mesh with n odd has one more die of one
    # colour, and a cycle alternates colours, so no Hamiltonian cycle exists: a path it is
    colours = [(d.x + d.y) % 2 for d in t.dies]
    assert colours.count(0) == colours.count(1) + 1
    assert not c.closed
    assert sorted(c.order) == list(range(t.num_dies))
    for a, b in steps(c.order, closed=False):
        assert t.are_neighbors(a, b), (a, b)


def test_golden_orders() -> None:
    assert mesh_cycle(2, 2, "spiral").order == (0, 1, 3, 2)
    assert mesh_cycle(4, 4, "spiral").order == (
        0,
        1,
        5,
        9,
        10,
        6,
        2,
        3,
        7,
        11,
        15,
        14,
        13,
        12,
        8,
        4,
    )
    assert mesh_cycle(4, 4, "rowmajor").order == (
        0, 1, 2, 3, 7, 6, 5, 9, 10, 11, 15, 14, 13, 12, 8, 4,
    )  # fmt: skip
    assert mesh_cycle(3, 3, "spiral").order == (0, 1, 2, 5, 8, 7, 6, 3, 4)
    assert mesh_cycle(3, 3, "rowmajor").order == (0, 1, 2, 5, 4, 3, 6, 7, 8)


@pytest.mark.parametrize("topology", ["ring", "full"])
def test_ring_and_fully_connected(topology: str) -> None:
    t = load_target("fsedp-2x2", {"topology": topology, "num_dies": 6})
    c = trajectory_cycle(t)
    assert c.closed and c.order == tuple(range(6))
    for a, b in steps(c.order, closed=True):
        assert t.are_neighbors(a, b)


def test_presets() -> None:
    for name, closed in (("fsedp-2x2", True), ("fsedp-3x3", False), ("fsedp-4x4", True)):
        assert trajectory_cycle(load_target(name)).closed is closed


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ScheduleError, match="unknown trajectory cycle 'zigzag'.*spiral, rowmajor"):
        mesh_cycle(2, 2, "zigzag")
