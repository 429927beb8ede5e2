"""Devices to compile for: the local ones, or a TPU topology described without any TPU attached.

    devices, chip = topology_devices("v5p:2x2x4")   # 16 abstract TPU v5p devices, ChipSpec
    mesh = make_mesh(config.parallel.mesh, devices=devices)

A TPU topology comes from `jax.experimental.topologies.get_topology_desc(name, platform="tpu")`,
which needs libtpu (`pip install '.[tpu]'`) but no TPU: programs sharded over its devices lower
and compile for that pod slice on a CPU host, nothing is allocated, and `memory_analysis()`
reports what each chip would hold. Only one process at a time can load libtpu.

`ChipSpec` holds the public per-chip numbers the compile report compares against (HBM, peak
bfloat16 FLOP/s, HBM bandwidth), by `device_kind`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence

import jax

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One accelerator chip's budget.

    Attributes:
      name: e.g. "TPU v5p".
      hbm_bytes: memory per chip (device) in bytes.
      peak_flops: dense bfloat16 FLOP/s per chip.
      hbm_bandwidth: bytes/s per chip.
    """

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float


# Public per-chip figures (Cloud TPU system architecture pages), keyed by jax `device_kind`.
TPU_CHIPS: dict[str, ChipSpec] = {
    "TPU v4": ChipSpec("TPU v4", 32 * GIB, 275e12, 1228e9),
    "TPU v5 lite": ChipSpec("TPU v5e", 16 * GIB, 197e12, 819e9),
    "TPU v5": ChipSpec("TPU v5p", 95 * GIB, 459e12, 2765e9),
    "TPU v6 lite": ChipSpec("TPU v6e", 32 * GIB, 918e12, 1640e9),
}

# A CPU "device" (one of --xla_force_host_platform_device_count fake devices, or the host): its
# share of host memory; FLOP/s and bandwidth are nominal figures of a 2-core x86 host (its
# measured float32 GEMM peak, README), for the report's roofline column only.
CPU_HOST_FLOPS = 1.8e11
CPU_HOST_BANDWIDTH = 1.0e10


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_chip_spec(num_devices: int) -> ChipSpec:
    """The host's memory, FLOP/s and bandwidth split evenly over `num_devices` CPU devices."""
    n = max(num_devices, 1)
    return ChipSpec("cpu", _host_memory_bytes() // n, CPU_HOST_FLOPS / n, CPU_HOST_BANDWIDTH / n)


def libtpu_available() -> bool:
    """Whether libtpu is installed (the `tpu` extra), without loading it."""
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> tuple[Sequence[jax.Device], ChipSpec]:
    """The devices of `topology` and their chip's budget.

    Args:
      topology: "cpu" (this process's devices) or a TPU topology name such as "v5p:2x2x4",
        "v5p:2x4x4", "v6e:4x8", "v5e:4x4" (jax's `get_topology_desc` names).

    Raises:
      ValueError: naming the topology when libtpu is missing, the name is unknown, or the chip
        kind has no `ChipSpec`.
    """
    if topology == "cpu":
        devices = jax.devices()
        return devices, cpu_chip_spec(len(devices))
    if not libtpu_available():
        raise ValueError(
            f"--topology={topology}: compiling for a TPU topology needs libtpu "
            "(pip install '.[tpu]'); use --topology=cpu for this machine's devices"
        )
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as e:  # libtpu raises several types for an unknown name
        raise ValueError(f"--topology={topology}: not a TPU topology libtpu knows: {e}") from e
    devices = list(description.devices)
    kind = devices[0].device_kind
    if kind not in TPU_CHIPS:
        raise ValueError(
            f"--topology={topology}: no chip budget for device kind {kind!r} (known: "
            f"{sorted(TPU_CHIPS)}); pass --hbm_gib"
        )
    return devices, TPU_CHIPS[kind]
