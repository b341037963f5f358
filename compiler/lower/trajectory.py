"""Trajectory orders: the Hamiltonian cycle (or path) of the dies that FSE-DP slices travel.

An FSE-DP micro-slice moves from die to die along one fixed order of all dies, so every die
receives slices from one neighbour (its predecessor) and forwards them to one neighbour (its
successor). That order is a Hamiltonian cycle of the interconnect when one exists:

* **mesh**, ``spiral`` (default): the concentric rings of the mesh, each walked clockwise from
  its top-left die, spliced together through parallel edges on their top sides, so the order
  winds inward like a spiral and still closes. On 4x4::

       0 -  1    2 -  3          order 0 1 5 9 10 6 2 3 7 11 15 14 13 12 8 4
       |    |    |    |          (ring 0 1 2 3 7 11 15 14 13 12 8 4, inner ring 5 6 10 9
       4    5    6    7           spliced in between 1 and 2)
       |    |    |    |
       8    9 - 10   11
       |              |
      12 - 13 - 14 - 15

* **mesh**, ``rowmajor`` (the snake): row 0 left to right, then the remaining rows as a
  boustrophedon over columns 1.. and back up column 0 (needs an even number of rows; a mesh with
  an odd number of rows and an even number of columns is walked column-major instead).
* **ring**: ``0, 1, ..., n-1``; **full** (every pair linked): ``0, 1, ..., n-1``.

A mesh whose two sides are both odd (3x3) is bipartite with unequal halves and has no Hamiltonian
cycle at all; there the order is a Hamiltonian *path* (the true spiral, or the snake) and
:attr:`Cycle.closed` is False: trajectories never wrap from its last die to its first.
"""

from __future__ import annotations

from dataclasses import dataclass

from moec.ir.errors import ScheduleError
from moec.ir.stream.params import FSEDP_CYCLES
from moec.ir.target import Target

#: Trajectory order kinds, as the ``cycle`` strategy option spells them.
CYCLE_KINDS = FSEDP_CYCLES  # the runtime policy's values (moec.ir.stream.params)

Coord = tuple[int, int]


@dataclass(frozen=True)
class Cycle:
    """An order of all dies in which consecutive dies are neighbours (and, when ``closed``, the
    last die is a neighbour of the first)."""

    order: tuple[int, ...]
    closed: bool
    kind: str

    def position(self) -> dict[int, int]:
        """Die -> its index in :attr:`order`."""
        return {d: k for k, d in enumerate(self.order)}


def _ring(x0: int, y0: int, x1: int, y1: int) -> list[Coord]:
    """The border of the rectangle ``[x0..x1] x [y0..y1]`` clockwise from its top-left corner."""
    if x0 == x1:
        return [(x0, y) for y in range(y0, y1 + 1)]
    if y0 == y1:
        return [(x, y0) for x in range(x0, x1 + 1)]
    top = [(x, y0) for x in range(x0, x1 + 1)]
    right = [(x1, y) for y in range(y0 + 1, y1 + 1)]
    bottom = [(x, y1) for x in range(x1 - 1, x0 - 1, -1)]
    left = [(x0, y) for y in range(y1 - 1, y0, -1)]
    return top + right + bottom + left


def _adjacent(a: Coord, b: Coord) -> bool:
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1


def _is_cycle(order: list[Coord]) -> bool:
    if len(order) <= 2:
        return len(order) == 2 and _adjacent(order[0], order[1]) or len(order) == 1
    return all(_adjacent(a, b) for a, b in zip(order, order[1:] + order[:1], strict=True))


def _splice(outer: list[Coord], inner: list[Coord]) -> list[Coord] | None:
    """Join two disjoint cycles through the first outer edge parallel to an inner edge."""
    n, m = len(outer), len(inner)
    for i in range(n):
        p, q = outer[i], outer[(i + 1) % n]
        for k in range(m):
            a, b = inner[k], inner[(k + 1) % m]
            if _adjacent(p, a) and _adjacent(q, b):
                # walk the inner cycle from a the long way round to b: a, a-1, ..., b
                walk = [inner[(k - s) % m] for s in range(m)]
                return outer[: i + 1] + walk + outer[i + 1 :]
    return None


def _spiral_cycle(x0: int, y0: int, x1: int, y1: int) -> list[Coord] | None:
    ring = _ring(x0, y0, x1, y1)
    if not _is_cycle(ring):
        return None
    if x1 - x0 < 2 or y1 - y0 < 2:
        return ring
    inner = _spiral_cycle(x0 + 1, y0 + 1, x1 - 1, y1 - 1)
    return None if inner is None else _splice(ring, inner)


def _spiral_path(nx: int, ny: int) -> list[Coord]:
    out: list[Coord] = []
    x0, y0, x1, y1 = 0, 0, nx - 1, ny - 1
    while x0 <= x1 and y0 <= y1:
        out += _ring(x0, y0, x1, y1)
        x0, y0, x1, y1 = x0 + 1, y0 + 1, x1 - 1, y1 - 1
    return out


def _snake_cycle(nx: int, ny: int) -> list[Coord] | None:
    if ny % 2 == 1 and nx % 2 == 0:
        t = _snake_cycle(ny, nx)
        return None if t is None else [(y, x) for x, y in t]
    if ny % 2 == 1 or nx < 2:
        return None
    out = [(x, 0) for x in range(nx)]
    for y in range(1, ny):
        xs = range(nx - 1, 0, -1) if y % 2 == 1 else range(1, nx)
        out += [(x, y) for x in xs]
    out += [(0, y) for y in range(ny - 1, 0, -1)]
    return out


def _snake_path(nx: int, ny: int) -> list[Coord]:
    out: list[Coord] = []
    for y in range(ny):
        xs = range(nx) if y % 2 == 0 else range(nx - 1, -1, -1)
        out += [(x, y) for x in xs]
    return out


def mesh_cycle(nx: int, ny: int, kind: str = "spiral") -> Cycle:
    """The trajectory order of an ``nx`` x ``ny`` mesh (die id ``y * nx + x``)."""
    if kind not in CYCLE_KINDS:
        raise ScheduleError(
            f"unknown trajectory cycle {kind!r}, expected one of {', '.join(CYCLE_KINDS)}",
            "--strategy",
        )
    if nx < 1 or ny < 1:
        raise ScheduleError(f"mesh must be at least 1x1, found {nx}x{ny}")
    closed: list[Coord] | None
    if nx * ny <= 2:
        closed = [(x, y) for y in range(ny) for x in range(nx)]
    elif kind == "spiral":
        closed = _spiral_cycle(0, 0, nx - 1, ny - 1)
        if closed is None:
            closed = _snake_cycle(nx, ny)
    else:
        closed = _snake_cycle(nx, ny)
    if closed is not None and _is_cycle(closed):
        coords, is_closed = closed, True
    else:
        coords = _spiral_path(nx, ny) if kind == "spiral" else _snake_path(nx, ny)
        is_closed = False
    return Cycle(tuple(y * nx + x for x, y in coords), is_closed, kind)


def trajectory_cycle(target: Target, kind: str = "spiral") -> Cycle:
    """The trajectory order of ``target``'s dies (see the module docstring)."""
    if target.topology == "mesh":
        nx, ny = target.dims
        return mesh_cycle(nx, ny, kind)
    if kind not in CYCLE_KINDS:
        raise ScheduleError(
            f"unknown trajectory cycle {kind!r}, expected one of {', '.join(CYCLE_KINDS)}",
            "--strategy",
        )
    return Cycle(tuple(range(target.num_dies)), True, kind)
