"""The interpreter backend: discrete-event timing with real numerics.

:func:`simulate` runs a stream program (expanding its runtime part for a routing) and returns a
:class:`RunResult` with the :class:`Report`, the outputs (with numerics), the expanded static
program and, when asked, a Chrome trace. See :mod:`.timing` for the machine's semantics.
"""

from moec.backends.interp.report import Report, Span, chrome_trace, render
from moec.backends.interp.simulate import RunResult, check_routings, program_target, simulate

__all__ = [
    "Report", "RunResult", "Span", "check_routings", "chrome_trace", "program_target", "render",
    "simulate",
]  # fmt: skip
