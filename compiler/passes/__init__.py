"""Passes over the graph IR: one pass per file, a registry by kebab-case name, pipelines as strings.

A pass is a frozen dataclass whose fields are its options and whose ``name`` is its command-line
spelling; ``run(module) -> PassResult``. A pipeline string names passes with options in braces:

    annotate-importance,assign-precision{tiers=0.6/0.9},caee-prune{threshold=0.8}

Importing this package registers every pass module in this folder.
"""

from __future__ import annotations

import importlib
import pkgutil

from moec.compiler.passes.pipeline import (
    REGISTRY,
    ModulePass,
    PassResult,
    Pipeline,
    parse_pipeline,
    register,
)

__all__ = ["REGISTRY", "ModulePass", "PassResult", "Pipeline", "parse_pipeline", "register"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "pipeline":
        importlib.import_module(f"{__name__}.{_info.name}")
