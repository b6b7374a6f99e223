"""The best dense matmul FLOP/s this machine reaches, per dtype: the ceiling MFU is measured against.

On a GPU the datasheet peak is the convention (``app/flops.py``); a CPU has no such number
(it depends on cores, clocks and which matrix units the BLAS uses), so Sprout measures it:
square matmuls of several sizes, repeated, the best time of each kept. Put the result in a
recipe as ``monitor.peak_flops`` to log MFU without measuring at every start:

    python -m tools.bench_peak                       # fp32 and bf16 on this CPU
    python -m tools.bench_peak --dtypes [bfloat16] --seconds 2
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from jsonargparse import auto_cli

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_flops(n: int, dtype: torch.dtype, seconds: float, device: str = "cpu") -> float:
    """Best FLOP/s of an ``n x n @ n x n`` matmul over repeats lasting about ``seconds``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # first call: library initialisation and kernel choice
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_peak(
    dtypes: list[str] = ["float32", "bfloat16"],
    sizes: list[int] = [256, 512, 1024, 2048, 4096],
    seconds: float = 1.0,
    device: str = "cpu",
    json_out: Path | None = None,
) -> dict[str, float]:
    """Print matmul TFLOP/s per size and dtype and the peak (the best) of each dtype.

    Args:
        dtypes: which dtypes to measure.
        sizes: square matrix sizes.
        seconds: time spent on each size (the best repeat counts).
        device: cpu or cuda.
        json_out: also write ``{dtype: peak FLOP/s}`` to this file.
    """
    print(f"device: {device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'size':>6}" + "".join(f"{d:>12}" for d in dtypes) + "   (TFLOP/s)")
    peaks = {d: 0.0 for d in dtypes}
    for n in sizes:
        row = []
        for name in dtypes:
            flops = matmul_flops(n, DTYPES[name], seconds, device)
            peaks[name] = max(peaks[name], flops)
            row.append(flops)
        print(f"{n:>6}" + "".join(f"{f / 1e12:>12.3f}" for f in row))
    print(f"{'peak':>6}" + "".join(f"{peaks[d] / 1e12:>12.3f}" for d in dtypes))
    for name in dtypes:
        print(f"monitor.peak_flops for {name}: {peaks[name]:.3e}")
    if json_out is not None:
        Path(json_out).write_text(json.dumps(peaks, indent=1))
    return peaks


if __name__ == "__main__":
    auto_cli(bench_peak)
