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

from moec import progress
from moec.ir.errors import MoecError

#: Each subcommand's one-line help, for ``moec --help``: only the command that runs is imported,
#: so ``moec run``/``moec bench``/``moec inspect`` do not pay for onnx and onnxruntime (about
#: 1 s). A ``cmd_*.py`` missing here still works; it is just imported on every call.
#: tests/test_cli_lazy.py holds these to the texts the modules register.
SUMMARIES: dict[str, str] = {
    "bench": "compare strategies on one workload: latency, bound, utilization, bytes",
    "check": "compare the compiled program's numbers with ONNX Runtime",
    "compile": "lower an ONNX MoE model to a stream program (.msp)",
    "eval": "perplexity of a byte-level ONNX language model on a text (ONNX Runtime)",
    "export": "apply a pass pipeline and write the model back to ONNX (QMoE/QDQ for precision "
    "plans)",
    "inspect": "show the MoE layers of an ONNX model (or a .msp program)",
    "models": "list or build moec's tiny models and shape-only presets",
    "run": "run a stream program in the interpreter (timing, and numbers with weights)",
    "sweep": "design-space sweep over targets, models, strategies, tokens (Ray or local)",
    "targets": "list and show targets (dies, links, DRAM)",
    "trace": "make and inspect routing traces",
    "validate": "check moec's cost model against references",
}


def command_names() -> list[str]:
    """Every subcommand, from the ``cmd_<name>.py`` files (found without importing them)."""
    import moec.compiler.cli as cli_pkg

    names = (m.name for m in pkgutil.iter_modules(cli_pkg.__path__))
    return sorted(n[len("cmd_") :] for n in names if n.startswith("cmd_"))


def command_word(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not a top-level option."""
    return next((w for w in argv if not w.startswith("-")), None)


class _Version(argparse.Action):
    """``--version``: argparse's, with the version read only when asked for (reading the
    installed metadata took a tenth of every command's start-up)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
            help="show program's version number and exit",
        )  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import moec

        print(f"moec {moec.__version__}")
        parser.exit()


def build_parser(command: str | None = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The parser. ``full=False`` registers only ``command`` for real and the others as
    placeholders carrying their help line (enough for ``moec --help``)."""
    parser = argparse.ArgumentParser(
        prog="moec",
        description="Lower Mixture-of-Experts ONNX models to stream programs for multi-chiplet "
        "accelerators, run them, and check them against ONNX Runtime.",
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress output on stderr (before COMMAND)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names():
        if full or name == command or name not in SUMMARIES:
            importlib.import_module(f"moec.compiler.cli.cmd_{name}").register(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)
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
    words = attach_dims(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(command_word(words), full=False)
    args = parser.parse_args(words)
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
