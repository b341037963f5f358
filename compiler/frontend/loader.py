"""Reading an ONNX file: one-line errors for bad files, and shape-only files without their weights.

Shape-only convention (moec's presets use it, and any file following it loads the same way):
every large weight is an initializer with ``dims`` and ``data_type`` whose data is *external*
(``data_location=EXTERNAL``, ``location`` naming a file that is not shipped), and the model's
metadata has ``moec.shape_only = "1"``. Such weights load as declared-only (shape and dtype, no
array, nothing read). A missing external file in a model *without* that mark is an error when
weights are requested (``load_weights=True``); with ``load_weights=False`` no external data is
ever read, so inspecting a 671B-parameter preset costs only its graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from moec.compiler.frontend.patterns import SHAPE_ONLY_KEY, is_declared_only
from moec.ir.errors import ModelError


def is_shape_only(model: onnx.ModelProto) -> bool:
    return any(p.key == SHAPE_ONLY_KEY and p.value == "1" for p in model.metadata_props)


def load_onnx(path: str | os.PathLike[str], *, load_weights: bool = True) -> onnx.ModelProto:
    """Read, check and shape-infer an ONNX model; raise a located :class:`ModelError` if bad."""
    where = str(path)
    p = Path(path)
    if not p.exists():
        raise ModelError("no such file", where)
    if p.is_dir():
        raise ModelError("is a directory, expected an .onnx file", where)
    data = p.read_bytes()
    if not data:
        raise ModelError("empty file, expected an ONNX model", where)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as err:
        reason = "truncated or corrupt" if _looks_like_onnx_prefix(data) else "not an ONNX model"
        raise ModelError(f"{reason} (protobuf: {err})", where) from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelError("not an ONNX model (no graph or IR version)", where)
    _load_external(model, p, load_weights=load_weights, where=where)
    _check_opsets(model, where)
    check_defined(model, where)
    try:
        onnx.checker.check_model(_checkable(model))
    except onnx.checker.ValidationError as err:
        text = " ".join(str(err).split()) or "invalid"
        text = text if len(text) <= 240 else text[:237] + "..."
        raise ModelError(f"invalid ONNX model: {text}", where) from None
    return infer_shapes(model)


def _check_opsets(model: onnx.ModelProto, where: str) -> None:
    """The default domain's opset must be one this onnx release defines (ORT checks the same)."""
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not 1 <= imp.version <= newest:
            raise ModelError(
                f"opset {imp.version} of the ONNX domain is not a released opset "
                f"(this onnx knows 1..{newest})",
                where,
            )


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, best effort: the model unchanged when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference only adds value_info; the graph is valid
        return model


def _runtime_only_ops(model: onnx.ModelProto) -> set[str]:
    """Default-domain op types of ``model`` that ONNX does not define but ONNX Runtime does.

    ONNX Runtime registers a few of its contrib ops in the default domain
    (``SimplifiedLayerNormalization``, which onnxruntime-genai's builder emits, among them); the
    ONNX checker rejects them as unknown although every runtime that reads such a model runs them.
    """
    unknown = {
        n.op_type
        for n in model.graph.node
        if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)
    }
    if not unknown:
        return set()
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c
    except ImportError:
        return set()
    known = {s.name for s in ort_c.get_all_operator_schema() if s.domain in ("", "ai.onnx")}
    return unknown & known


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as the ONNX checker can judge it.

    Declared-only initializers become typed graph inputs: onnx.checker insists that external data
    files exist, and a declared weight is, to the checker, just a tensor of known type and shape,
    which a graph input expresses exactly. Default-domain ops that only ONNX Runtime defines
    (:func:`_runtime_only_ops`) are checked as the custom ops they are.
    """
    declared = [t for t in model.graph.initializer if is_declared_only(t)]
    runtime_only = _runtime_only_ops(model)
    if not declared and not runtime_only:
        return model
    names = {t.name for t in declared}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if runtime_only:
        for n in copy.graph.node:
            if n.domain in ("", "ai.onnx") and n.op_type in runtime_only:
                n.domain = "com.microsoft"
        if not any(o.domain == "com.microsoft" for o in copy.opset_import):
            copy.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    kept = [t for t in copy.graph.initializer if t.name not in names]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    have = {i.name for i in copy.graph.input}
    for t in declared:
        if t.name not in have:
            copy.graph.input.append(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            )
    return copy


def _looks_like_onnx_prefix(data: bytes) -> bool:
    # ModelProto field 1 (ir_version, varint) is written first by every ONNX writer.
    return data[:1] == b"\x08"


def _load_external(model: onnx.ModelProto, path: Path, *, load_weights: bool, where: str) -> None:
    external = [
        t
        for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)
    ]
    if not external or not load_weights:
        return
    base = path.parent
    missing = sorted({_location(t) for t in external if not (base / _location(t)).exists()})
    if missing:
        if is_shape_only(model):
            return
        raise ModelError(
            f"external data file {missing[0]!r} not found next to the model "
            f"(expected weights for {len(external)} tensors)",
            where,
        )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read external data: {err}", where) from None


def _location(t: onnx.TensorProto) -> str:
    for e in t.external_data:
        if e.key == "location":
            return e.value
    return ""


def check_defined(model: onnx.ModelProto, where: str) -> None:
    """Every node input must be a graph input, an initializer or an earlier node's output."""
    g = model.graph
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    defined |= {t.values.name for t in g.sparse_initializer}
    produced = {o for n in g.node for o in n.output if o}
    for n in g.node:
        for inp in n.input:
            if inp and inp not in defined and inp not in produced:
                node = n.name or f"{n.op_type}_{list(g.node).index(n)}"
                raise ModelError(
                    f"input {inp!r} of {n.op_type} node is not defined "
                    "(expected a graph input, an initializer or a node output: missing initializer?)",
                    f"{where}: node {node}",
                )
