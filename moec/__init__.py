"""moec: lower Mixture-of-Experts ONNX models to stream programs for multi-chiplet accelerators.

The code lives in the top-level folders ``ir/``, ``compiler/``, ``backends/`` and ``models/``,
installed as ``moec.ir``, ``moec.compiler``, ``moec.backends`` and ``moec.models``.
"""


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata when first asked for (reading it at
    import was a tenth of a ``moec`` command's start-up)."""
    if name != "__version__":
        raise AttributeError(f"module 'moec' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("moec")
    except PackageNotFoundError:  # running from a source tree that is not installed
        v = "0.0.0"
    globals()["__version__"] = v
    return v
