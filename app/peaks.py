"""Peak FLOP/s of a device, the denominator of MFU and HFU (``app.callbacks.monitor``)."""

from __future__ import annotations

import time

import torch

# Dense peak FLOP/s per device (vendor datasheets, SXM parts, no sparsity).
GPU_PEAKS: dict[str, dict[torch.dtype, float]] = {
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 156e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 494e12},
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 494e12},
}


def gpu_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """The datasheet peak of a known GPU, or ``None`` when the GPU is not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS.items():
        if key in name:
            return peaks.get(dtype)
    return None


def measured_matmul_peak(
    dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 0.5, device: str = "cpu"
) -> float:
    """The best dense matmul FLOP/s this device reaches: the practical ceiling for MFU on CPU."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        (a @ b).sum().item()
        dt = time.perf_counter() - t0
        best = max(best, 2 * size**3 / dt)
        if time.perf_counter() > deadline:
            return best
