"""Command-line options several subcommands share, each declared once.

A subcommand adds the group it takes (``add_target_args(p)``, ``add_input_args(p)``, ...) and
reads the parsed values with the API's parsers (``moec.compile.parse_overrides`` for ``--set``,
``moec.compile.parse_dims`` for ``--dims``). Help texts a subcommand words its own way are
arguments, so ``--help`` reads as before.
"""

from __future__ import annotations

import argparse

from moec.compile import DEFAULT_TARGET

#: What ``--residency`` keeps in spare SRAM (``moec.backends.interp.residency.POLICIES``; named
#: here so that building the parser does not import the interpreter).
RESIDENCY_POLICIES = ("lru", "popularity")


def add_set_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: target overrides."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_target_args(
    p: argparse.ArgumentParser,
    *,
    default: str = DEFAULT_TARGET,
    help: str = "preset or .toml file",
    set_help: str = "target override, e.g. sram_bytes_per_die=1000 (repeatable)",
) -> None:
    """``--target T`` and ``--set KEY=VALUE``: the target a model is compiled for."""
    p.add_argument("--target", default=default, metavar="T", help=help)
    add_set_arg(p, set_help)


def add_strategy_arg(
    p: argparse.ArgumentParser, help: str = "strategy, e.g. ep{placement=blocks}"
) -> None:
    """``--strategy S`` (default ``ep``): one strategy spelling with its options."""
    p.add_argument("--strategy", default="ep", metavar="S", help=help)


def add_dims_arg(p: argparse.ArgumentParser) -> None:
    """``--dims NAME=VALUE ...`` into ``args.dims``: sizes of the model's symbolic dimensions."""
    p.add_argument(
        "--dims",
        nargs="*",
        action="extend",
        default=[],
        metavar="NAME=VALUE",
        help="symbolic dim sizes",
    )


def add_input_args(p: argparse.ArgumentParser) -> None:
    """``--seed N``, ``--dims ...`` and ``--inputs F.npz``: the inputs of a model run in ONNX
    Runtime (``moec.check.model_inputs``)."""
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    add_dims_arg(p)
    p.add_argument("--inputs", metavar="F.npz", help="model inputs instead of seeded ones")


def add_serving_args(
    p: argparse.ArgumentParser,
    *,
    iterations_default: int | None,
    iterations_help: str,
    arrivals_metavar: str,
    arrivals_help: str,
) -> None:
    """``--iterations N``, ``--residency`` and ``--arrivals``: a serving run (``moec.serve``)."""
    p.add_argument(
        "--iterations", type=int, default=iterations_default, metavar="N", help=iterations_help
    )
    p.add_argument(
        "--residency", choices=RESIDENCY_POLICIES,
        help="with --iterations: keep loaded micro-slices in spare SRAM across iterations",
    )  # fmt: skip
    p.add_argument("--arrivals", metavar=arrivals_metavar, help=arrivals_help)
