"""Transfer costs: DRAM channels, die-to-die links, the host tier.

Every transfer has a *time* (until its data has arrived, on an idle package) and an
*occupancy* (how long it holds its resource; what queueing and utilization count). Access
latency is pipelined: a DMA engine keeps several requests outstanding, so latency delays one
transfer's arrival and overlaps the next one's data; it is in the time, not the occupancy.

Calibrated (non-ideal) terms, each a target value (:mod:`moec.ir.hardware`, sources in
``docs/targets.md``):

- **DMA setup** ``s``: every transfer first spends the die's ``dma_setup_s`` on its descriptor,
  holding the resource it feeds, so 45 small loads pay it 45 times where 9 large ones pay 9;
- **DRAM**: a channel moves whole bursts at a sustained fraction of its pin bandwidth:
  ``occupancy = s + ceil(bytes / burst) x burst / (gbps x efficiency)``;
- **links** (D2D and host): the wire carries flits of ``payload`` data plus ``overhead``
  header/CRC bytes, at least ``min`` bytes of payload per transfer:
  ``occupancy = s + ceil(max(bytes, min) / payload) x (payload + overhead) / gbps``;
- a **route** (cut-through) or a **load from another die's channel**: one setup, then the data
  streams at the slowest resource: ``time = sum(latencies) + s + max(data time of each
  resource)``; each link is held only for its own data time (:func:`link_data_time`).

With ``target.ideal``: no setup, no bursts, no framing, pin bandwidth (the first-wave model):
``occupancy = bytes / gbps``, ``time = latency + bytes / gbps``; a route or remote load
``sum(latencies) + bytes / min(bandwidths)``.

Units: bytes, seconds; GB/s means 1e9 bytes per second.
"""

from __future__ import annotations

import math

from moec.ir.errors import TargetError
from moec.ir.target import Channel, Target

GB = 1e9


def _channel(target: Target, channel: int | Channel) -> Channel:
    return target.channel(channel) if isinstance(channel, int) else channel


def dma_setup_time(target: Target, die: int) -> float:
    """Seconds of DMA descriptor setup per transfer issued near ``die`` (0 on an ideal target)."""
    return 0.0 if target.ideal else target.die(die).costs.dma_setup_s


def dram_data_time(target: Target, channel: int | Channel, nbytes: float) -> float:
    """Seconds channel ``channel`` streams ``nbytes`` (whole bursts, sustained efficiency)."""
    ch = _channel(target, channel)
    if target.ideal:
        return float(nbytes) / (ch.gbps * GB)
    bursts = math.ceil(float(nbytes) / ch.burst_bytes) if nbytes > 0 else 0
    return bursts * ch.burst_bytes / (ch.gbps * GB * ch.efficiency)


def dram_occupancy(target: Target, channel: int | Channel, nbytes: float) -> float:
    """Seconds a read of ``nbytes`` holds its channel: DMA setup (at the channel's die) + data."""
    ch = _channel(target, channel)
    return dma_setup_time(target, ch.die) + dram_data_time(target, ch, nbytes)


def dram_time(target: Target, channel: int | Channel, nbytes: float) -> float:
    """Seconds to read ``nbytes`` on one idle DRAM channel: latency + occupancy."""
    ch = _channel(target, channel)
    return ch.latency_s + dram_occupancy(target, ch, nbytes)


def typical_dram_time(target: Target, nbytes: float) -> float:
    """Seconds to read ``nbytes`` from a typical channel, for plans made before placement.

    Ideal machine: the first channel's latency plus the bytes at the mean channel bandwidth;
    calibrated: :func:`dram_time` on the first channel (bursts, efficiency, DMA setup). 0 without
    DRAM.
    """
    channels = target.channels
    if not channels:
        return 0.0
    if target.ideal:
        gbps = target.total_dram_gbps() / len(channels)
        return channels[0].latency_s + float(nbytes) / (gbps * GB) if gbps > 0 else 0.0
    return dram_time(target, channels[0], nbytes)


def link_data_time(target: Target, src: int, dst: int, nbytes: float) -> float:
    """Seconds the direct link ``src -> dst`` carries ``nbytes`` of data (framed)."""
    lk = target.link(src, dst)
    if target.ideal:
        return float(nbytes) / (lk.gbps * GB)
    return lk.framing.wire_bytes(nbytes) / (lk.gbps * GB)


def link_occupancy(target: Target, src: int, dst: int, nbytes: float) -> float:
    """Seconds a one-hop transfer (send/recv) holds link ``src -> dst``: setup + data."""
    return dma_setup_time(target, src) + link_data_time(target, src, dst, nbytes)


def link_time(target: Target, src: int, dst: int, nbytes: float) -> float:
    """Seconds to move ``nbytes`` over the idle direct link ``src -> dst`` (one hop)."""
    return target.link(src, dst).latency_s + link_occupancy(target, src, dst, nbytes)


def _route_links(target: Target, a: int, b: int) -> list[tuple[int, int]]:
    path = target.route(a, b)
    return list(zip(path, path[1:], strict=False))


def transfer_time(target: Target, a: int, b: int, nbytes: float) -> float:
    """Seconds to move ``nbytes`` from die ``a`` to die ``b`` along ``target.route`` (cut-through).

    Zero when ``a == b``.
    """
    hops = _route_links(target, a, b)
    if not hops:
        return 0.0
    links = [target.link(s, d) for s, d in hops]
    if target.ideal:
        return sum(lk.latency_s for lk in links) + float(nbytes) / (
            min(lk.gbps for lk in links) * GB
        )
    data = max(link_data_time(target, s, d, nbytes) for s, d in hops)
    return sum(lk.latency_s for lk in links) + dma_setup_time(target, a) + data


def route_data_time(target: Target, a: int, b: int, nbytes: float) -> float:
    """Seconds ``nbytes`` stream along ``target.route(a, b)`` at its slowest link, no latency
    and no setup (0 when ``a == b``): ideal ``nbytes / min(gbps)``, calibrated the slowest
    link's framed data time."""
    hops = _route_links(target, a, b)
    if not hops:
        return 0.0
    if target.ideal:
        return float(nbytes) / (min(target.link(s, d).gbps for s, d in hops) * GB)
    return max(link_data_time(target, s, d, nbytes) for s, d in hops)


def load_time(target: Target, channel: int | Channel, die: int, nbytes: float) -> float:
    """Seconds until ``nbytes`` read from ``channel`` have arrived in ``die``, on an idle package.

    :func:`dram_time` when the channel is on ``die``; otherwise the read streams through
    ``target.route(channel.die, die)`` cut-through (module doc). This is what the interpreter
    times a ``load`` at when nothing else holds the channel or the links.
    """
    ch = _channel(target, channel)
    hops = _route_links(target, ch.die, die)
    links = [target.link(s, d) for s, d in hops]
    lat = ch.latency_s + sum(lk.latency_s for lk in links)
    if target.ideal:
        return lat + float(nbytes) / (min([ch.gbps, *(lk.gbps for lk in links)]) * GB)
    data = max(
        [
            dram_data_time(target, ch, nbytes),
            *(link_data_time(target, s, d, nbytes) for s, d in hops),
        ]
    )
    return lat + dma_setup_time(target, ch.die) + data


def host_occupancy(target: Target, nbytes: float, die: int = 0) -> float:
    """Seconds a host transfer of ``nbytes`` holds ``die``'s host link: setup + framed data."""
    if target.host is None:
        raise TargetError(f"target {target.name!r} has no host tier")
    if target.ideal:
        return float(nbytes) / (target.host.gbps * GB)
    wire = target.host.framing.wire_bytes(nbytes)
    return dma_setup_time(target, die) + wire / (target.host.gbps * GB)


def host_time(target: Target, nbytes: float, die: int = 0) -> float:
    """Seconds to move ``nbytes`` between host memory and ``die`` over its idle host link."""
    if target.host is None:
        raise TargetError(f"target {target.name!r} has no host tier")
    return target.host.latency_s + host_occupancy(target, nbytes, die)
