"""``moec models list`` and ``moec models build NAME -o FILE.onnx [--seed N]``.

Tiny models carry real seeded weights; presets are shape-only (weights declared, not stored).
The file is written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import moec.models.catalog as catalog_module
from moec.ir.errors import ModelError
from moec.ir.files import atomic_write, check_outputs


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list or build moec's tiny models and shape-only presets")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="list the models moec can build")
    ls.set_defaults(func=run_list)
    b = msub.add_parser("build", help="write a model to an ONNX file")
    b.add_argument("name", help="a name from `moec models list`")
    b.add_argument("-o", "--output", required=True, help="output .onnx file")
    b.add_argument("--seed", type=int, default=0, help="weight seed of tiny models (default 0)")
    b.set_defaults(func=run_build)


def run_list(args: argparse.Namespace) -> int:
    from moec.compiler.bench.spec import PAPER_MODELS
    from moec.models.catalog import catalog

    entries = catalog()
    files = sorted(Path(catalog_module.__file__).parent.glob("*.onnx"))
    width = max(len(n) for n in [*entries, *(str(Path("models") / f.name) for f in files)])
    for name in sorted(entries, key=lambda n: (entries[n].kind != "tiny", n)):
        e = entries[name]
        print(f"{name:<{width}}  {e.kind:<6}  {e.description}")
    for f in files:  # the committed models (the trained language models among them)
        print(
            f"{'models/' + f.name:<{width}}  {'file':<6}  an ONNX file shipped in models/ (README: Models)"
        )
    print(f"{'paper':<{width}}  {'group':<6}  bench --model paper: {', '.join(PAPER_MODELS)}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from moec.models.catalog import catalog

    entries = catalog()
    entry = entries.get(args.name)
    if entry is None:
        raise ModelError(
            f"unknown model {args.name!r} (expected one of: {', '.join(sorted(entries))})"
        )
    check_outputs([args.output], [])
    model = entry.build(args.seed)
    atomic_write(args.output, model.SerializeToString())
    print(f"wrote {args.output} ({entry.kind}: {entry.description})")
    return 0
