"""Lowering: from the graph IR to a stream program, one strategy per file.

:func:`lower` builds the part every strategy shares (:mod:`.common`: the target, the MoE layers
with their micro-slice layouts, the SRAM slot pools, the dense islands and the per-die streams
with ``signal``/``wait`` barriers and one ``moe L`` placeholder per layer) and then hands the
:class:`~moec.compiler.lower.common.Lowering` to the strategy, which declares where the expert
weights live in DRAM and writes each layer's runtime policy (and any static instructions it
decides at compile time). The result is verified before it is returned.

A strategy is a file in this folder that registers itself::

    @register("ep", options={"placement": "round_robin | blocks | explicit die list"})
    def lower_ep(lw: Lowering) -> None: ...

and a matching expander in ``backends/interp/expand/`` that the interpreter runs once routing is
known. Importing this package imports every module in the folder, so adding a strategy is adding
two files.

Strategy options come from a strategy spelling like a pass: ``ep{placement=blocks,slots=4}``.
Options every strategy accepts (read by :mod:`.common`): ``slots`` (SRAM buffer slots per die,
default 4), ``slices`` (micro-slices per expert; default ``auto``: the fewest that fit a slot),
``dtype`` (weight precision; default the weights' own precision, ``fp16`` for shape-only models),
``resident`` (fraction of each layer's experts kept in device memory, the hottest first; the rest
are declared on the host tier and loaded over its link: offloading).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from moec.compiler.lower.common import (
    COMMON_OPTIONS,
    Lowering,
    LoweringOptions,
    StrategyError,
    prepare,
    resolve_dims,
)
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.stream import Program, TargetRef, verify_program
from moec.ir.stream.verify import verify_fit

__all__ = [
    "COMMON_OPTIONS", "STRATEGIES", "Lowering", "LoweringOptions", "Strategy", "StrategyError",
    "lower", "parse_strategy", "register", "resolve_dims",
]  # fmt: skip

StrategyFn = Callable[[Lowering], None]


@dataclass(frozen=True)
class Strategy:
    """A registered lowering: its name, the options it reads (name -> meaning), the function,
    and how its dies hold token activations (an entry of ``common.ACTIVATION_KINDS``, which
    sizes the SRAM slots)."""

    name: str
    fn: StrategyFn
    options: Mapping[str, str]
    doc: str = ""
    activations: str = "routed"


STRATEGIES: dict[str, Strategy] = {}


def register(
    name: str, options: Mapping[str, str] | None = None, activations: str = "routed"
) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator: make ``fn`` the lowering of strategy ``name`` (``--strategy name{...}``)."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        STRATEGIES[name] = Strategy(
            name, fn, dict(options or {}), (fn.__doc__ or "").strip(), activations
        )
        return fn

    return wrap


_SPELLING = re.compile(r"\s*([a-z][a-z0-9_-]*)\s*(?:\{(.*)\})?\s*$", re.S)


def parse_strategy(text: str) -> tuple[str, dict[str, str]]:
    """``"ep{placement=blocks,slots=4}"`` -> ``("ep", {"placement": "blocks", "slots": "4"})``.

    Values stay strings; each strategy (and :mod:`.common`) converts and checks its own.
    """
    m = _SPELLING.match(text)
    if not m:
        raise StrategyError(
            f"expected a strategy name with optional {{key=value,...}}, found {text!r}",
            "--strategy",
        )
    options: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (m.group(2) or "").split(","))):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise StrategyError(f"strategy option {item!r}: expected key=value", "--strategy")
        options[key.strip().replace("-", "_")] = raw.strip()
    return m.group(1), options


def _load_strategies() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("common", "weights_file"):
            importlib.import_module(f"{__name__}.{info.name}")


def lower(
    module: Module,
    target: TargetRef,
    strategy: str,
    options: Mapping[str, str] | None = None,
    routing: RoutingTrace | None = None,
    *,
    tokens: int | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | None = None,
    name: str | None = None,
    fit_only: bool = False,
) -> Program:
    """The stream program of ``module`` on ``target`` with ``strategy`` and its ``options``.

    Tokens per iteration: ``tokens`` if given, else the routing trace's, else the MoE layers'
    input shapes with symbolic dimensions set by ``dims`` (defaults: :func:`resolve_dims`).
    ``base_dir`` resolves a relative TOML target path (the program file's folder).
    ``fit_only``: check only what decides whether the program fits (:func:`verify_fit`), not
    the whole program (:func:`verify_program`): for a compiler's candidate that it verifies in
    full if it keeps it (``moec.fsedp_slices``).
    """
    _load_strategies()
    strat = STRATEGIES.get(strategy)
    if strat is None:
        known = ", ".join(sorted(STRATEGIES)) or "none"
        raise StrategyError(
            f"unknown strategy {strategy!r}, expected one of: {known}", "--strategy"
        )
    opts = dict(options or {})
    allowed = set(COMMON_OPTIONS) | set(strat.options)
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise StrategyError(
            f"strategy {strategy}: unknown option {unknown[0]!r}, expected one of: "
            f"{', '.join(sorted(allowed))}",
            "--strategy",
        )
    lw = prepare(
        module,
        target,
        LoweringOptions.parse(opts),
        opts,
        routing=routing,
        tokens=tokens,
        dims=dims,
        base_dir=base_dir,
        name=name,
        activations=strat.activations,
    )
    strat.fn(lw)
    lw.finish()
    (verify_fit if fit_only else verify_program)(lw.program, lw.target)
    return lw.program
