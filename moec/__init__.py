"""moec: lower Mixture-of-Experts ONNX models to stream programs for multi-chiplet accelerators.

The code lives in the top-level folders ``ir/``, ``compiler/``, ``backends/`` and ``models/``,
installed as ``moec.ir``, ``moec.compiler``, ``moec.backends`` and ``moec.models``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moec")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
