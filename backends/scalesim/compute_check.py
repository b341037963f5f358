"""Check moec's GEMM cycle formula against SCALE-Sim v3, shape by shape.

SCALE-Sim (``pip install scalesim``, a test extra of moec, never a runtime dependency) models a
systolic array cycle by cycle: its compute module builds, for every fold of a GEMM, the matrix of
operand demands per cycle, skewed as data ripples through the array. The number of rows of that
demand matrix is the GEMM's compute cycles with stall-free memory; that is the reference here,
computed by SCALE-Sim's own ``systolic_compute_{ws,os,is}`` classes driven directly (no config
file, no memory simulation, nothing written to disk). moec's closed form
(:func:`moec.ir.cost.gemm_cycles`) must be within :data:`TOLERANCE` of it on every shape.

Shapes (:func:`validation_shapes`): the micro-slice GEMMs of the four FSE-DP paper models (the
gate/up projection ``[T, d] x [d, 2w]`` and the down projection ``[T, w] x [w, d]``, with the
slice widths ``w`` that ``fsedp-paired`` cuts on ``fsedp-2x2`` at 64 tokens) at 1, 4, 16, 64, 256
and 1024 tokens per expert, under the weight- and output-stationary dataflows, on the 32x64 array
of the ``fsedp-*`` dies. SCALE-Sim's output-stationary demand matrices take minutes to build at
1024 tokens, so those rows run only with ``full=True`` (``moec validate compute --all``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass

from moec.ir.cost import gemm_cycles
from moec.ir.errors import MoecError
from moec.ir.hardware import MacArray

#: Largest relative error accepted between moec and SCALE-Sim.
TOLERANCE = 0.05
TOKENS = (1, 4, 16, 64, 256, 1024)
#: (model, hidden d, slice width w as fsedp-paired cuts it on fsedp-2x2 at 64 tokens)
SLICES = (
    ("phi3.5-moe", 4096, 100),
    ("yuan2-m32", 2048, 128),
    ("deepseek-moe-16b", 2048, 64),
    ("qwen3-30b-a3b", 2048, 64),
)
#: Output-stationary rows above this many tokens need ``full`` (SCALE-Sim is slow there).
QUICK_OS_TOKENS = 256


@dataclass(frozen=True)
class Row:
    """One validated shape: ``[m, k] x [k, n]`` on one ``array_rows x array_cols`` array."""

    m: int
    k: int
    n: int
    array_rows: int
    array_cols: int
    dataflow: str
    moec_cycles: int
    reference_cycles: int
    rel_err: float
    what: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def validation_shapes(full: bool = False) -> list[tuple[str, int, int, int, str]]:
    """Every ``(what, m, k, n, dataflow)`` checked; ``full`` adds the slow ones."""
    out = []
    for dataflow in ("ws", "os"):
        for model, d, w in SLICES:
            for t in TOKENS:
                if dataflow == "os" and t > QUICK_OS_TOKENS and not full:
                    continue
                out.append((f"{model} gate/up T={t}", t, d, 2 * w, dataflow))
                out.append((f"{model} down T={t}", t, w, d, dataflow))
    return out


def _scalesim() -> tuple[object, dict[str, object]]:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from scalesim.compute.systolic_compute_is import systolic_compute_is
            from scalesim.compute.systolic_compute_os import systolic_compute_os
            from scalesim.compute.systolic_compute_ws import systolic_compute_ws
            from scalesim.scale_config import scale_config
    except ImportError:
        raise MoecError(
            "SCALE-Sim is not installed: pip install scalesim (or pip install -e '.[test]')",
            "validate",
        ) from None
    kinds = {"ws": systolic_compute_ws, "os": systolic_compute_os, "is": systolic_compute_is}
    return scale_config, kinds


def reference_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    """SCALE-Sim v3's compute cycles for ``[m, k] x [k, n]`` on one ``rows x cols`` array."""
    import numpy as np

    scale_config, kinds = _scalesim()
    cfg = scale_config()  # type: ignore[operator]
    cfg.array_rows, cfg.array_cols, cfg.df, cfg.valid_conf_flag = rows, cols, dataflow, True
    # operand matrices hold addresses; only their shapes matter for the cycle count
    ifmap = np.arange(m * k, dtype=np.int64).reshape(m, k)
    filt = np.arange(k * n, dtype=np.int64).reshape(k, n) + m * k
    ofmap = np.arange(m * n, dtype=np.int64).reshape(m, n) + m * k + k * n
    comp = kinds[dataflow]()  # type: ignore[operator]
    with contextlib.redirect_stdout(io.StringIO()):
        comp.set_params(config_obj=cfg, ifmap_op_mat=ifmap, ofmap_op_mat=ofmap, filter_op_mat=filt)
        comp.create_ifmap_demand_mat()
    return int(comp.ifmap_demand_matrix.shape[0])


def check(
    rows: int = 32, cols: int = 64, *, full: bool = False, progress: object = None
) -> list[Row]:
    """Every validation shape on a ``rows x cols`` array: moec's cycles against SCALE-Sim's."""
    _scalesim()  # fail before any work if SCALE-Sim is missing
    out = []
    shapes = validation_shapes(full)
    for i, (what, m, k, n, dataflow) in enumerate(shapes):
        ours = gemm_cycles(m, k, n, MacArray(rows, cols, 1, dataflow))
        ref = reference_cycles(m, k, n, rows, cols, dataflow)
        err = abs(ours - ref) / ref if ref else float(ours != 0)
        out.append(Row(m, k, n, rows, cols, dataflow, ours, ref, err, what))
        if callable(progress):
            progress(i + 1, len(shapes))
    return out
