"""The weights companion's record of expert precision, shared by its writer and its reader.

A stream program's weights companion (``compiler/lower/weights_file.py`` writes it, the
interpreter's numerics read it) holds each MoE layer's weights as the compiler left them: after
``assign-precision``, routed experts' weights are quantized and dequantized. So the timing
(which charges bytes and FLOPs at the program's ``precision [...]`` table) and the numbers
(which come from the weights) can only disagree if someone edits one without the other. The
companion therefore records, on each MoE node whose experts were assigned precisions, the
attribute :data:`PRECISION_ATTR`: one precision name per expert. A node without it holds every
expert at the layer's dtype. The interpreter checks every runtime policy's table against it
(:func:`moec.backends.interp.numerics.check_precision`).
"""

from __future__ import annotations

#: The ``ai.moec::MoE`` node attribute (strings, one per expert) holding the experts' precisions.
PRECISION_ATTR = "precision"
