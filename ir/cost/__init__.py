"""The cost model: the one place where the machine's formulas live.

Compiler decisions (placement, slice counts, precision plans, CAEE pruning), the FSE-DP
scheduler and the interpreter's instruction durations all call these functions on the same
:class:`~moec.ir.target.Target`; contention (queueing on links, channels and compute) is what the
interpreter adds on top. Each function is a pure formula over an *idle* resource.

- :mod:`moec.ir.cost.compute`: GEMMs on systolic MAC arrays (SCALE-Sim v3's accounting),
  activations and accumulation on the vector unit, instruction issue;
- :mod:`moec.ir.cost.transfer`: DRAM (bursts, sustained efficiency), D2D and host links
  (flit framing), DMA setup, cut-through routes and remote loads;
- :mod:`moec.ir.cost.bound`: the analytic lower bound of an MoE layer iteration (pin bandwidth,
  peak FLOPs);
- :mod:`moec.ir.cost.floor`: the any-schedule floor of an MoE layer iteration on the calibrated
  machine (sustained bandwidth, DMA setup, the best GEMM efficiency each expert's shape allows).

``target.ideal`` reduces every formula to the first-wave model (GEMMs at peak, no fixed costs,
pin bandwidth), bit for bit. Units: bytes, seconds, FLOPs (2 per multiply-accumulate); GB/s means
1e9 bytes per second. ``docs/targets.md`` lists every formula with its parameters' sources.
"""

from moec.ir.cost.bound import LayerBound, layer_bound, lower_bound, moe_layer_bound
from moec.ir.cost.compute import (
    ACCUM_VECTOR_OPS,
    ACTIVATION_OPS,
    accum_time,
    act_time,
    bytes_per_element,
    compute_time,
    dense_time,
    gemm_cycles,
    gemm_time,
    issue_time,
    slice_activation,
    slice_compute_time,
    vector_cycles,
)
from moec.ir.cost.floor import ScheduleFloor, schedule_floor
from moec.ir.cost.transfer import (
    GB,
    dma_setup_time,
    dram_data_time,
    dram_occupancy,
    dram_time,
    host_occupancy,
    host_time,
    link_data_time,
    link_occupancy,
    link_time,
    load_time,
    route_data_time,
    transfer_time,
    typical_dram_time,
)

__all__ = [
    "slice_activation",
    "slice_compute_time",
    "ACCUM_VECTOR_OPS", "ACTIVATION_OPS", "GB", "LayerBound", "ScheduleFloor", "schedule_floor", "accum_time", "act_time",
    "bytes_per_element", "compute_time", "dense_time", "dma_setup_time", "dram_data_time",
    "dram_occupancy", "dram_time", "gemm_cycles", "gemm_time", "host_occupancy", "host_time",
    "issue_time", "layer_bound", "link_data_time", "link_occupancy", "link_time", "load_time",
    "lower_bound", "moe_layer_bound", "route_data_time", "transfer_time", "typical_dram_time",
    "vector_cycles",
]  # fmt: skip
