"""Real decode routing of a trained language model: ``moec trace dump --decode STEPS``.

B sequences decode concurrently, one byte per step each, as a serving batch does: step n's batch
is the B tokens the sequences generate at step n, and its routing (per MoE layer, the expert ids
and gates of each of the B new tokens) is iteration n of a
:class:`~moec.ir.routing_seq.RoutingSequence`. Sequence b is prompted with ``prompt`` bytes of
the text starting at offset ``b * len(text) // B`` (the held-out text next to the model by
default), and decodes greedily (argmax; ``temperature > 0``: sampled with
``numpy.random.default_rng(seed)``).

The model is run in ONNX Runtime on each sequence's whole context window (the last ``context``
bytes; the model has no KV cache), and the routing of the new token is read off the last
position of each MoE layer's input (``moec.ir.moe.route``, as ``moec trace dump`` does). The
model is causal, so that is the routing a KV-cached decode would see, as long as the sequence
fits the context; beyond it the window slides (positions restart), which is what the model was
trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from moec.backends.ort.check import session, with_outputs
from moec.check import routed
from moec.compile import load_model
from moec.ir.errors import TraceError
from moec.ir.routing import RoutingTrace, assign_home_dies
from moec.ir.routing_seq import RoutingSequence


def _heldout(model: str) -> str | None:
    base = model.removesuffix(".onnx").removesuffix("_fg")
    path = base + ".heldout.txt"
    return path if os.path.exists(path) else None


def decode_sequence(
    model: str,
    *,
    batch: int,
    steps: int,
    prompt: int = 32,
    text: str | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    num_dies: int = 4,
    home: str = "blocks",
    on_step: Callable[[int], None] | None = None,
) -> RoutingSequence:
    """``steps`` decode iterations of ``batch`` sequences of ``model`` (see module doc);
    ``on_step(i)`` is called after step ``i`` (for a progress bar)."""
    if batch < 1 or steps < 1 or prompt < 1:
        raise TraceError(
            f"expected batch, steps and prompt >= 1, found {batch}, {steps}, {prompt}", model
        )
    module, lifted, name = load_model(model)
    if not lifted.lifted:
        raise TraceError("model has no MoE layer to route", model)
    ids_input = [v for v in module.inputs if v.name == "input_ids"]
    if not ids_input:
        raise TraceError("expected a language model with an 'input_ids' input", model)
    try:  # the trainers record the context length as metadata
        context = int(module.metadata.get("moec.context", "128"))
    except ValueError:
        context = 128
    source = text or _heldout(model)
    if source is None:
        raise TraceError("no text to prompt with: give --text FILE", model)
    try:
        with open(source, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    except OSError as err:
        raise TraceError(f"cannot read the prompt text: {err.strerror}", source) from None
    if data.size < prompt:
        raise TraceError(f"the text has {data.size} bytes, the prompt needs {prompt}", source)
    seqs = [
        list(data[o : o + prompt])
        for o in ((b * (data.size - prompt)) // batch for b in range(batch))
    ]
    ops = list(module.moe_ops())
    names = [op.inputs[0].name if op.inputs[0] is not None else "" for op in ops]
    sess = session(with_outputs(lifted.model, names))
    out_names = [o.name for o in sess.get_outputs()]
    logits_name = next((n for n in out_names if n == "logits"), out_names[0])
    rng = np.random.default_rng(seed)
    homes = assign_home_dies(batch, num_dies, home)
    iterations = []
    for step in range(steps):
        window = np.array([s[-context:] for s in seqs], dtype=np.int64)
        values = dict(zip(out_names, sess.run(out_names, {"input_ids": window}), strict=True))
        layers = []
        for op, n in zip(ops, names, strict=True):
            layer = op.layer
            x = np.asarray(values[n]).reshape(batch, -1, layer.hidden)[:, -1, :]
            layers.append(routed(layer, x, homes.copy()))
        provenance = {
            "source": "decode", "model": name, "batch": batch, "prompt": prompt,
            "text": os.path.basename(source), "temperature": temperature, "seed": seed,
            "home": home, "runtime": "onnxruntime",
        }  # fmt: skip
        iterations.append(RoutingTrace(name, num_dies, layers, provenance))
        last = np.asarray(values[logits_name])[:, -1, :].astype(np.float64)
        if temperature > 0:
            z = last / temperature
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            nxt = [int(rng.choice(p.shape[1], p=row)) for row in p]
        else:
            nxt = np.argmax(last, axis=1).tolist()
        for s, t in zip(seqs, nxt, strict=True):
            s.append(int(t))
        if on_step is not None:
            on_step(step)
    return RoutingSequence(iterations)
