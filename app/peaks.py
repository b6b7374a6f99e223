"""Peak FLOP/s of a device, the denominator of MFU and HFU (``sprout.callbacks.monitor``)."""

from __future__ import annotations

import time

import torch


# Dense (no sparsity) tensor-core peak FLOP/s from NVIDIA's datasheets, which print the 2:4
# sparse figures for TF32/BF16/FP16 (marked *); the dense ones are half of those. "tf32" is
# fp32 matmul on tensor cores, "fp32" the true single-precision (CUDA-core) peak.
#   A100: "NVIDIA A100 Tensor Core GPU" datasheet (SXM and PCIe alike): FP32 19.5, TF32 156,
#         BF16/FP16 312 TFLOPS.
#   H100 SXM / PCIe / NVL: "NVIDIA H100 Tensor Core GPU" datasheet: FP32 67 / 51 / 60, TF32
#         989* / 756* / 835*, BF16 and FP16 1,979* / 1,513* / 1,671* TFLOPS.
#   H200 SXM / NVL: "NVIDIA H200 Tensor Core GPU" datasheet: FP32 67 / 60, TF32 989* / 835*,
#         BF16 and FP16 1,979* / 1,671* TFLOPS.
def _row(fp32: float, tf32: float, half: float) -> dict[str, float]:
    return {"fp32": fp32 * 1e12, "tf32": tf32 * 1e12, "bf16": half * 1e12, "fp16": half * 1e12}


# (part of the name torch.cuda.get_device_name reports, peaks): the first match wins, so the
# more specific names come first (a name with just "H100", e.g. "NVIDIA H100 80GB HBM3", is SXM).
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("A100", _row(19.5, 156, 312)),
    ("H100 NVL", _row(60, 835 / 2, 1671 / 2)),
    ("H100 PCIe", _row(51, 756 / 2, 1513 / 2)),
    ("H100", _row(67, 989 / 2, 1979 / 2)),
    ("H200 NVL", _row(60, 835 / 2, 1671 / 2)),
    ("H200", _row(67, 989 / 2, 1979 / 2)),
]


def precision_key(dtype: torch.dtype) -> str | None:
    """The datasheet column a matmul in ``dtype`` runs at: fp32 at the TF32 peak unless
    ``torch.get_float32_matmul_precision()`` is ``highest`` (on CUDA "medium" runs as "high", TF32)."""
    if dtype == torch.float32:
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)


def peak_for_name(name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak of the GPU called ``name`` in ``dtype``, or ``None`` when it is not listed."""
    key = precision_key(dtype)
    for part, peaks in GPU_PEAKS:
        if part in name:
            return peaks.get(key)
    return None


def gpu_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    """The datasheet peak of a known GPU, or ``None`` when the GPU is not in the table."""
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device), dtype)


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
