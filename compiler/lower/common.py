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

from collections.abc import Mapping
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
    "parse_int", "predicted_activations", "prepare", "resolve_dims", "value_sizes",
]  # fmt: skip


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
        validate(routing, layers, n_tokens, num_dies=target.num_dies, where="--routing")
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
