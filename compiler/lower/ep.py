"""EP: expert parallelism. Whole experts live on dies; tokens travel to their experts and back.

Compile time decides the placement (the die of every expert) and stores each expert's weights in
DRAM on the channel nearest its die (``L.e<e>``, ties to the lower channel id). The static part is
the common one: dense islands split evenly over the dies, barriers, ``moe L`` placeholders. At run
time (``backends/interp/expand/ep.py``), for every expert with routed tokens, its die streams the
expert's micro-slices from that channel through its SRAM slots, the tokens' activations are sent
from their home dies (an ``x`` block), computed slice by slice (gemm, act, accum) and the outputs
sent back (a ``y`` block) and summed on the home die.

Runtime policy::

    runtime moe0 {
      strategy ep
      param placement = [0, 1, 2, 3, 0, 1, 2, 3]    # die of each expert
      param channels = [0, 1, 2, 3, 0, 1, 2, 3]     # DRAM channel of each expert's weights
      param slice_bytes = [24576, 24576]            # bytes of micro-slice j (biases in slice 0)
    }

Option ``placement``: ``round_robin`` (default, expert ``e`` on die ``e % D``), ``blocks``
(contiguous groups, die ``e * D // E``) or an explicit list of dies, ``placement=0/0/1/1/...``.
"""

from __future__ import annotations

from moec.compiler.lower import register
from moec.compiler.lower.common import Lowering, StrategyError

PLACEMENTS = ("round_robin", "blocks")


def placement(spec: str, num_experts: int, num_dies: int) -> list[int]:
    """The die of each expert for a placement option value."""
    if spec == "round_robin":
        return [e % num_dies for e in range(num_experts)]
    if spec == "blocks":
        return [e * num_dies // num_experts for e in range(num_experts)]
    try:
        dies = [int(x) for x in spec.replace(" ", "").split("/")]
    except ValueError:
        raise StrategyError(
            f"option placement: expected {' or '.join(PLACEMENTS)} or a die list like 0/1/2/3, "
            f"found {spec!r}",
            "--strategy",
        ) from None
    if len(dies) != num_experts:
        raise StrategyError(
            f"option placement: {len(dies)} dies listed, the model has {num_experts} experts",
            "--strategy",
        )
    bad = [d for d in dies if not 0 <= d < num_dies]
    if bad:
        raise StrategyError(
            f"option placement: die {bad[0]} out of range, the target has dies 0..{num_dies - 1}",
            "--strategy",
        )
    return dies


@register("ep", options={"placement": "round_robin (default), blocks, or a die list 0/1/..."})
def lower_ep(lw: Lowering) -> None:
    """Expert parallelism: whole experts on dies, tokens sent to them and results returned."""
    t = lw.target
    spec = lw.raw_options.get("placement", "round_robin")
    for plan in lw.plans:
        dies = placement(spec, plan.decl.experts, t.num_dies)
        channels = [t.nearest_channel(d).id for d in dies]
        for e, ch in enumerate(channels):
            lw.expert_tensor(plan, e, ch)
        lw.shared_tensors(plan)
        lw.policy(plan, "ep", {"placement": list(dies), "channels": list(channels)})
