"""Design-space sweeps (``moec sweep``): a TOML spec of axes, points run as Ray tasks or
in-process, results journaled to SQLite as each point ends and exported to Parquet, plots.

It drives the bench (:mod:`moec.bench`), so it lives in the root package next to it.
Ray, pyarrow and matplotlib are optional and imported only where used.
"""

from moec.sweep.runner import SweepSummary, evaluate_point, run_sweep
from moec.sweep.spec import SweepSpec, SweepSpecError, load_spec, parse_spec

__all__ = [
    "SweepSpec",
    "SweepSpecError",
    "SweepSummary",
    "evaluate_point",
    "load_spec",
    "parse_spec",
    "run_sweep",
]
