"""``moec bench``: compare strategies on the same workload, target and cost model.

The pure parts live here: what a bench run is (:mod:`.spec`: models, token counts, strategy lists,
the paper's grid and ablation steps, the analytic lower bound of an iteration) and how its rows are
shown (:mod:`.report`: speedups, the terminal table, JSON, a bar chart). The driver that compiles
and runs each point needs the interpreter, so it lives in the root package's API
(:func:`moec.bench.run_bench`), where compiler and backends meet.
"""

from moec.compiler.bench.report import add_speedups, render_table, rows_json, write_plot
from moec.compiler.bench.spec import (
    ABLATION_STEPS,
    PAPER_MODELS,
    PAPER_STRATEGIES,
    PAPER_TOKENS,
    BenchModel,
    accuracy_dims,
    iteration_bound,
    load_bench_model,
    mixed_layer_bound,
    parse_layers,
    parse_strategies,
    parse_tokens,
)

__all__ = [
    "ABLATION_STEPS", "PAPER_MODELS", "PAPER_STRATEGIES", "PAPER_TOKENS", "BenchModel",
    "accuracy_dims", "add_speedups", "iteration_bound", "mixed_layer_bound", "load_bench_model", "parse_layers", "parse_strategies",
    "parse_tokens", "render_table", "rows_json", "write_plot",
]  # fmt: skip
