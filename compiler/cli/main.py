"""The ``moec`` command line.

Each subcommand lives in its own module ``moec.compiler.cli.cmd_<name>`` with two functions,
``register(subparsers)`` (adds its parser and sets ``func``) and the handler it names; this module
discovers them, so adding a command is adding a file. The command line is the only place where
the compiler and the backends meet.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

import numpy as np

from moec import __version__, progress
from moec.ir.errors import MoecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moec",
        description="Lower Mixture-of-Experts ONNX models to stream programs for multi-chiplet "
        "accelerators, run them, and check them against ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"moec {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress output on stderr (before COMMAND)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import moec.compiler.cli as cli_pkg

    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"moec.compiler.cli.{info.name}")
            module.register(sub)
    return parser


def attach_dims(argv: list[str]) -> list[str]:
    """``--dims a=1 b=2 MODEL`` -> ``--dims=a=1 --dims=b=2 MODEL``: only NAME=VALUE words belong
    to ``--dims`` (argparse's ``nargs="*"`` would swallow the positional MODEL after them)."""
    out: list[str] = []
    taking = False
    for word in argv:
        if word == "--dims":
            taking = True
            continue
        if taking and "=" in word and not word.startswith("-"):
            out.append(f"--dims={word}")
            continue
        taking = False
        out.append(word)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_dims(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    quiet, progress.QUIET = progress.QUIET, bool(args.quiet)
    try:
        # Non-finite numbers are reported where they matter (check, bench accuracy); numpy's
        # RuntimeWarnings about them would only be noise on stderr.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            code = args.func(args)
    except MoecError as err:
        print(f"moec: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return 1
    except OSError as err:
        # A file the command could not read or write that no check above caught: still one line.
        where = f"{err.filename}: " if err.filename else ""
        print(f"moec: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moec: interrupted", file=sys.stderr)
        return 130
    finally:
        progress.QUIET = quiet  # in-process callers (tests, scripts) get it back as it was
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
