"""The errors moec shows its users: one line, with where and what.

Every user-facing failure (a bad model file, a malformed stream program, an impossible target)
is a :class:`MoecError`. The command line prints ``str(error)`` and exits with ``error.exit_code``;
it never shows a traceback for one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a text file something is: 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class MoecError(Exception):
    """A user-facing error. ``where`` is a file, a file:line:col, or a node name."""

    exit_code = 2

    def __init__(self, message: str, where: str | Location | None = None, detail: str = "") -> None:
        self.message = message
        self.where = where
        self.detail = detail
        super().__init__(self.one_line())

    def one_line(self) -> str:
        prefix = f"{self.where}: " if self.where is not None else ""
        return f"{prefix}{self.message}"

    def __str__(self) -> str:
        return self.one_line() if not self.detail else f"{self.one_line()}\n{self.detail}"


class ModelError(MoecError):
    """An ONNX model that cannot be read or whose MoE structure is not recognized."""


class ReferenceRefused(ModelError):
    """ONNX Runtime (the numerical reference) cannot load or run a model."""


class ProgramError(MoecError):
    """A stream program that does not parse or does not verify."""


class TargetError(MoecError):
    """A target description that is invalid or unknown."""


class ScheduleError(MoecError):
    """A schedule that cannot run on its target (for example, it does not fit SRAM)."""


class TraceError(MoecError):
    """A routing trace that is malformed or does not match the model."""


class FileError(MoecError):
    """A file that cannot be read or written, or an output path that would destroy an input."""


class CheckFailed(MoecError):
    """A numerical check that ran and did not pass (exit code 1, like a comparison over tol)."""

    exit_code = 1
