"""Accelerators: peak dense FLOP/s, HBM and interconnect per chip, from the vendors' data (`CHIP_SOURCES`). The one
table behind the planner's roofline (`train/plan.py`) and the MFU the trainer and the step bench report."""

import dataclasses

CHIP_SOURCES = {
    "nvidia": "NVIDIA H100 / H200 / A100 SXM datasheets (dense BF16 tensor-core peak; HBM; NVLink per GPU); DGX "
              "H100 / A100 user guides (one 400 / 200 Gb/s InfiniBand port per GPU)",
    "tpu": "cloud.google.com/tpu/docs/v4, v5e, v5p, v6e (peak bf16 per chip, HBM capacity and bandwidth, ICI)",
}


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator: peak dense FLOP/s (bf16, and fp32 as the tensor cores run it), HBM bytes and bytes/s, the
    per-device collective bandwidth in one direction (NVLink / ICI), devices per node and the per-device network
    bandwidth between nodes (GPUs; 0: the whole slice is one ICI domain)."""

    name: str
    peak_bf16: float
    peak_fp32: float
    hbm_bytes: float
    hbm_bw: float
    link_bw: float
    node_size: int
    network_bw: float
    source: str

    def peak(self, dtype):
        return self.peak_bf16 if dtype == "bfloat16" else self.peak_fp32


GB = 1e9
GiB = 2 ** 30
CHIPS = {c.name: c for c in (
    # NVLink 4: 900 GB/s per GPU both directions; NDR InfiniBand 400 Gb/s per GPU
    Chip("h100", 989.4e12, 494.7e12, 80 * GB, 3.35e12, 450 * GB, 8, 50 * GB, CHIP_SOURCES["nvidia"]),
    Chip("h200", 989.4e12, 494.7e12, 141 * GB, 4.8e12, 450 * GB, 8, 50 * GB, CHIP_SOURCES["nvidia"]),
    # NVLink 3: 600 GB/s both directions; HDR InfiniBand 200 Gb/s per GPU
    Chip("a100", 312e12, 156e12, 80 * GB, 2.039e12, 300 * GB, 8, 25 * GB, CHIP_SOURCES["nvidia"]),
    # TPU: one direction of the ICI bandwidth per chip (v4: the pod's 1.1 PB/s all-reduce bandwidth / 4096 chips;
    # v5e 400, v5p 1200, v6e 800 GB/s bidirectional per chip). float32 matmuls run as multi-pass bf16: peak/3.
    Chip("v4", 275e12, 275e12 / 3, 32 * GiB, 1.2e12, 268 * GB, 0, 0.0, CHIP_SOURCES["tpu"]),
    Chip("v5e", 197e12, 197e12 / 3, 16 * GB, 0.819e12, 200 * GB, 0, 0.0, CHIP_SOURCES["tpu"]),
    Chip("v5p", 459e12, 459e12 / 3, 95 * GB, 2.765e12, 600 * GB, 0, 0.0, CHIP_SOURCES["tpu"]),
    Chip("v6e", 918e12, 918e12 / 3, 32 * GB, 1.638e12, 400 * GB, 0, 0.0, CHIP_SOURCES["tpu"]),
)}

# `jax.Device.device_kind` substrings → chip, most specific first ("TPU v5 lite" before "TPU v5").
DEVICE_KINDS = (("H100", "h100"), ("H200", "h200"), ("A100", "a100"), ("TPU v4", "v4"), ("TPU v5 lite", "v5e"),
                ("TPU v5e", "v5e"), ("TPU v5", "v5p"), ("TPU v6", "v6e"))


def chip_of(device_kind):
    """The Chip a `jax.Device.device_kind` names, or None (CPUs, unlisted parts)."""
    for part, name in DEVICE_KINDS:
        if part.lower() in device_kind.lower():
            return CHIPS[name]
    return None


def peak_flops(device_kind, dtype):
    """Peak FLOP/s of one device of `device_kind` at `dtype` ("bfloat16", else the fp32 rate), or None when
    unknown."""
    chip = chip_of(device_kind)
    return chip.peak(dtype) if chip else None
