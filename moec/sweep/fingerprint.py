"""What a sweep point's numbers depend on, as two short hashes stored with its journal row.

A journal resumes by point id (the point's axis values and the spec's fixed rest), which says
*which* point a row is, not *what computed it*. After a change to the cost model, a hardware or
model preset, or the compiler, the same point gives other numbers, and a resumed row would be
silently stale. So every row also carries:

* ``fingerprint``: the code that computed it: the moec version and a hash of every source and
  data file of the packages that compute results (``moec.ir``, ``moec.compiler``,
  ``moec.backends``, ``moec.models`` and ``moec`` itself: cost formulas, target and model
  presets, passes, lowering, interpreter, bench). Any edit changes it, comments included: a
  resumed row is only ever one the current code would have written.
* ``inputs_hash``: the contents of the files the point reads besides the code: a model
  ``.onnx``, a target ``.toml``, a routing trace, a calibration trace (presets and ``synth:``
  routing are code, so a point with no such file has the hash of none).

A row whose fingerprint or inputs hash differs from what this process would write is *stale*;
:func:`moec.sweep.runner.run_sweep` recomputes it unless told to keep it. Known limit: an ONNX
model's external-data files (weights beside the ``.onnx``) are not hashed, only the ``.onnx``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache

from moec import __version__

#: The packages whose files decide a point's numbers (each hashed recursively).
PACKAGES = ("moec.ir", "moec.compiler", "moec.backends", "moec.models", "moec")
#: The file kinds installed with them (``[tool.setuptools.package-data]`` plus sources).
SUFFIXES = (".py", ".lark", ".toml", ".json", ".txt", ".onnx")
#: Hex digits kept of each hash (64 bits: a collision between two moec builds is not a concern).
DIGITS = 16


def _folder(package: str) -> str:
    """The folder of ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def _package_files(package: str) -> list[tuple[str, str]]:
    """``(name, path)`` of every hashed file under ``package``'s folder, ``name`` relative to it
    with ``/`` separators, sorted by name. Subpackages that are hashed on their own (another
    entry of :data:`PACKAGES` living inside this folder) are left to that entry."""
    root = _folder(package)
    others = {_folder(p) for p in PACKAGES if p != package}
    out: list[tuple[str, str]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d != "__pycache__" and os.path.join(folder, d) not in others
        )
        for name in files:
            if name.endswith(SUFFIXES):
                path = os.path.join(folder, name)
                out.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    return sorted(out)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The fingerprint of the code in this process (see the module docstring); computed once."""
    h = hashlib.sha256(f"moec {__version__}\0".encode())
    for package in PACKAGES:
        for name, path in _package_files(package):
            with open(path, "rb") as f:
                data = f.read()
            h.update(f"{package}/{name}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:DIGITS]


@lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """A file's content hash; cached by path, modification time and size (a worker process can
    outlive a sweep, and the file can change between two)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str) -> str:
    """The content hash of ``path``, or ``"missing"`` when it cannot be read (the point then
    fails on its own, with its one-line error)."""
    try:
        st = os.stat(path)
        return _file_digest(os.path.abspath(path), st.st_mtime_ns, st.st_size)
    except OSError:
        return "missing"


def inputs_hash(files: dict[str, str]) -> str:
    """The hash of the files a point reads, ``{role: path}`` (roles such as ``model``,
    ``target``, ``routing``, ``calibration``); paths enter only through their contents."""
    h = hashlib.sha256(b"inputs\0")
    for role in sorted(files):
        h.update(f"{role}\0{file_digest(files[role])}\0".encode())
    return h.hexdigest()[:DIGITS]
