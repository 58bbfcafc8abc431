"""What a host's numerics depend on: the runtime that computes the scores, its version, the device,
and the CPU instruction sets kernels dispatch on. Two hosts with the same fingerprint compute the
same scores from the same inputs; hosts with different ones may not (an AVX-512 VNNI CPU rounds
INT8 convolutions differently from an AVX2 one)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

# CPU feature flags that change which kernels ONNX Runtime and torch dispatch to (integer dot
# products, FP16/BF16 arithmetic, vector widths, matrix units); other flags do not touch numerics.
KERNEL_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)

# Set to 1, every stored fingerprint counts as another host's, so each model's load takes the
# path a host with other kernels takes (recalibration, or what its mode says). A host whose
# fingerprint matches the shipped one never runs that path otherwise; this lets any machine
# (CI included) run the suite as a foreign host.
FOREIGN_HOST_ENV = "GUARD_FOREIGN_HOST"


def foreign_host() -> bool:
    """Whether this process treats every stored fingerprint as foreign (GUARD_FOREIGN_HOST)."""
    return os.environ.get(FOREIGN_HOST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def same_runtime(stored: str | None, host: str) -> bool:
    """Whether thresholds stored under fingerprint id `stored` hold on this host's `host`."""
    return stored == host and not foreign_host()


# Environment variables that steer oneDNN's and MKL's kernel choice (torch's convolutions and
# matrix products go through them): each changes torch's float results on the same CPU, so a set
# one is part of the fingerprint. (ATEN_CPU_CAPABILITY shows in torch_cpu_capability.)
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The kernel-relevant flags of this CPU (Linux /proc/cpuinfo; empty where it is not readable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(set(value.split()) & set(KERNEL_FLAGS))
    return []


def runtime_fingerprint(backend_description: str, device: torch.device) -> dict[str, object]:
    """Everything the guard's scores depend on besides the model and the inputs."""
    import onnxruntime

    fingerprint: dict[str, object] = {
        "backend": backend_description,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device.type,
    }
    steering = {name: os.environ[name] for name in KERNEL_ENV if os.environ.get(name)}
    if steering:  # only when set, so that the fingerprints of unsteered hosts stay as they were
        fingerprint["kernel_env"] = steering
    if device.type == "cuda":
        index = device.index or 0
        fingerprint["cuda_device"] = torch.cuda.get_device_name(index)
        fingerprint["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    return fingerprint


def fingerprint_id(fingerprint: dict[str, object]) -> str:
    """A short stable id of a fingerprint, for configs, logs and metric labels."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
