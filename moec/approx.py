"""What a cost-aware pipeline costs in accuracy: the API behind ``moec check --approx PIPELINE``.

Compiles the model with the pass pipeline (precision plan, skip/prune rules), runs the
interpreter's numerics on seeded inputs (runtime rules included: they rewrite each layer's
routing before expansion), and compares every graph output with ONNX Runtime on the **original**
model: max and mean relative error (``max|d| / max|want|``, ``mean|d| / mean|want|``), cosine
similarity, and top-1 agreement (the fraction of rows whose argmax over the last axis agrees:
next-token agreement for logits). It also exports the approximated graph (precision only: skip
and prune rules are scheduler decisions with no ONNX form) with
:mod:`moec.compiler.frontend.export_qmoe` and runs it in ONNX Runtime, so a precision-only pipeline
can be checked against ORT's own run of the same approximation (it must match to ``--tol``).

:func:`program_perplexity` scores a byte-level LM's text with the interpreter running the
approximated program (``logits_fn`` for :func:`moec.backends.ort.perplexity.perplexity`).

The pieces are reusable: :func:`moec.check.reference_run` (seeded inputs and ORT's outputs on the
original model), :func:`approx_run` (compile with a pipeline and strategy, interpret, compare) and
:func:`summarize` (the worst error over the outputs); ``moec bench --accuracy`` calls them per row.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.backends.ort.check import check_finite, run_ort
from moec.check import Reference, interpret, reference_run
from moec.compile import DEFAULT_TARGET, compile_model, write_compiled
from moec.ir.errors import ModelError, MoecError
from moec.ir.graph import Module
from moec.ir.stream import Program, load_program


@dataclass(frozen=True)
class OutputError:
    """How far one output is from its reference."""

    name: str
    max_rel_err: float
    mean_rel_err: float
    cosine: float
    top1_agreement: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "max_rel_err": self.max_rel_err, "mean_rel_err": self.mean_rel_err,
            "cosine": self.cosine, "top1_agreement": self.top1_agreement,
        }  # fmt: skip


def output_error(name: str, got: np.ndarray, want: np.ndarray) -> OutputError:
    g = np.asarray(got, np.float64)
    w = np.asarray(want, np.float64)
    if g.shape != w.shape:
        raise MoecError(f"output {name}: shape {list(g.shape)}, expected {list(w.shape)}")
    check_finite(name, g, w)
    d = np.abs(g - w)
    wmax, wmean = float(np.abs(w).max(initial=0.0)), float(np.abs(w).mean()) if w.size else 0.0
    norm = float(np.linalg.norm(g) * np.linalg.norm(w))
    cosine = float((g * w).sum() / norm) if norm > 0 else 1.0
    top1 = None
    if w.ndim >= 1 and w.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(g, axis=-1) == np.argmax(w, axis=-1)))
    return OutputError(
        name,
        float(d.max(initial=0.0)) / wmax if wmax > 0 else float(d.max(initial=0.0)),
        float(d.mean()) / wmean if wmean > 0 else float(d.mean()) if d.size else 0.0,
        cosine,
        top1,
    )


def summarize(outputs: Sequence[OutputError]) -> dict[str, float | None]:
    """The worst over ``outputs``: ``max_rel_err`` and ``mean_rel_err`` (largest), ``cosine``
    (smallest) and ``top1_agreement`` (smallest, None when no output has a class axis)."""
    if not outputs:
        raise MoecError("no graph outputs to compare")
    return {
        "max_rel_err": max(o.max_rel_err for o in outputs),
        "mean_rel_err": max(o.mean_rel_err for o in outputs),
        "cosine": min(o.cosine for o in outputs),
        "top1_agreement": min(
            (o.top1_agreement for o in outputs if o.top1_agreement is not None), default=None
        ),
    }


@dataclass
class ApproxReport:
    """Errors of the approximate program against ORT (original model and exported approximation)."""

    passes: str
    outputs: list[OutputError]
    exported: list[OutputError] | None
    export_note: str = ""
    dropped_pairs: int = 0
    total_pairs: int = 0
    precision: dict[str, int] = field(default_factory=dict)

    @property
    def max_rel_err(self) -> float:
        """The worst max relative error against ONNX Runtime on the original model."""
        return max((o.max_rel_err for o in self.outputs), default=0.0)

    def passed(self, tol: float) -> bool:
        """Whether every output is within ``tol`` of the original model (``moec check --tol``)."""
        return self.max_rel_err <= tol

    def to_json(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "outputs": [o.to_json() for o in self.outputs],
            **summarize(self.outputs),
            "vs_exported": [o.to_json() for o in self.exported] if self.exported else None,
            "vs_exported_max_rel_err": max(o.max_rel_err for o in self.exported)
            if self.exported
            else None,
            "export_note": self.export_note,
            "dropped_pairs": self.dropped_pairs,
            "total_pairs": self.total_pairs,
            "precision": self.precision,
        }


def _precision_counts(module: Module) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in module.moe_ops():
        plan = op.layer.annotations.precision
        if isinstance(plan, list):
            for p in plan:
                out[str(p)] = out.get(str(p), 0) + 1
    return dict(sorted(out.items()))


@dataclass
class ApproxRun:
    """The interpreter's run of ``model`` compiled with a pass pipeline, on a reference's inputs."""

    outputs: list[OutputError]
    got: dict[str, np.ndarray]
    module: Module
    program: Program
    dropped_pairs: int
    total_pairs: int


def approx_run(
    ref: Reference,
    passes: str,
    *,
    target: str = DEFAULT_TARGET,
    overrides: Sequence[tuple[str, int | float | str]] = (),
    strategy: str = "ep",
) -> ApproxRun:
    """Compile ``ref.model`` with ``passes`` and ``strategy`` for ``ref.dims``, run the
    interpreter's numerics on ``ref.feeds`` and compare every output with ``ref.want``."""
    seen: list[Module] = []
    with tempfile.TemporaryDirectory(prefix="moec-approx-") as tmp:
        path = os.path.join(tmp, "approx.msp")
        compiled = compile_model(
            ref.model, path, target=target, overrides=overrides, strategy=strategy,
            passes=passes, dims=ref.dims, on_module=seen.append,
        )  # fmt: skip
        write_compiled(compiled, path)
        got, dropped, total = interpret(load_program(path), path, ref.feeds)
    outputs = [output_error(name, got[name], ref.want[name]) for name in ref.want]
    return ApproxRun(outputs, got, seen[0], compiled.program, dropped, total)


def approx_check(
    model: str,
    passes: str,
    *,
    target: str = DEFAULT_TARGET,
    overrides: Sequence[tuple[str, int | float | str]] = (),
    strategy: str = "ep",
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    inputs: str | None = None,
) -> ApproxReport:
    """Compile with ``passes``, interpret, and compare with ORT (see the module docstring)."""
    from moec.compiler.frontend.export_qmoe import export_onnx

    ref = reference_run(model, seed=seed, dims=dims, inputs=inputs)
    run = approx_run(ref, passes, target=target, overrides=overrides, strategy=strategy)
    approx = run.module
    exported: list[OutputError] | None = None
    note = ""
    try:
        exp_model = export_onnx(approx)
        ort_approx = run_ort(exp_model, ref.feeds)
        exported = [output_error(name, run.got[name], ort_approx[name]) for name in ref.want]
        if any(op.layer.annotations.skip_rule for op in approx.moe_ops()):
            note = "runtime skip/prune rules are not in the exported ONNX model"
    except ModelError as err:
        note = f"not exportable: {err.one_line()}"
    return ApproxReport(
        passes, run.outputs, exported, note, run.dropped_pairs, run.total_pairs,
        _precision_counts(approx),
    )  # fmt: skip


def program_perplexity(
    model: str,
    passes: str,
    byte_ids: np.ndarray,
    context: int,
    *,
    batch: int = 8,
    target: str = DEFAULT_TARGET,
    strategy: str = "ep",
) -> tuple[float, int, int]:
    """Perplexity of ``byte_ids`` with the interpreter running ``model`` compiled with ``passes``.

    :func:`~moec.backends.ort.perplexity.perplexity` calls for ``batch`` windows of ``context``
    bytes at a time; a call of another shape (the last, partial batch; a short last window) gets
    a program compiled for exactly its ``rows x length`` tokens (one per shape, cached), so no
    padding ever reaches the run: a runtime rule like CAEE sees only the real tokens of the
    batch. Returns (perplexity, dropped pairs, total pairs).
    """
    from moec.backends.ort.perplexity import perplexity

    counts = [0, 0]
    with tempfile.TemporaryDirectory(prefix="moec-ppl-") as tmp:
        programs: dict[tuple[int, int], tuple[Program, str]] = {}

        def program_for(rows: int, length: int) -> tuple[Program, str]:
            if (rows, length) not in programs:
                path = os.path.join(tmp, f"lm-{rows}x{length}.msp")
                compiled = compile_model(
                    model, path, target=target, strategy=strategy, passes=passes,
                    dims={"batch": rows, "seq": length},
                )  # fmt: skip
                write_compiled(compiled, path)
                programs[rows, length] = (load_program(path), path)
            return programs[rows, length]

        def logits_fn(ids: np.ndarray) -> np.ndarray:
            program, path = program_for(*ids.shape)
            out, dropped, total = interpret(program, path, {"input_ids": ids})
            counts[0] += dropped
            counts[1] += total
            return next(iter(out.values()))

        score = perplexity(logits_fn, byte_ids, context, batch=batch)
    return score.perplexity, counts[0], counts[1]
