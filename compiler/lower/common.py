"""What every lowering shares: :func:`prepare` and the :class:`Lowering` it returns.

:func:`prepare` turns a graph IR module into a :class:`Lowering`: a stream program with

* the target (``TargetRef``: preset or TOML path plus flat overrides);
* one ``MoEDecl`` per MoE layer, with its tokens per iteration (``--tokens``, else the routing
  trace's, else the layer input's shape with symbolic dimensions set by :func:`resolve_dims`;
  see :mod:`~moec.compiler.lower.dims`);
* micro-slice layouts sized to the SRAM slots (:mod:`~moec.compiler.lower.slots`);
* dense islands (the ordinary ops between MoE layers) with estimated FLOPs and DRAM bytes, split
  evenly over the dies, separated from the MoE layers by ``signal``/``wait`` barriers, and one
  ``moe L`` placeholder per layer in every die's stream (:mod:`~moec.compiler.lower.islands`).

The strategy then declares where expert weights live (``TensorDecl``) and writes the runtime
policies. With the common option ``resident=F`` (or a ``caee-prune{resident=F}`` annotation),
:func:`~moec.compiler.lower.residency.layer_residency` picks the experts kept in device memory;
:meth:`Lowering.expert_tensor` declares the others on the host tier and :meth:`Lowering.policy`
records ``annotate resident = [1, 0, ...]`` for the interpreter and the CAEE rule. Conventions the expanders rely on: expert ``e`` of layer ``L`` is tensor ``L.e<e>``;
the shared experts have one replica per channel, ``L.shared.ch<c>`` (EP and TP split them over
the dies instead: one shard per die and channel, ``L.shared.d<d>[.ch<c>]``); the policy's
``slice_bytes`` (and ``shared_slice_bytes``) give the bytes of each micro-slice, biases included
(``b_down`` and the shared gate ride with slice 0).

The options (:mod:`~moec.compiler.lower.options`), dimension inference, slot planning and island
costing live in their own modules; the names strategies use are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from moec.compiler.lower.dims import default_dim, infer_tokens, resolve_dims, value_sizes
from moec.compiler.lower.islands import dense_islands, die_streams, op_cost
from moec.compiler.lower.options import COMMON_OPTIONS, LoweringOptions, StrategyError, parse_int
from moec.compiler.lower.residency import layer_residency
from moec.compiler.lower.slots import (
    ACTIVATION_KINDS,
    LayerPlan,
    fit_error,
    home_tokens,
    plan_layers,
    predicted_activations,
)
from moec.ir.errors import ModelError
from moec.ir.graph import Module
from moec.ir.moe import MoELayer
from moec.ir.routing import RoutingTrace, validate
from moec.ir.stream import Program, RuntimePolicy, SkipRule, SlotPool, TargetRef, TensorDecl
from moec.ir.stream.program import HOST_CHANNEL
from moec.ir.target import Target, load_target

__all__ = [
    "ACTIVATION_KINDS", "COMMON_OPTIONS", "LayerPlan", "Lowering", "LoweringOptions",
    "RUNTIME_ANNOTATIONS", "StrategyError", "carry_pass_annotations", "default_dim", "op_cost",
    "lowerings_shared", "parse_int", "predicted_activations", "prepare", "resolve_dims",
    "value_sizes",
]  # fmt: skip

#: While :func:`lowerings_shared` is active, per routing check (the trace's id, the layers'
#: shapes, tokens, dies) the trace checked, and per what makes them (layer, precision, shape,
#: bytes, channels, residency) a layer's expert declarations.
_SHARED: dict[tuple[object, ...], object] | None = None


@contextmanager
def lowerings_shared() -> Iterator[None]:
    """Within the block, lowerings share what does not depend on their options: a routing
    trace is checked once for the same layers, tokens and dies (the trace object kept, so its
    id is not reused; it must not change within the block), and a layer's expert declarations
    (:meth:`Lowering.expert_tensors`) are made once, the same frozen objects going into every
    program that declares them alike. A slice choice lowers the whole model once per count
    (DeepSeek-V3: 58 layers of 256 experts, the trace 58 layers of 1024 tokens). Nested uses
    share the outer one."""
    global _SHARED
    outer = _SHARED
    if outer is None:
        _SHARED = {}
    try:
        yield
    finally:
        _SHARED = outer


def _check_routing(
    routing: RoutingTrace, layers: list[tuple[int, int]], tokens: int, num_dies: int
) -> None:
    """:func:`moec.ir.routing.validate` of ``routing`` for the lowering (once per block of
    :func:`lowerings_shared`)."""
    key = ("routing", id(routing), tuple(layers), tokens, num_dies)
    if _SHARED is not None and _SHARED.get(key) is routing:
        return
    validate(routing, layers, tokens, num_dies=num_dies, where="--routing")
    if _SHARED is not None:
        _SHARED[key] = routing


@dataclass
class Lowering:
    """The program under construction, what it was built from, and the per-layer plans."""

    module: Module
    target: Target
    program: Program
    plans: list[LayerPlan]
    options: LoweringOptions
    raw_options: dict[str, str]
    routing: RoutingTrace | None = None
    dims: dict[str, int] = field(default_factory=dict)

    def expert_tensor(self, plan: LayerPlan, e: int, channel: int) -> TensorDecl:
        """Declare expert ``e`` of ``plan`` (gate/up/down stacked) on DRAM ``channel``, or on the
        host when the plan offloads it."""
        d = plan.decl
        if plan.resident is not None and not plan.resident[e]:
            channel = HOST_CHANNEL
        t = TensorDecl(
            f"{d.name}.e{e}", d.dtype, (3 if d.gated else 2, d.hidden, d.ffn), channel,
            plan.expert_bytes,
        )  # fmt: skip
        self.program.tensors.append(t)
        return t

    def expert_tensors(self, plan: LayerPlan, channels: Sequence[int]) -> None:
        """:meth:`expert_tensor` of every expert of ``plan``, expert ``e`` on ``channels[e]``:
        the layer's shape and bytes found once, and inside :func:`lowerings_shared` the
        declarations made once for every program that declares them alike."""
        d = plan.decl
        shape = (3 if d.gated else 2, d.hidden, d.ffn)
        nbytes = plan.expert_bytes
        resident = tuple(plan.resident) if plan.resident is not None else None
        key = ("experts", d.name, d.dtype, shape, nbytes, tuple(channels), resident)
        decls = _SHARED.get(key) if _SHARED is not None else None
        if not isinstance(decls, tuple):
            if resident is not None:
                channels = [c if resident[e] else HOST_CHANNEL for e, c in enumerate(channels)]
            decls = tuple(
                TensorDecl(f"{d.name}.e{e}", d.dtype, shape, c, nbytes)
                for e, c in enumerate(channels)
            )  # fmt: skip
            if _SHARED is not None:
                _SHARED[key] = decls
        self.program.tensors.extend(decls)

    def shared_tensors(self, plan: LayerPlan) -> None:
        """Declare one replica of the shared experts per DRAM channel (every die uses them)."""
        d = plan.decl
        if not d.shared_ffn:
            return
        for ch in self.target.channels:
            self.program.tensors.append(
                TensorDecl(
                    f"{d.name}.shared.ch{ch.id}",
                    d.dtype,
                    (3 if d.gated else 2, d.hidden, d.shared_ffn),
                    ch.id,
                    plan.shared_bytes,
                )  # fmt: skip
            )

    def policy(self, plan: LayerPlan, strategy: str, params: dict[str, object]) -> RuntimePolicy:
        """Add the runtime policy of ``plan``'s layer, with the slice sizes every expander needs."""
        full: dict = {"slice_bytes": list(plan.slice_bytes), **params}
        if plan.shared_layout is not None:
            full["shared_slice_bytes"] = list(plan.shared_slice_bytes)
        r = RuntimePolicy(plan.name, strategy, full)
        carry_pass_annotations(plan.layer, r)
        if plan.resident is not None:
            r.annotations["resident"] = list(plan.resident)
        self.program.runtime.append(r)
        return r

    def finish(self) -> None:
        """Check that the strategy gave every layer a policy."""
        have = {r.layer for r in self.program.runtime}
        for plan in self.plans:
            if plan.name not in have:
                raise StrategyError(f"strategy wrote no runtime policy for {plan.name}")


#: Per-expert annotations of the cost-aware passes that the runtime part carries.
RUNTIME_ANNOTATIONS = (
    "importance", "gate_mass", "routed_frac", "contribution", "quant_error", "resident",
)  # fmt: skip


def carry_pass_annotations(layer: MoELayer, r: RuntimePolicy) -> None:
    """Copy what passes decided into the runtime policy: the per-expert precision table
    (``assign-precision``), the skip rule (``skip-second``, ``caee-prune``: ``(rule, threshold)``)
    and the per-expert annotations of :data:`RUNTIME_ANNOTATIONS`."""
    E = layer.num_experts
    precision = layer.annotations.precision
    if isinstance(precision, list) and len(precision) == E:
        r.precision = tuple(str(p) for p in precision)
    rule = layer.annotations.skip_rule
    if rule is not None:
        r.skip = SkipRule(str(rule[0]), float(rule[1]))
    for key in RUNTIME_ANNOTATIONS:
        values = layer.annotations.per_expert(key, E)
        if values is not None:
            r.annotations[key] = values


def prepare(
    module: Module,
    target_ref: TargetRef,
    opts: LoweringOptions,
    raw_options: Mapping[str, str],
    *,
    routing: RoutingTrace | None = None,
    tokens: int | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | None = None,
    name: str | None = None,
    activations: str = "routed",
) -> Lowering:
    """Declarations, layouts, slots, islands and streams of ``module`` on the target;
    ``activations`` is the strategy's entry of :data:`ACTIVATION_KINDS`."""
    where = name or module.name
    target = load_target(target_ref.spec, dict(target_ref.overrides), base_dir=base_dir)
    ops = module.moe_ops()
    if not ops:
        raise ModelError("model has no MoE layer to lower", where)
    n_tokens, resolved = infer_tokens(module, ops, dims, tokens, routing, where)
    if routing is not None:
        layers = [(op.layer.num_experts, op.layer.top_k) for op in ops]
        _check_routing(routing, layers, n_tokens, target.num_dies)
    home = home_tokens(n_tokens, target.num_dies, routing)
    plans, slot_bytes = plan_layers(ops, target, opts, n_tokens, where, activations, home, routing)
    acts = max(p.activation_bytes() for p in plans)
    for die in target.dies:
        if opts.slots * slot_bytes + acts > die.sram_bytes:
            raise fit_error(die.id, acts, opts.slots * slot_bytes, die.sram_bytes, "", where)
    for i, plan in enumerate(plans):
        layer_routing = routing.layers[i] if routing is not None else None
        plan.resident = layer_residency(plan.layer, opts.resident, layer_routing)
        if plan.resident is not None and target.host is None:
            raise StrategyError(
                f"{plan.name} offloads {plan.resident.count(0)} experts to host memory, but "
                f"target {target.name} has no host tier (add one with --set host_gbps=...)",
                "--strategy",
            )
    islands = dense_islands(module, plans, resolved, n_tokens, plans[0].decl.dtype)
    program = Program(
        name=where,
        target=target_ref,
        layers=[p.decl for p in plans],
        layouts=[lay for p in plans for lay in (p.layout, p.shared_layout) if lay is not None],
        slots=[SlotPool(d.id, opts.slots, slot_bytes) for d in target.dies],
        islands=islands,
        streams=die_streams(target, plans, islands),
    )
    return Lowering(module, target, program, plans, opts, dict(raw_options), routing, resolved)
