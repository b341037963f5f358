"""Every transformers MoE family through moec's frontend: the table in docs/frontend.md.

Walks the installed transformers' causal-LM registry for configs with expert fields (number of
experts or experts per token), builds a tiny seeded random-weight model of each (hidden 32, 2
decoder layers, 8 experts, top-2, vocabulary 64, every size field the config has shrunk, every
parameter redrawn from N(0, 0.2)), exports it with the dynamo exporter (``batched_mm`` experts)
and, with ``--torchscript``, the TorchScript exporter (eager experts), then asks moec: are the
MoE layers lifted (``load_module``), are the shared experts inside the op, does ``moec check``
match ONNX Runtime (max relative error). Each family runs in its own process (an exporter crash
or hang is that family's row); results are cached as JSON in ``--cache`` so a rerun resumes.

Run from the repository root (needs the ``hf`` extra: torch, transformers, onnxscript)::

    python scripts/frontend_families.py                      # all families, rewrite the table
    python scripts/frontend_families.py --torchscript        # also the TorchScript exporter
    python scripts/frontend_families.py mixtral qwen2_moe    # a few (table not rewritten)

``--keep DIR`` keeps each exported file (``FAMILY.EXPORTER.onnx``) so that ``--recheck`` can
rerun only moec's side of the cached rows after a frontend change; ``--only EXPORTER`` fills the
cache with one exporter's rows (no table); ``--doc FILE`` rewrites another copy of the page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "frontend.md"
BEGIN, END = "<!-- families:begin -->", "<!-- families:end -->"
SEED = 1234
VOCAB = 64
TOL = 1e-4

EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOPK_FIELDS = ("num_experts_per_tok", "moe_k", "moe_top_k", "moe_topk", "top_k", "top_k_experts")
SHARED_FIELDS = (
    "n_shared_experts", "num_shared_experts", "moe_num_shared_experts",
    "shared_expert_intermediate_size", "shared_intermediate_size",
)  # fmt: skip
#: Size fields shrunk when the config has them (others keep their defaults).
SMALL: dict[str, Any] = {
    "vocab_size": VOCAB, "hidden_size": 32, "d_model": 32, "intermediate_size": 48,
    "moe_intermediate_size": 24, "expert_intermediate_size": 24, "ffn_hidden_size": 48,
    "shared_expert_intermediate_size": 40, "shared_intermediate_size": 40,
    "num_hidden_layers": 2, "n_layers": 2, "num_layers": 2, "num_attention_heads": 2,
    "n_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
    "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
    "v_head_dim": 16, "first_k_dense_replace": 0, "num_dense_layers": 0,
    "moe_layer_start_index": 0, "decoder_sparse_step": 1, "moe_layer_freq": 1, "n_group": 1,
    "topk_group": 1, "use_cache": False, "tie_word_embeddings": False, "sliding_window": 16,
    "linear_num_value_heads": 2, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1,
    "mamba_d_state": 16, "n_shared_experts": 1, "num_shared_experts": 1,
    "moe_num_shared_experts": 1, "expert_hidden_size": 24, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2, "is_moe": True, "enable_moe_block": True,
    "moe_shared_expert_intermediate_size": 40, "vocab_size_per_layer_input": VOCAB,
    "expert_ffn_hidden_size": 24, "zero_expert_num": 4,
}  # fmt: skip


def moe_families() -> list[str]:
    """Causal-LM model types whose default config has expert fields, sorted."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = []
    for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        try:
            fields = CONFIG_MAPPING[model_type]().to_dict()
        except Exception:  # noqa: BLE001 - a config that cannot even be built is not listed
            continue
        if any(k in fields for k in EXPERT_FIELDS + TOPK_FIELDS) or "ffn_config" in fields:
            out.append(model_type)
    return out


def tiny_config(model_type: str) -> Any:
    """The family's config with every size field it has shrunk (see :data:`SMALL`)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    default = cls().to_dict()
    kwargs = {k: v for k, v in SMALL.items() if k in default}
    if "qk_rope_head_dim" in default and "head_dim" in default:
        kwargs["head_dim"] = SMALL["qk_rope_head_dim"]  # MLA: rotary over the rope part only
    for k in EXPERT_FIELDS:
        if k in default:
            kwargs[k] = 8
    for k in TOPK_FIELDS:
        if k in default:
            kwargs[k] = 2
    if isinstance(default.get("ffn_config"), dict):  # DBRX
        kwargs["ffn_config"] = {"ffn_hidden_size": 24, "moe_num_experts": 8, "moe_top_k": 2}
    if isinstance(default.get("attn_config"), dict):  # DBRX reads rope_theta from here
        kwargs["attn_config"] = {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}
    types = default.get("layer_types")
    if isinstance(types, list) and types:
        # Keep one of each kind the family mixes, as far as two layers allow.
        kinds = list(dict.fromkeys(types))
        kwargs["layer_types"] = (kinds + kinds)[:2] if len(kinds) > 1 else kinds * 2
    for k in ("mlp_only_layers",):
        if k in default:
            kwargs[k] = []
    return cls(**kwargs)


def _shared_expected(config: Any) -> bool:
    d = config.to_dict()
    return any(isinstance(d.get(k), int) and d[k] > 0 for k in SHARED_FIELDS)


def export(model_type: str, exporter: str, path: Path) -> dict[str, Any]:
    """Build and export one family; the row's exporter-side fields."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    import transformers

    config = tiny_config(model_type)
    config._experts_implementation = "batched_mm" if exporter == "dynamo" else "eager"
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    lm = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0.0, 0.2)

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            mask = torch.ones_like(input_ids) if exporter == "torchscript" else None
            return self.lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    model = LogitsOnly().eval()
    seq = 8 if exporter == "dynamo" else 32
    ids = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(SEED))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                model, (ids,), input_names=["input_ids"], output_names=["logits"], dynamo=True,
                opset_version=18, optimize=True, verbose=False,
            )  # fmt: skip
            assert program is not None
            proto = program.model_proto
        else:
            tmp = str(path) + ".ts"
            torch.onnx.export(
                model, (ids,), tmp, input_names=["input_ids"], output_names=["logits"],
                dynamo=False, opset_version=18,
            )  # fmt: skip
            proto = onnx.load(tmp)
            os.remove(tmp)
        want = model(ids).float().numpy()
    proto.ir_version = 10
    onnx.save(proto, str(path), save_as_external_data=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input_ids": ids.numpy().astype(np.int64)})
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
    return {"export_err": err, "shared_expected": _shared_expected(config)}


def moec_side(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Lift and check the exported file with moec; the row's moec-side fields."""
    from moec.check import check_model
    from moec.compiler.frontend import load_module
    from moec.ir.errors import MoecError

    try:
        module, _ = load_module(str(path))
    except MoecError as err:
        return {"recognized": False, "reason": str(err).replace(str(path), "MODEL")}
    layers = [op.layer for op in module.moe_ops()]
    if not layers:
        return {"recognized": False, "reason": "no MoE layer found"}
    shared = sum(1 for lay in layers if lay.has_shared)
    out: dict[str, Any] = {"layers": len(layers), "shared_layers": shared}
    if row.get("shared_expected") and shared < len(layers):
        dense = [lay for lay in layers if lay.annotations.dense_shared]
        said = " (moec inspect: '+ 1 left dense')" if dense else " (silently)"
        out.update(recognized=False, reason=f"shared MLP left outside the MoE op{said}")
        return out
    try:
        report = check_model(str(path))
    except MoecError as err:
        out.update(recognized=False, reason=f"moec check: {err}")
        return out
    if report.per_layer:  # ORT could not run the whole model: not a whole-model check
        verdict = "passed" if report.passed else "FAILED"
        out.update(
            recognized=False,
            reason=f"moec check: {report.note} ({verdict}, {report.max_rel_err:.1e})",
        )
        return out
    out["check_err"] = report.max_rel_err
    out["recognized"] = bool(report.passed)
    if not report.passed:
        out["reason"] = f"numerics differ from ONNX Runtime ({report.max_rel_err:.1e})"
    return out


def _cause(err: BaseException) -> str:
    """The innermost cause of an exporter error, one line without terminal colours."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()]
    first = next((ln for ln in lines if ln), "")
    return f"{type(err).__name__}: {first}"[:240]


def run_one(model_type: str, exporter: str, keep: Path | None = None) -> dict[str, Any]:
    """One row: export, lift, check (in this process); ``keep`` holds the exported file."""
    row: dict[str, Any] = {"family": model_type, "exporter": exporter}
    with tempfile.TemporaryDirectory(prefix="moec-fam-") as tmp:
        path = (keep or Path(tmp)) / f"{model_type}.{exporter}.onnx"
        try:
            row.update(export(model_type, exporter, path))
        except Exception as err:  # noqa: BLE001 - the exporter's error is the row's finding
            row.update(recognized=None, reason=f"export failed: {_cause(err)}")
            return row
        row.update(moec_side(path, row))
    return row


#: The fields :func:`moec_side` writes (dropped before a ``--recheck``).
MOEC_FIELDS = ("recognized", "reason", "layers", "shared_layers", "check_err")


def recheck(cached: Path, keep: Path) -> bool:
    """Rerun only moec's side of a cached row on its kept ONNX file; False if none was kept."""
    row = json.loads(cached.read_text())
    path = keep / f"{row['family']}.{row['exporter']}.onnx"
    if row.get("recognized") is None or not path.exists():
        return False
    row = {k: v for k, v in row.items() if k not in MOEC_FIELDS}
    row.update(moec_side(path, row))
    cached.write_text(json.dumps(row, sort_keys=True))
    return True


def doc_rows(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of the table between the markers of ``text`` (the inverse of :func:`table`)."""
    _, _, rest = text.partition(BEGIN)
    body, _, _ = rest.partition(END)
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 6 or cells[0] in ("family", "---"):
            continue
        fam, exp, rec, layers, err, reason = cells
        row: dict[str, Any] = {"family": fam, "exporter": exp}
        row["recognized"] = {"yes": True, "no": False}.get(rec)
        if (m := re.fullmatch(r"(\d+) \((\d+)\)", layers)) is not None:
            row["layers"], row["shared_layers"] = int(m.group(1)), int(m.group(2))
        if err != "-":
            row["check_err"] = float(err)
        if reason:
            row["reason"] = reason.replace("\\|", "|")
        rows[(fam, exp)] = row
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table and its summary line."""
    lines = [
        "| family | exporter | recognized | MoE layers (shared inside) | error vs ORT | why not |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = {True: "yes", False: "no", None: "no ONNX"}[r.get("recognized")]
        layers = f"{r['layers']} ({r.get('shared_layers', 0)})" if "layers" in r else "-"
        err = f"{r['check_err']:.1e}" if "check_err" in r else "-"
        lines.append(
            f"| {r['family']} | {r['exporter']} | {rec} | {layers} | {err} | "
            f"{_cell(r.get('reason', ''))} |"
        )
    exported = [r for r in rows if r.get("recognized") is not None]
    ok = [r for r in exported if r["recognized"]]
    pct = 100.0 * len(ok) / len(exported) if exported else 0.0
    summary = (
        f"**{len(ok)} of {len(exported)} exported models recognized with `moec check` within "
        f"{TOL:g} ({pct:.0f}%)**; {len(rows) - len(exported)} of {len(rows)} family x exporter "
        "pairs give no ONNX file (the exporter's error, or the tiny config the family refuses: "
        "the reason is in the row)."
    )
    return "\n".join([summary, "", *lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", help="model types (default: every MoE family)")
    ap.add_argument("--torchscript", action="store_true", help="also the TorchScript exporter")
    ap.add_argument(
        "--only", choices=("dynamo", "torchscript"),
        help="run one exporter's rows into the cache (table not rewritten)",
    )  # fmt: skip
    ap.add_argument(
        "--doc", type=Path, default=DOC, help="the Markdown file whose table is rewritten"
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp/moec-families"))
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--keep", type=Path, help="keep the exported ONNX files in this folder")
    ap.add_argument(
        "--recheck", action="store_true",
        help="rerun only moec on the files kept in --keep (after a frontend change)",
    )  # fmt: skip
    ap.add_argument(
        "--reuse-doc-rows", action="store_true",
        help="take the rows missing from the cache from the table in --doc (the last run's)",
    )  # fmt: skip
    ap.add_argument("--one", nargs=2, metavar=("FAMILY", "EXPORTER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(*args.one, keep=args.keep)))
        return 0
    families = args.families or moe_families()
    exporters = ["dynamo", "torchscript"] if args.torchscript else ["dynamo"]
    exporters = [args.only] if args.only else exporters
    args.cache.mkdir(parents=True, exist_ok=True)
    previous = doc_rows(args.doc.read_text()) if args.reuse_doc_rows else {}
    rows = []
    for fam in families:
        for exp in exporters:
            cached = args.cache / f"{fam}.{exp}.json"
            if args.recheck and args.keep and cached.exists():
                recheck(cached, args.keep)
            if not cached.exists() and (fam, exp) in previous:
                rows.append(previous[(fam, exp)])
                continue
            if not cached.exists():
                cmd = [sys.executable, __file__, "--one", fam, exp]
                cmd += ["--keep", str(args.keep)] if args.keep else []
                try:
                    run = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT
                    )
                    last = run.stdout.strip().splitlines()[-1:] or [""]
                    row = json.loads(last[0]) if last[0].startswith("{") else None
                    if row is None:
                        tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
                        row = {"family": fam, "exporter": exp, "recognized": None,
                               "reason": f"export process died: {tail[:240]}"}  # fmt: skip
                except subprocess.TimeoutExpired:
                    row = {"family": fam, "exporter": exp, "recognized": None,
                           "reason": f"export did not finish in {args.timeout} s"}  # fmt: skip
                cached.write_text(json.dumps(row, sort_keys=True))
            row = json.loads(cached.read_text())
            rows.append(row)
            print(f"{fam:24s} {exp:11s} {row.get('recognized')} {row.get('reason', '')[:100]}")
    text = table(rows)
    print(text.splitlines()[0])
    if not args.families and not args.only:
        doc = args.doc.read_text()
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        args.doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
