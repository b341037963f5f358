"""Combined options for ``--strategy auto``: refine the best measured candidate one option at a time.

The first stage of the search (:func:`moec.auto.search`) tries every strategy with its defaults
and variants that each change *one* option (slots, slices, placement, a hybrid split). Where two
options both pay (Yuan2.0-M32, 256 tokens on fsedp-2x2: 32 micro-slices fill the MAC array's
folds, and with six slots instead of four the DRAM channels stall less on hot experts' compute),
no single variant has both. :func:`refine` therefore starts from the best measured candidate and
tries its **neighbours** (:func:`neighbours`), each the winner with one option changed and the
others kept (its micro-slice count pinned to the one it was lowered with, so that changing the
slots does not also change the cut):

- ``slots``: each of :data:`SLOTS` (deeper prefetch, or fewer, larger slots);
- ``slices``: the counts next to its own whose cut costs the least compute (MAC-array folds
  filled, :func:`moec.slice_variants.cheapest_counts`; for TP a multiple of the die count, as
  its lowering re-cuts);
- FSE-DP's central load order (``order``: :data:`ORDERS`) and trajectory cycle;
- Hydra's per-die cap (``cap=none``), for EP block placement, for TP the balanced slice order
  (``order=balanced``, :mod:`moec.backends.interp.expand.tp_order`: hot slices spread among
  cold ones; not TP's default, it is slower where corner channels serve several dies, 3x3
  1024 tokens);
- with chunked token dispatch (``window=``), the token chunk (:func:`chunk_neighbours`): the
  ``chunk=256`` of the listed candidates was found on one batch, and on another of the same
  distribution the next finer chunk can be far faster (Phi-3.5-MoE, 1024 tokens, Zipf 1.0 seed 1
  on fsedp-2x2: ``tp{window=1,chunk=256}`` 109.61 ms, ``chunk=128`` 70.82 ms). Its micro-slice
  count is not pinned: the chunk sets the SRAM the slots may take, so the cut is chosen again.

Each neighbour is lowered and bounded like any candidate; those whose bound is below the best
measured latency are run by the interpreter in ascending bound (ties: neighbour order), within
what is left of ``--search-budget``. Each round refines the fastest measured trial not yet
refined: the new winner if the last round found one, else the runner-up (Qwen3-30B-A3B, 256
tokens, Zipf 1.6 on fsedp-2x2: ``tp{slots=8}`` wins the first stage at 12.64 ms; the runner-up
``tp{slices=fit}``, 4 slices, takes 12.61 ms with five slots), for at most :data:`ROUNDS`
rounds. The neighbour lists are fixed given the trials, so the search stays deterministic.
Only ``--objective latency`` refines (the bound that decides what runs is a latency bound).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from moec.compiler.lower import parse_strategy
from moec.ir.routing import RoutingTrace
from moec.ir.target import Target
from moec.slice_variants import cheapest_counts, spell

if TYPE_CHECKING:
    from moec.auto import Trial

#: Slot counts a neighbour may take.
SLOTS = (4, 5, 6, 8)
#: The lowerings' slot count when none is given.
DEFAULT_SLOTS = 4
#: FSE-DP's central load orders and trajectory cycles.
ORDERS = ("natural", "paired", "balanced")
CYCLES = ("spiral", "rowmajor")
#: Token chunks a chunked-dispatch neighbour may take (:func:`chunk_neighbours`).
CHUNKS = (64, 128, 256, 512)
#: Rounds of refinement at most (each from the fastest measured trial not yet refined).
ROUNDS = 4
#: Strategies :func:`neighbours` knows the options of.
REFINED = ("ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired", "fsedp-r5")
_FSEDP_DEFAULTS = {
    "fsedp": {"order": "natural"},
    "fsedp-paired": {"order": "paired"},
    "fsedp-r5": {"order": "paired"},
}


def neighbours(trial: Trial, target: Target, routing: RoutingTrace) -> list[tuple[str, str]]:
    """``(spec, what changed)`` for each neighbour of the lowered ``trial`` (module doc), in a
    fixed order: slots, slices, then the strategy's own options. Empty for a strategy not in
    :data:`REFINED` or an unlowered trial."""
    name, opts = parse_strategy(trial.strategy)
    program = trial.program
    if name not in REFINED or program is None or not program.layers:
        return []
    layer = program.layers[0]
    layout = program.layout(layer.name)
    if layout is None:
        return []
    pinned = dict(opts)
    if opts.get("slices", "auto") == "auto":
        pinned["slices"] = str(layout.count)
        shared = next(
            (lay for lay in program.layouts if lay.layer == layer.name and lay.shared), None
        )
        if shared is not None and "shared_slices" not in opts:
            pinned["shared_slices"] = str(shared.count)
    out: list[tuple[str, str]] = []
    slots = int(opts.get("slots", str(DEFAULT_SLOTS)))
    for s in SLOTS:
        if s != slots:
            with_slots = {**pinned, "slots": str(s)} if s != DEFAULT_SLOTS else _without(pinned)
            out.append((spell(name, with_slots), f"slots={s}"))
    multiple = target.num_dies if name == "tp" else 1
    for k in cheapest_counts(target, layer, routing, layout.count, multiple):
        out.append((spell(name, {**opts, "slices": str(k)}), f"slices={k}"))
    if name in _FSEDP_DEFAULTS:
        mine = {**_FSEDP_DEFAULTS[name], **opts}
        for key, values in (("order", ORDERS), ("cycle", CYCLES)):
            now = mine.get(key, values[0])
            out += [(_fsedp(name, pinned, key, v), f"{key}={v}") for v in values if v != now]
    elif name == "hydra" and opts.get("cap") != "none":
        out.append((spell(name, {**pinned, "cap": "none"}), "cap=none"))
    elif name == "ep" and "placement" not in opts:
        out.append((spell(name, {**pinned, "placement": "blocks"}), "placement=blocks"))
    elif name == "tp" and opts.get("order", "natural") == "natural":
        out.append((spell(name, {**pinned, "order": "balanced"}), "order=balanced"))
    if "window" in opts:
        shared = any(lay.shared for lay in program.layouts if lay.layer == layer.name)
        out += chunk_neighbours(name, opts, routing, shared)
    return out


def chunk_neighbours(
    name: str, opts: dict[str, str], routing: RoutingTrace, shared: bool = False
) -> list[tuple[str, str]]:  # fmt: skip
    """The chunks of :data:`CHUNKS` next to ``opts``' own (``chunk=`` given, else one chunk per
    expert: the most tokens any expert of the first MoE layer receives, every token when the
    layer has shared experts), the finer one and the coarser one, each only if it still cuts
    some expert's tokens (a chunk at least that large changes nothing)."""
    most = routing.tokens if shared else int(routing.layers[0].expert_load().max(initial=0))
    now = int(opts.get("chunk", most))
    picks = [c for c in CHUNKS if c < now][-1:] + [c for c in CHUNKS if now < c < most][:1]
    return [(spell(name, {**opts, "chunk": str(c)}), f"chunk={c}") for c in picks]


def _fsedp(name: str, opts: dict[str, str], key: str, value: str) -> str:
    """The FSE-DP spec with ``key=value``, spelled as the named strategy whose default it is
    (``fsedp-paired`` with the natural order is ``fsedp``, and ``fsedp`` with the paired order
    ``fsedp-paired``), so the same schedule has one name."""
    if key == "order" and "r5" not in opts and name in ("fsedp", "fsedp-paired"):
        named = {"natural": "fsedp", "paired": "fsedp-paired"}.get(value)
        if named is not None:
            return spell(named, {k: v for k, v in opts.items() if k != "order"})
    return spell(name, {**opts, key: value})


def _without(opts: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in opts.items() if k != "slots"}


def refine(
    trials: list[Trial],
    best: Trial,
    make: Callable[[str], Trial],
    confirm: Callable[[Trial], bool],
    runs_left: int,
    target: Target,
    routing: RoutingTrace,
) -> tuple[Trial, int]:
    """Refine ``best`` (module doc): append each new neighbour to ``trials`` (``make`` lowers
    and bounds one spec into a :class:`~moec.auto.Trial`), run the promising ones with
    ``confirm`` while ``runs_left`` lasts; the best measured trial and the runs spent."""
    have = {t.strategy for t in trials}
    runs = 0
    done: set[int] = set()  # the trials already refined (by id)
    for _ in range(ROUNDS):
        measured = sorted(
            (k for k, t in enumerate(trials) if t.status == "measured" and id(t) not in done),
            key=lambda k: (trials[k].measured_s, k),
        )
        if not measured or runs >= runs_left:
            break
        base = trials[measured[0]]
        done.add(id(base))
        new: list[Trial] = []
        for spec, change in neighbours(base, target, routing):
            if spec in have:
                continue
            have.add(spec)
            tr = make(spec)
            tr.origin = f"{change} on {base.strategy}"
            trials.append(tr)
            new.append(tr)
        ranked = sorted(
            (t for t in new if t.predicted_s is not None),
            key=lambda t: (t.predicted_s, new.index(t)),
        )
        for tr in ranked:
            assert tr.predicted_s is not None and best.measured_s is not None
            if tr.predicted_s >= best.measured_s:
                tr.status = "pruned: its bound is no better than the best measured latency"
                continue
            twin = next(
                (t for t in trials if t.measured_s is not None and t.program == tr.program), None
            )
            if twin is not None:  # the same program as one already run (e.g. pinned defaults)
                tr.measured_s, tr.energy_j, tr.layers_s = (
                    twin.measured_s,
                    twin.energy_j,
                    twin.layers_s,
                )
                tr.peak_sram_bytes = twin.peak_sram_bytes
                tr.status = f"the same program as {twin.strategy}"
                continue
            if runs >= runs_left:
                tr.status = "not run: search budget spent"
                continue
            runs += 1
            if confirm(tr) and tr.measured_s is not None and tr.measured_s < best.measured_s:
                best = tr
    return best, runs
