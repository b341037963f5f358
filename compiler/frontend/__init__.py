"""The ONNX frontend: load a model, recognize its MoE layers, build the graph IR.

Public entry points:

- :func:`load_onnx` (``loader``): read and check a file, shape-only files without their weights;
- :func:`load_module` / :func:`lift_model` (``lift``): the graph IR ``Module`` with each MoE
  layer one canonical ``moe`` op, plus a :class:`LiftResult` keeping the ONNX model;
- :class:`GraphView`, :class:`Lifted`, :class:`Mismatch`, :func:`register` (``patterns``): the
  framework recognizers are written against;
- :func:`residual_model` (``residual``) and :func:`export_onnx` (``export``).
"""

from moec.compiler.frontend.lift import LiftResult, lift_model, load_module
from moec.compiler.frontend.loader import load_onnx
from moec.compiler.frontend.patterns import GraphView, Lifted, Mismatch, register

__all__ = [
    "GraphView",
    "Lifted",
    "LiftResult",
    "Mismatch",
    "lift_model",
    "load_module",
    "load_onnx",
    "register",
]
