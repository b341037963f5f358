"""What the frontend and the passes record on an MoE layer, as one typed contract.

``MoELayer.annotations`` is a :class:`LayerAnnotations`: each field is written by one producer
and read by later passes, the lowering (which copies the per-expert ones into the program's
runtime part, ``compiler/lower/common.py``) or the exporters. ``None`` means "not recorded".

========================  ===========================================  =========================
field                     written by                                   read by
========================  ===========================================  =========================
``source``                every frontend: which form was recognized    ``--print-ir``, tests
``onnx_node``             the lifter: the ONNX anchor node's name      ``--print-ir``, tests
``routing_note``          fused QMoE import: why routing differs       ``--print-ir``
``routed_frac``           ``annotate-importance`` (per expert)         runtime annotations
``gate_mass``             ``annotate-importance`` (per expert)         ``assign-precision``,
                                                                       ``caee-prune``, residency
``contribution``          ``annotate-importance`` (per expert)         runtime annotations
``importance``            ``annotate-importance`` (per expert)         ``assign-precision``,
                                                                       residency
``precision``             ``assign-precision`` (per expert list) or    lowering, companion,
                          the QMoE import (one ``"int4"``/``"int8"``)  exporters
``router_precision``      fused MoE import: a MatMulNBits router's     ``--print-ir``
                          ``"int4"``/``"int8"`` (float weights kept)
``quant_error``           ``assign-precision`` (per expert)            runtime annotations
``quant_block``           ``assign-precision``, QMoE import            exporters, companion
``skip_rule``             ``skip-second``, ``caee-prune``:             lowering (``skip`` rule)
                          ``(rule, threshold)``
``resident``              ``caee-prune{resident=F}`` (per expert 1/0)  residency (offloading)
``dense_shared``          the lifter: the down projection of a shared  ``moec inspect``
                          MLP left outside the op
========================  ===========================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class LayerAnnotations:
    """The annotations of one MoE layer (see the module docstring for who writes what)."""

    source: str | None = None
    onnx_node: str | None = None
    routing_note: str | None = None
    routed_frac: list[float] | None = None
    gate_mass: list[float] | None = None
    contribution: list[float] | None = None
    importance: list[float] | None = None
    precision: list[str] | str | None = None
    router_precision: str | None = None
    quant_error: list[float] | None = None
    quant_block: int | None = None
    skip_rule: tuple[str, float] | None = None
    resident: list[int] | None = None
    dense_shared: str | None = None

    def items(self) -> list[tuple[str, object]]:
        """The recorded (non-None) annotations as ``(name, value)``, sorted by name."""
        pairs = [(f.name, getattr(self, f.name)) for f in fields(self)]
        return sorted((k, v) for k, v in pairs if v is not None)

    def per_expert(self, name: str, experts: int) -> list[Any] | None:
        """The per-expert list ``name`` when it has one value per expert, else None."""
        values = getattr(self, name)
        if isinstance(values, list) and len(values) == experts:
            return list(values)
        return None
