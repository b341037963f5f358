"""A lowering that under-reserves activations, to reach the run-time SRAM check on purpose.

Since session 6 the lowering reserves the most activations any routing can put on a die
(``compiler/lower/slots.py``, :func:`predicted_activations`), so a compiled program fits
whatever it runs. The interpreter's own check (``does not fit SRAM: die d holds ...``) and
``--allow-overflow`` still matter for hand-written programs; tests reach them through a
lowering patched back to the earlier rule, the expected tokens for uniform routing.
"""

from __future__ import annotations

import pytest

from moec.compiler.lower import slots
from moec.ir.activations import predicted_activation_bytes


def uniform_estimate(
    kind: str, *, tokens: int, home: int, dies: int, top_k: int, hidden: int, dtype: str,
    shared: bool, links_in: int | None = None,
) -> slots.ActivationEstimate:  # fmt: skip
    """The pre-session-6 reserve: home tokens plus the other dies' tokens a die expects under
    uniform routing, ``(T - home) x (1 - (1 - 1/D) ** top_k)``, no landing ``y`` blocks."""
    others = tokens - home
    if kind == "home":
        remote = 0.0
    elif kind == "all" or shared or dies <= 1:
        remote = float(others)
    else:
        remote = others * (1.0 - (1.0 - 1.0 / dies) ** top_k)
    fixed = predicted_activation_bytes(home=home, remote=remote, hidden=hidden, dtype=dtype)
    return slots.ActivationEstimate(fixed, home if kind == "home" else tokens)


def under_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the lowering size slots by :func:`uniform_estimate`."""
    monkeypatch.setattr(slots, "predicted_activations", uniform_estimate)
