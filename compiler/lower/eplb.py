"""EPLB: expert parallelism with the hottest experts replicated and replicas packed evenly.

Compile time follows DeepSeek's expert-parallel load balancer, from each layer's routed-token
counts (option ``calibration=FILE``, else the ``--routing`` trace; without either every expert
counts as equally loaded):

1. **replication** (:func:`~moec.compiler.lower.placement.replicate`): ``extra`` times, give one
   more replica to the expert with the highest load per replica (at most one replica per die);
2. **balanced packing** (:func:`~moec.compiler.lower.placement.pack_replicas`): replicas, heaviest
   first, each to the least-loaded die with room that does not hold that expert yet.

Each replica's weights go to a DRAM channel near its die, spreading the expected bytes over the
channels as Hydra does: expert ``e``'s first replica is tensor ``L.e<e>``, the others
``L.e<e>.r<k>``.

Run time (``backends/interp/expand/eplb.py``) is EP's with one more decision: the tokens of a
replicated expert are split among its replicas, evenly (quotas differ by at most one token) and
nearest first (a token whose home die holds a replica stays there while that replica has quota).

    runtime moe0 {
      strategy eplb
      param replicas = [[0, 1], [0], [1], [0, 1]]      # 2 dies, extra = 2
      param channels = [[0, 1], [0], [1], [0, 1]]      # DRAM channel of each replica
      param load = [12, 2, 2, 4]
      param load_source = "trace"
      param slice_bytes = [...]
    }
"""

from __future__ import annotations

from moec.compiler.lower import register
from moec.compiler.lower.common import Lowering, parse_int
from moec.compiler.lower.hydra import expected_bytes, layer_loads
from moec.compiler.lower.placement import assign_channels, eplb_plan
from moec.ir.stream import TensorDecl


@register(
    "eplb",
    options={
        "extra": "replica budget: extra expert replicas per layer (default: number of dies)",
        "calibration": "routing trace file whose expert loads decide replication and packing "
        "(default: the --routing trace)",
    },
)
def lower_eplb(lw: Lowering) -> None:
    """EPLB-style EP: replicate hot experts (greedy by load per replica), pack replicas evenly."""
    t = lw.target
    extra = parse_int(lw.raw_options, "extra", t.num_dies, minimum=0)
    for i, plan in enumerate(lw.plans):
        load, source = layer_loads(lw, i, plan)
        replicas = eplb_plan(load, t.num_dies, extra)
        per_expert = expected_bytes(lw, i, plan, load, source)
        items = [(e, d) for e, dies in enumerate(replicas) for d in dies]
        flat = assign_channels([d for _, d in items], [per_expert[e] for e, _ in items], t)
        channels: list[list[int]] = [[] for _ in replicas]
        for (e, _), ch in zip(items, flat, strict=True):
            channels[e].append(ch)
        d = plan.decl
        for e, chans in enumerate(channels):
            lw.expert_tensor(plan, e, chans[0])
            for k, ch in enumerate(chans[1:], start=1):
                lw.program.tensors.append(
                    TensorDecl(
                        f"{d.name}.e{e}.r{k}",
                        d.dtype,
                        (3 if d.gated else 2, d.hidden, d.ffn),
                        ch,
                        plan.expert_bytes,
                    )  # fmt: skip
                )
        lw.shared_tensors(plan)
        lw.policy(
            plan, "eplb",
            {"replicas": replicas, "channels": channels, "load": load, "load_source": source,
             "extra": extra},
        )  # fmt: skip
