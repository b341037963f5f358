"""A lowering that under-reserves activations, to reach the run-time SRAM check on purpose.

Since session 6 the lowering reserves the most activations any routing can put on a die
(``compiler/lower/slots.py``, :func:`predicted_activations`) where that leaves room for
slots, so such a program fits whatever it runs. The interpreter's own check (``does not fit SRAM: die d holds ...``) and
``--allow-overflow`` still matter for hand-written programs; tests reach them through a
lowering patched back to the earlier rule, the expected tokens for uniform routing.
"""

from __future__ import annotations

import pytest

from moec.compiler.lower import slots


def uniform_estimate(
    kind: str, *, tokens: int, home: int, dies: int, top_k: int, hidden: int, dtype: str,
    shared: bool, links_in: int | None = None,
) -> slots.ActivationEstimate:  # fmt: skip
    """The pre-session-6 reserve, always: :func:`slots.expected_activations` (home tokens plus
    the other dies' tokens a die expects under uniform routing, no landing ``y`` blocks)."""
    return slots.expected_activations(
        kind, tokens=tokens, home=home, dies=dies, top_k=top_k, hidden=hidden, dtype=dtype,
        shared=shared,
    )  # fmt: skip


def under_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the lowering size slots by :func:`uniform_estimate`."""
    monkeypatch.setattr(slots, "predicted_activations", uniform_estimate)
