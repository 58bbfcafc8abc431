"""Prints the environment assignments that put torch on the next lower CPU kernel set than this
host's (AVX-512 -> AVX2 -> the portable default), for `make test-foreign-host`: torch's own
kernels through ATEN_CPU_CAPABILITY, and oneDNN's and MKL's (convolutions and matrix products),
which ignore it. Prints nothing on a host already at the default kernels."""

from __future__ import annotations

import platform

import torch

LOWER = {
    "AVX512": ("avx2", "AVX2", "AVX2"),
    "AVX512_BF16": ("avx2", "AVX2", "AVX2"),
    "AVX2": ("default", "SSE41", "SSE4_2"),
}


def main() -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in LOWER or platform.machine() not in ("x86_64", "AMD64"):
        return
    aten, onednn, mkl = LOWER[capability]
    print(f"ATEN_CPU_CAPABILITY={aten} ONEDNN_MAX_CPU_ISA={onednn} MKL_ENABLE_INSTRUCTIONS={mkl}")


if __name__ == "__main__":
    main()
