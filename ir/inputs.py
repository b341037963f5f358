"""Seeded model inputs: the one rule every part of moec generates inputs by.

``moec check`` (ONNX Runtime side), the interpreter's numerics (``moec run`` on a program with
weights) and the compiler's calibration all feed a model inputs that nobody gave; they draw them
here, so the same model, shapes and seed give the same inputs everywhere:

* one ``numpy.random.default_rng(seed)`` stream, drawn input by input in graph order;
* an integer input that indexes a constant table (token ids into an embedding: each caller finds
  the table in its own representation) is uniform in ``0 .. rows-1``; other integers are 0 or 1
  (:data:`SMALL_INT`: valid as a flag, a mask or an index into anything); booleans are fair
  coins; floating-point inputs are standard normal.

Shapes: :func:`shape_for_dims` sizes symbolic dimensions from named sizes (``--dims``);
:func:`shape_for_tokens` gives the last symbolic dimension of an input the token count and the
others 1 (``[T]``, ``[B, S]`` and ``[B, S, d]`` inputs all carry ``tokens`` tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from moec.ir.errors import ModelError

#: Upper bound (exclusive) of integer inputs that do not index a table.
SMALL_INT = 2

Dim = int | str | None  # a size, a symbolic name, or unknown


@dataclass(frozen=True)
class InputSpec:
    """What to draw for one graph input: its name, numpy dtype, concrete shape, and for an
    integer input the rows of the table it indexes (None: not a table index)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    rows: int | None = None


def shape_for_dims(name: str, shape: Sequence[Dim], dims: Mapping[str, int]) -> tuple[int, ...]:
    """``shape`` with its symbolic dimensions sized from ``dims`` (a :class:`ModelError` names a
    dimension without a size)."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        elif d is not None and d in dims:
            out.append(int(dims[d]))
        else:
            missing = d or "?"
            raise ModelError(
                f"input {name!r}: dimension {missing} has no size (give --dims {missing}=N)",
                "--dims",
            )
    return tuple(out)


def shape_for_tokens(shape: Sequence[Dim], tokens: int) -> tuple[int, ...]:
    """``shape`` with its last symbolic (or unknown) dimension ``tokens`` and the others 1."""
    symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    last = symbolic[-1] if symbolic else -1
    return tuple(
        d if isinstance(d, int) else (tokens if i == last else 1) for i, d in enumerate(shape)
    )


def seeded_feeds(
    specs: Sequence[InputSpec], seed: int, fixed: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Inputs drawn for ``specs`` in order from one generator seeded with ``seed`` (module doc);
    inputs in ``fixed`` (an LLM's attention mask, :mod:`moec.ir.llm_inputs`) are taken from it
    and draw nothing."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for s in specs:
        dtype = np.dtype(s.dtype)
        if fixed is not None and s.name in fixed:
            feeds[s.name] = np.asarray(fixed[s.name], dtype=dtype).reshape(s.shape)
            continue
        if dtype == np.bool_:
            feeds[s.name] = rng.integers(0, 2, size=s.shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            high = s.rows if s.rows is not None else SMALL_INT
            feeds[s.name] = rng.integers(0, high, size=s.shape).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[s.name] = rng.standard_normal(size=s.shape).astype(dtype)
        else:
            raise ModelError(f"input {s.name!r} of type {dtype}: cannot generate values")
    return feeds
