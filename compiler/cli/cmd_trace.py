"""``moec trace``: make synthetic routing traces and summarize traces.

- ``moec trace synth (--model NAME|FILE.onnx | --experts E --top-k K --layers L) --tokens N
  [--zipf 1.0] [--seed 0] [--dies D | --target T] [--home blocks|round_robin]
  [--iterations N --drift S --burst P] -o trace.json``: with ``--iterations``, a multi-iteration
  trace whose expert popularity drifts (``moec.ir.routing_seq.synth_sequence``).
- ``moec trace stats trace.json [--json]``: per-layer expert load, entropy, max/mean load.
- ``moec trace dump model.onnx --seed N [--dims name=value ...] [--inputs F.npz]
  [--dies D | --target T] -o trace.json``: run the model in ONNX Runtime on seeded inputs and
  record each MoE layer's routing (``moec.ir.moe.route`` on the layer's input). With
  ``--decode STEPS --batch B``: real decode routing of a language model, B sequences, one token
  each per step (:mod:`moec.decode`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from moec.compiler.cli.args import add_input_args
from moec.ir.errors import TraceError
from moec.ir.files import check_outputs
from moec.ir.routing import HOME_SCHEMES, LayerRouting, RoutingTrace, layer_stats, save_trace
from moec.ir.routing_seq import load_sequence, save_sequence, synth_sequence
from moec.ir.routing_synth import synth_layers
from moec.progress import Progress


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("trace", help="make and inspect routing traces")
    sub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="write a seeded Zipf-skewed synthetic routing trace")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="NAME|FILE", help="model preset name or .onnx file")
    src.add_argument("--experts", type=int, metavar="E", help="experts per layer (no model)")
    s.add_argument("--top-k", type=int, metavar="K", help="experts per token (with --experts)")
    s.add_argument("--layers", type=int, metavar="L", help="MoE layers (with --experts)")
    s.add_argument("--tokens", type=int, required=True, metavar="N", help="tokens per iteration")
    s.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of expert popularity")
    s.add_argument("--seed", type=int, default=0)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--dies", type=int, metavar="D", help="number of dies tokens live on")
    where.add_argument("--target", metavar="T", help="take the die count from a target")
    s.add_argument("--home", choices=HOME_SCHEMES, default="blocks", help="token-to-die rule")
    s.add_argument(
        "--same-hot-experts", action="store_true",
        help="same popularity ranking in every layer (default: a permutation per layer)",
    )  # fmt: skip
    s.add_argument("--iterations", type=int, default=1, metavar="N", help="iterations (steps)")
    s.add_argument("--drift", type=float, default=0.0, help="random-walk step of log-popularity")
    s.add_argument("--burst", type=float, default=0.0, help="per-iteration burst probability")
    s.add_argument("-o", "--output", required=True, metavar="FILE", help=".json or .npz")
    s.set_defaults(func=run_synth)

    d = sub.add_parser("dump", help="record the routing of a model run in ONNX Runtime")
    d.add_argument("model", metavar="MODEL", help=".onnx file or a tiny model name")
    add_input_args(d)
    dwhere = d.add_mutually_exclusive_group()
    dwhere.add_argument("--dies", type=int, metavar="D", help="number of dies tokens live on")
    dwhere.add_argument("--target", metavar="T", help="take the die count from a target")
    d.add_argument("--home", choices=HOME_SCHEMES, default="blocks", help="token-to-die rule")
    d.add_argument(
        "--decode", type=int, metavar="STEPS",
        help="record STEPS decode iterations of a language model (one token per sequence each)",
    )  # fmt: skip
    d.add_argument("--batch", type=int, default=16, metavar="B", help="sequences (with --decode)")
    d.add_argument("--prompt", type=int, default=32, metavar="P", help="prompt bytes (--decode)")
    d.add_argument("--text", metavar="FILE", help="prompt text (default: the model's held-out)")
    d.add_argument("--temperature", type=float, default=0.0, help="0: greedy (--decode)")
    d.add_argument("-o", "--output", required=True, metavar="FILE", help=".json or .npz")
    d.set_defaults(func=run_dump)

    st = sub.add_parser("stats", help="per-layer expert load and skew of a trace")
    st.add_argument("trace", metavar="TRACE")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=run_stats)


def model_layers(spec: str) -> tuple[str, list[tuple[int, int]], list[str]]:
    """Model name, ``[(num_experts, top_k)]`` and names of the MoE layers of a model.

    ``spec`` is an ``.onnx`` file or a model name from ``moec models`` (tiny models and the
    shape-only presets); either way the layers are read through the frontend, as a compile would.
    """
    from moec.compiler.frontend import lift_model, load_module

    if spec.endswith(".onnx"):
        loaded: Any = load_module(spec, load_weights=False)
        name = spec.rsplit("/", 1)[-1].removesuffix(".onnx")
    else:
        from moec.models.catalog import catalog

        entries = catalog()
        if spec not in entries:
            raise TraceError(
                f"unknown model {spec!r}, expected a .onnx file or one of: {', '.join(entries)}"
            )
        loaded = lift_model(entries[spec].build(0), where=spec)
        name = spec
    module = loaded[0] if isinstance(loaded, tuple) else loaded
    layers = [op.layer for op in module.moe_ops()]
    if not layers:
        raise TraceError("model has no MoE layer to route", spec)
    return name, [(ly.num_experts, ly.top_k) for ly in layers], [ly.name for ly in layers]


def _check_positive(flag: str, value: int | None) -> int:
    if value is None or value < 1:
        raise TraceError(f"{flag}: expected an integer >= 1, found {value}")
    return value


def run_synth(args: argparse.Namespace) -> int:
    tokens = _check_positive("--tokens", args.tokens)
    check_outputs([args.output], [args.model, args.target])
    if args.model:
        model, layers, names = model_layers(args.model)
    elif args.experts is not None:
        E = _check_positive("--experts", args.experts)
        k = _check_positive("--top-k", args.top_k)
        L = _check_positive("--layers", args.layers)
        model, layers, names = f"synthetic-e{E}-k{k}", [(E, k)] * L, [f"layer{i}" for i in range(L)]
    else:
        raise TraceError("give --model NAME|FILE.onnx, or --experts E --top-k K --layers L")
    if args.target:
        from moec.ir.target import load_target

        num_dies = load_target(args.target).num_dies
    else:
        num_dies = _check_positive("--dies", args.dies if args.dies is not None else 4)
    if not args.output.endswith((".json", ".npz")):
        raise TraceError("expected an output name ending in .json or .npz", args.output)
    if args.iterations > 1 or args.drift or args.burst:
        iterations = _check_positive("--iterations", args.iterations)
        seq = synth_sequence(
            layers, tokens, iterations, zipf=args.zipf, seed=args.seed, num_dies=num_dies,
            drift=args.drift, burst=args.burst, per_layer_permutation=not args.same_hot_experts,
            home=args.home, model=model, layer_names=names,
        )  # fmt: skip
        save_sequence(seq, args.output)
        print(
            f"wrote {args.output}: {iterations} iterations x {len(layers)} layers x {tokens} "
            f"tokens on {num_dies} dies, zipf={args.zipf:g}, drift={args.drift:g}, "
            f"burst={args.burst:g}, seed={args.seed}"
        )
        return 0
    with Progress("trace synth", len(layers), unit="layers") as bar:
        trace = synth_layers(
            layers, tokens, zipf=args.zipf, seed=args.seed, num_dies=num_dies,
            per_layer_permutation=not args.same_hot_experts, home=args.home, model=model,
            layer_names=names, on_layer=lambda i: bar.advance(status=names[i]),
        )  # fmt: skip
        bar.set_status(f"writing {args.output}")
        save_trace(trace, args.output)
    print(
        f"wrote {args.output}: {len(layers)} layers x {tokens} tokens on {num_dies} dies, "
        f"zipf={args.zipf:g}, seed={args.seed}"
    )
    return 0


def run_stats(args: argparse.Namespace) -> int:
    seq = load_sequence(args.trace)
    trace = seq[0]
    if len(seq) > 1:  # statistics over every iteration's tokens together
        trace = RoutingTrace(
            trace.model, trace.num_dies,
            [
                LayerRouting(
                    lr.name, lr.num_experts, lr.top_k,
                    np.concatenate([t.layers[i].ids for t in seq]),
                    np.concatenate([t.layers[i].gates for t in seq]),
                    np.concatenate([t.layers[i].home_die for t in seq]),
                )  # fmt: skip
                for i, lr in enumerate(trace.layers)
            ],
            {**trace.provenance, "iterations": len(seq)},
        )  # fmt: skip
    stats = [layer_stats(lr) for lr in trace.layers]
    if args.json:
        doc = {
            "model": trace.model, "tokens": trace.tokens, "num_dies": trace.num_dies,
            "provenance": trace.provenance, "layers": stats,
        }  # fmt: skip
        print(json.dumps(doc, sort_keys=True))
        return 0
    steps = f" ({len(seq)} iterations together)" if len(seq) > 1 else ""
    print(
        f"{trace.model}: {len(trace.layers)} layers, {trace.tokens} tokens{steps}, "
        f"{trace.num_dies} dies"
    )
    print(
        f"{'layer':<16} {'E':>5} {'k':>3} {'active':>6} {'H bits':>7} {'H norm':>7} {'max/mean':>8}"
    )
    for s in stats:
        print(
            f"{s['name']:<16} {s['num_experts']:>5} {s['top_k']:>3} {s['active_experts']:>6} "
            f"{s['entropy_bits']:>7.3f} {s['entropy_normalized']:>7.3f} {s['max_over_mean']:>8.2f}"
        )
    return 0


def run_dump(args: argparse.Namespace) -> int:
    from moec.check import dump_trace

    num_dies = None if args.target else _check_positive("--dies", args.dies or 4)
    check_outputs([args.output], [args.model, args.inputs, args.target, args.text])
    if not args.output.endswith((".json", ".npz")):
        raise TraceError("expected an output name ending in .json or .npz", args.output)
    if args.decode is not None:
        from moec.decode import decode_sequence

        if args.target:
            from moec.ir.target import load_target

            num_dies = load_target(args.target).num_dies
        steps = _check_positive("--decode", args.decode)
        with Progress("trace dump", steps, unit="decode steps") as bar:
            bar.set_status(f"decoding {args.model}")
            seq = decode_sequence(
                args.model, batch=_check_positive("--batch", args.batch), steps=steps,
                prompt=args.prompt, text=args.text, temperature=args.temperature, seed=args.seed,
                num_dies=num_dies or 4, home=args.home, on_step=lambda _: bar.advance(),
            )  # fmt: skip
            bar.set_status(f"writing {args.output}")
            save_sequence(seq, args.output)
        how = "greedy" if args.temperature <= 0 else f"sampled at T={args.temperature:g}"
        print(
            f"wrote {args.output}: {len(seq)} decode steps x {seq.tokens} sequences ({how}), "
            f"{len(seq[0].layers)} layers on {seq.num_dies} dies"
        )
        return 0
    if not args.output.endswith((".json", ".npz")):
        raise TraceError("expected an output name ending in .json or .npz", args.output)

    def stage(status: str, total: int) -> None:
        bar.set_total(total)
        bar.advance(status=status)

    with Progress("trace dump", unit="stages") as bar:
        bar.set_status(f"loading {args.model}")
        trace = dump_trace(
            args.model, seed=args.seed, dims=args.dims, inputs=args.inputs, num_dies=num_dies,
            target=args.target, home=args.home, on_stage=stage,
        )  # fmt: skip
        bar.set_status(f"writing {args.output}")
        save_trace(trace, args.output)
    print(
        f"wrote {args.output}: {len(trace.layers)} layers x {trace.tokens} tokens on "
        f"{trace.num_dies} dies, seed={args.seed}"
    )
    return 0
