"""``moec trace``: make synthetic routing traces and summarize traces.

- ``moec trace synth (--model NAME|FILE.onnx | --experts E --top-k K --layers L) --tokens N
  [--zipf 1.0] [--seed 0] [--dies D | --target T] [--home blocks|round_robin] -o trace.json``
- ``moec trace stats trace.json [--json]``: per-layer expert load, entropy, max/mean load.
- ``moec trace dump model.onnx --seed N [--dims name=value ...] [--inputs F.npz]
  [--dies D | --target T] -o trace.json``: run the model in ONNX Runtime on seeded inputs and
  record each MoE layer's routing (``moec.ir.moe.route`` on the layer's input).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from moec.ir.errors import TraceError
from moec.ir.routing import HOME_SCHEMES, layer_stats, load_trace, save_trace, synth_layers


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
    s.add_argument("-o", "--output", required=True, metavar="FILE", help=".json or .npz")
    s.set_defaults(func=run_synth)

    d = sub.add_parser("dump", help="record the routing of a model run in ONNX Runtime")
    d.add_argument("model", metavar="MODEL", help=".onnx file or a tiny model name")
    d.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    d.add_argument("--dims", nargs="*", default=[], metavar="NAME=VALUE", help="symbolic dim sizes")
    d.add_argument("--inputs", metavar="F.npz", help="model inputs instead of seeded ones")
    dwhere = d.add_mutually_exclusive_group()
    dwhere.add_argument("--dies", type=int, metavar="D", help="number of dies tokens live on")
    dwhere.add_argument("--target", metavar="T", help="take the die count from a target")
    d.add_argument("--home", choices=HOME_SCHEMES, default="blocks", help="token-to-die rule")
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
    trace = synth_layers(
        layers, tokens, zipf=args.zipf, seed=args.seed, num_dies=num_dies,
        per_layer_permutation=not args.same_hot_experts, home=args.home, model=model,
        layer_names=names,
    )  # fmt: skip
    save_trace(trace, args.output)
    print(
        f"wrote {args.output}: {len(layers)} layers x {tokens} tokens on {num_dies} dies, "
        f"zipf={args.zipf:g}, seed={args.seed}"
    )
    return 0


def run_stats(args: argparse.Namespace) -> int:
    trace = load_trace(args.trace)
    stats = [layer_stats(lr) for lr in trace.layers]
    if args.json:
        doc = {
            "model": trace.model, "tokens": trace.tokens, "num_dies": trace.num_dies,
            "provenance": trace.provenance, "layers": stats,
        }  # fmt: skip
        print(json.dumps(doc, sort_keys=True))
        return 0
    print(
        f"{trace.model}: {len(trace.layers)} layers, {trace.tokens} tokens, {trace.num_dies} dies"
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
    trace = dump_trace(
        args.model, seed=args.seed, dims=args.dims, inputs=args.inputs, num_dies=num_dies,
        target=args.target, home=args.home,
    )  # fmt: skip
    if not args.output.endswith((".json", ".npz")):
        raise TraceError("expected an output name ending in .json or .npz", args.output)
    save_trace(trace, args.output)
    print(
        f"wrote {args.output}: {len(trace.layers)} layers x {trace.tokens} tokens on "
        f"{trace.num_dies} dies, seed={args.seed}"
    )
    return 0
