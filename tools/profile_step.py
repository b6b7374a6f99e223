"""Where one training step of a ``tools/bench_train.py`` candidate spends its time, against the matmul peak.

Builds the candidate exactly as ``bench_train`` does, runs ``warmup`` steps (compilation), then
profiles ``steps`` more with ``torch.profiler`` and prints the ops by self CPU time (Inductor's
fused kernels by name), the matmuls' share of the step and the FLOP/s they reach against this
CPU's dense matmul peak (``tools/bench_peak.py``): a step whose matmuls already run near the peak
can only get faster by doing fewer of them, one far below it by running them better.

    python -m tools.profile_step                                         # sprout, bf16, reference shape, 1 thread
    python -m tools.profile_step --candidate litgpt-compiled --litgpt_python .venv-litgpt/bin/python
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MATMUL_OPS = (
    "aten::mm",
    "aten::bmm",
    "aten::addmm",
    "aten::matmul",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
)


def worker(
    candidate: str,
    shape_name: str,
    dtype: str,
    batch: int,
    seq_len: int,
    threads: int,
    warmup: int,
    steps: int,
    rows: int,
) -> dict:
    import torch
    import torch._inductor.config as inductor_config

    from tools.bench_steps import build_step
    from tools.bench_train import resolve_shape

    inductor_config.cpp.enable_kernel_profile = True  # fused kernels show up by name
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = resolve_shape(shape_name, seq_len)
    step = build_step(candidate, shape, batch, seq_len, dtype)
    for _ in range(warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e6
    matmul_s = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / steps / 1e6
    matmul_flops = sum(e.flops for e in events if e.key in MATMUL_OPS) / steps
    table = [
        {
            "op": e.key,
            "self_s": e.self_cpu_time_total / steps / 1e6,
            "calls": e.count // steps,
            "tflop_s": e.flops / e.self_cpu_time_total / 1e6 if e.flops and e.self_cpu_time_total else None,
        }
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    ]
    return {"step_s": total, "matmul_s": matmul_s, "matmul_flops": matmul_flops, "table": table}


def profile_step(
    candidate: str = "sprout",
    shape: str = "bench-6l-384",
    dtype: str = "bfloat16",
    batch: int = 8,
    seq_len: int = 256,
    threads: int = 1,
    warmup: int = 3,
    steps: int = 2,
    rows: int = 20,
    litgpt_python: str | None = None,
) -> dict:
    """Profile one candidate in a fresh process and print the table.

    Args:
        candidate: a bench_train candidate (sprout, hf-compiled, litgpt-compiled, ...).
        shape: a shape name of bench_train.
        dtype: float32 or bfloat16.
        batch: sequences per step.
        seq_len: tokens per sequence.
        threads: torch threads.
        warmup: unprofiled steps first.
        steps: profiled steps (times are per step).
        rows: ops to print, by self time.
        litgpt_python: a Python that can import litgpt, for the litgpt candidates.
    """
    import torch

    from tools.bench_peak import bench_peak

    torch.set_num_threads(threads)
    peak = bench_peak(dtypes=[dtype], seconds=1.0)[dtype]
    python = litgpt_python if candidate.startswith("litgpt") and litgpt_python else sys.executable
    args = dict(
        candidate=candidate,
        shape_name=shape,
        dtype=dtype,
        batch=batch,
        seq_len=seq_len,
        threads=threads,
        warmup=warmup,
        steps=steps,
        rows=rows,
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [python, __file__, "--worker", json.dumps(args)], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise SystemExit(f"{candidate} failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"\n{candidate}, {shape}, {dtype}, batch {batch} x {seq_len}, {threads} thread(s): {result['step_s']:.3f} s of ops per step"
    )
    print(
        f"matmuls: {result['matmul_s']:.3f} s ({100 * result['matmul_s'] / result['step_s']:.0f}% of the step), "
        f"{result['matmul_flops'] / 1e9:.1f} GFLOP at {result['matmul_flops'] / result['matmul_s'] / 1e12:.3f} TFLOP/s = "
        f"{100 * result['matmul_flops'] / result['matmul_s'] / peak:.0f}% of the {peak / 1e12:.3f} TFLOP/s peak"
    )
    print("| op | self s/step | share | calls | TFLOP/s |\n|---|---:|---:|---:|---:|")
    for row in result["table"]:
        rate = f"{row['tflop_s']:.3f}" if row["tflop_s"] else ""
        print(
            f"| {row['op'][:70]} | {row['self_s']:.4f} | {100 * row['self_s'] / result['step_s']:.1f}% | {row['calls']} | {rate} |"
        )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(**json.loads(sys.argv[2]))))
    else:
        from jsonargparse import auto_cli

        auto_cli(profile_step)
