"""Files moec writes: atomically (whole or not at all), and never over one of the inputs.

:func:`check_outputs` is what every command calls before its work: an output path that is one of
the command's inputs (or an input's weights companion), an existing folder, or a path in a missing
or read-only folder is refused with a one-line :class:`FileError`, before anything is computed or
written. :func:`atomic_write` and :func:`atomic_write_all` write through temporaries in the target
folder and a rename, so an error (or a kill) leaves the previous file, or nothing, behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from moec.ir.errors import FileError

#: The suffix of a stream program's weights companion (``prog.msp`` -> ``prog.msp.weights.onnx``).
COMPANION_SUFFIX = ".weights.onnx"

PathLike = str | os.PathLike[str]


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _protected(inputs: Iterable[PathLike | None]) -> list[Path]:
    """The input files and, next to each, the weights companion a program input would read."""
    out: list[Path] = []
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item)
        for candidate in (path, path.with_name(path.name + COMPANION_SUFFIX)):
            if candidate.is_file():
                out.append(candidate)
    return out


def check_outputs(outputs: Sequence[PathLike | None], inputs: Iterable[PathLike | None]) -> None:
    """Refuse output paths that would destroy an input or cannot be written (see the module).

    ``None`` entries (an option not given) are skipped, and so are inputs that are not existing
    files (preset and model names, ``synth:`` routing specs).
    """
    protected = _protected(inputs)
    seen: list[Path] = []
    for item in outputs:
        if item is None:
            continue
        out = Path(item)
        if out.is_dir():
            raise FileError("is a folder, expected an output file name", str(out))
        folder = out.parent if str(out.parent) else Path(".")
        if not folder.exists():
            raise FileError("no such folder for the output", str(folder))
        if not folder.is_dir():
            raise FileError("not a folder, cannot hold the output", str(folder))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise FileError("folder is not writable", str(folder))
        for inp in protected:
            if _same(out, inp):
                raise FileError(f"output is the same file as the input {inp}, refusing", str(out))
        for other in seen:
            if _same(out, other):
                raise FileError("the same file is given for two outputs", str(out))
        seen.append(out)


def atomic_write(path: PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    atomic_write_all([(path, data)])


def atomic_write_all(files: Sequence[tuple[PathLike, bytes | str]]) -> None:
    """Write several files so that all are replaced, or (on an error) none is.

    Every file is first written whole to a temporary in its folder; the renames come last. An
    ``OSError`` becomes a one-line :class:`FileError` naming the path.
    """
    temps: list[tuple[str, Path]] = []
    current = Path(".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        for path, data in files:
            current = Path(path)
            payload = data.encode() if isinstance(data, str) else data
            if current.is_dir():
                raise FileError("is a folder, expected an output file name", str(current))
            folder = current.parent if str(current.parent) else Path(".")
            fd, tmp = tempfile.mkstemp(prefix=f".{current.name}.", suffix=".tmp", dir=folder)
            temps.append((tmp, current))
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            # mkstemp creates 0600; give the file the mode a plain open() would.
            os.chmod(tmp, 0o666 & ~umask)
        for tmp, target in temps:
            current = target
            os.replace(tmp, target)
    except OSError as err:
        _cleanup(temps)
        raise FileError(f"cannot write: {err.strerror or err}", str(current)) from None
    except BaseException:
        _cleanup(temps)
        raise


def _cleanup(temps: Sequence[tuple[str, Path]]) -> None:
    for tmp, _ in temps:
        if os.path.exists(tmp):
            os.unlink(tmp)
