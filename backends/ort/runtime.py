"""ONNX Runtime sessions that stay quiet, and its errors as moec's one-line messages.

ONNX Runtime logs failures natively (multi-line, coloured, to stderr) before raising, and its
exception text quotes C++ source paths and signatures. moec turns every ORT failure into its own
one-line error, so the native log is set to fatal-only and the text is cleaned of those parts.
"""

from __future__ import annotations

import re

import onnxruntime as ort

#: ORT's ``FATAL`` severity: nothing below it reaches stderr (errors become moec errors instead).
FATAL = 4

_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE = re.compile(r"(?:/[\w.+-]+)*/?[\w.+-]+\.(?:h|hpp|cc|cpp|cu):\d+\s*")
_SIGNATURE = re.compile(r"(?:[\w:<>*&]+\s)?(?:\w+::)+~?\w+\([^()]*\)\s*(?:const\s*)?")

ort.set_default_logger_severity(FATAL)


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Session options with ``threads`` intra-op threads and native logging off."""
    opts = ort.SessionOptions()
    opts.log_severity_level = FATAL
    opts.intra_op_num_threads = threads
    return opts


def error_text(err: BaseException, limit: int = 300) -> str:
    """ORT's message on one line, without its error-code prefix, C++ paths and signatures."""
    text = _PREFIX.sub("", str(err))
    text = _SIGNATURE.sub(" ", _SOURCE.sub(" ", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
