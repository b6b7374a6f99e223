"""Sprout's training step against its peers as their users run them: tokens/s, MFU and memory.

Every candidate trains the same Llama shape (sequence length, batch, AdamW, dtype, random
tokens) in a plain loop, each in a fresh process, in alternating rounds so that a noisy
machine treats them alike; the table reports medians. Candidates:

- ``sprout``: the step ``SproutModule.training_step`` runs: ``sprout.model.Llama`` with compiled
  blocks (``model.parallel.compile``) and the chunked cross-entropy of ``sprout.loss``;
- ``sprout-eager``: the same without compiled blocks;
- ``hf``: Hugging Face ``transformers`` ``LlamaForCausalLM`` (SDPA attention), logits then
  ``F.cross_entropy``; ``hf-compiled``: the same with ``torch.compile`` of the whole model;
- ``litgpt``: LitGPT's ``GPT`` with LitGPT's own ``chunked_cross_entropy``;
  ``litgpt-compiled``: the same with ``torch.compile`` of the whole model, as ``litgpt pretrain``
  runs it (the loss outside the compiled model, as there). LitGPT pins an older jsonargparse than
  Sprout's, so it may live in its own venv (``--litgpt_python``); that venv must use the same
  torch as this one (the tool checks, and prints every version in the table's header).

Every candidate steps torch's fused AdamW (Sprout's default on CPU and CUDA, and the Hugging
Face Trainer's since torch 2.8), so the ratios compare the models and losses, not optimizer
kernels. Each process uses ``--threads`` torch threads: all cores by default, as users run
them; ``--threads 1`` is the steadier measure on a machine shared with other jobs.

MFU is model FLOPs (``sprout.model.flops_per_token``: 6 per matmul weight per token plus
attention, the same count for every candidate, recomputation not credited) over the measured
matmul peak of the dtype at the same thread count (``tools/bench_peak.py``). Memory is the
process's peak resident memory during the timed steps above its resident memory before the
model was built.

    python -m tools.bench_train                                     # the reference shape, all cores
    python -m tools.bench_train --shapes [bench-6l-384,bench-12l-768] --rounds 5 --threads 2
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.bench_steps import build_step, versions

REPO = Path(__file__).resolve().parents[1]
# Shapes beyond sprout.model.CONFIGS["bench-6l-384"], up to ~100M parameters.
SHAPES = {
    "bench-8l-512": dict(
        n_layer=8, n_embd=512, n_head=8, n_kv_head=2, intermediate_size=1408, vocab_size=8192, block_size=256
    ),
    "bench-12l-768": dict(
        n_layer=12, n_embd=768, n_head=12, n_kv_head=4, intermediate_size=2048, vocab_size=8192, block_size=256
    ),
}
PEERS = ["hf", "hf-compiled", "litgpt", "litgpt-compiled"]
CANDIDATES = ["sprout", "sprout-eager", *PEERS]


# -- worker side: runs in a fresh process, possibly another venv (imports only torch + its framework)
def _resident_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak_resident() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current resident size


def resolve_shape(name: str, seq_len: int) -> dict:
    """A shape of sprout.model.CONFIGS (its context widened to seq_len) or of this tool's SHAPES."""
    from sprout.model import CONFIGS

    if name in CONFIGS:
        return {**CONFIGS[name], "block_size": max(seq_len, CONFIGS[name]["block_size"])}
    return SHAPES[name]


def worker(
    candidate: str, shape: dict, batch: int, seq_len: int, dtype: str, warmup: int, steps: int, threads: int
) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = _resident_kib("VmRSS")
    step = build_step(candidate, shape, batch, seq_len, dtype)
    for _ in range(warmup):  # compiles, allocates the optimizer state
        step()
    _reset_peak_resident()
    times, cpu_times = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    tokens = batch * seq_len
    return {
        "tokens_per_s": tokens / statistics.median(times),
        "tokens_per_cpu_s": tokens / statistics.median(cpu_times),
        "memory_mib": (_resident_kib("VmHWM") - base) / 1024,
        "loss": loss,
        "versions": versions(candidate),
    }


# -- driver side ------------------------------------------------------------------------------
def _run_worker(python: str, args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [python, __file__, "--worker", json.dumps(args)], cwd=REPO, env=env, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(f"{args['candidate']} ({python}) failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _litgpt_python(litgpt_python: str | None) -> str | None:
    """The interpreter that can import litgpt: the given one, else this one."""
    python = litgpt_python or sys.executable
    if (
        Path(python).exists()
        and subprocess.run([python, "-c", "import litgpt.model"], capture_output=True).returncode == 0
    ):
        return python
    return None


def bench_train(
    shapes: list[str] = ["bench-6l-384"],
    dtypes: list[str] = ["float32", "bfloat16"],
    candidates: list[str] = ["sprout", *PEERS],
    batch: int = 8,
    seq_len: int = 256,
    rounds: int = 3,
    warmup: int = 3,
    steps: int = 5,
    threads: int = os.cpu_count() or 1,
    peak_float32: float | None = None,
    peak_bfloat16: float | None = None,
    litgpt_python: str | None = None,
    json_out: Path | None = None,
) -> list[dict]:
    """Measure and print the table.

    Args:
        shapes: model shapes: names in sprout.model.CONFIGS or this tool's SHAPES.
        dtypes: float32 and/or bfloat16 (autocast, fp32 master weights).
        candidates: any of sprout, sprout-eager, hf, hf-compiled, litgpt, litgpt-compiled (the
            litgpt ones are skipped when no Python here can import litgpt).
        batch: sequences per step.
        seq_len: tokens per sequence.
        rounds: alternating rounds, each a fresh process per candidate; medians are reported.
        warmup: untimed steps per process (compilation happens here).
        steps: timed steps per process (their median step time counts).
        threads: torch threads per process (default: one per core, as users run). On a machine
            shared with other jobs, 1 thread and the tokens per CPU-second column are the steadier measure.
        peak_float32: matmul peak FLOP/s for MFU (default: measured now with tools/bench_peak.py).
        peak_bfloat16: same for bf16.
        litgpt_python: a Python that can import litgpt, e.g. ``.venv-litgpt/bin/python`` (default: this one).
        json_out: also write the rows as JSON.
    """
    import torch

    from sprout.model import LlamaConfig, flops_per_token, param_count
    from tools.bench_peak import bench_peak

    unknown = sorted(set(candidates) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"--candidates: unknown {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    wants_litgpt = any(c.startswith("litgpt") for c in candidates)
    litgpt = _litgpt_python(litgpt_python) if wants_litgpt else None
    if wants_litgpt and litgpt is None:
        where = litgpt_python or f"this Python ({sys.executable})"
        print(f"litgpt is not importable from {where}; skipping it (see --litgpt_python)", file=sys.stderr)
        candidates = [c for c in candidates if not c.startswith("litgpt")]
    torch.set_num_threads(threads)  # the peak of the same number of threads the candidates get
    peaks = {"float32": peak_float32, "bfloat16": peak_bfloat16}
    missing = [d for d in dtypes if peaks[d] is None]
    if missing:
        peaks.update(bench_peak(dtypes=missing, seconds=1.0))

    rows, versions = [], {}
    for shape_name in shapes:
        shape = resolve_shape(shape_name, seq_len)
        config = LlamaConfig(**shape)
        for dtype in dtypes:
            results: dict[str, list[dict]] = {c: [] for c in candidates}
            for r in range(rounds):
                order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]  # rotate who goes first
                for candidate in order:
                    python = litgpt if candidate.startswith("litgpt") else sys.executable
                    args = dict(
                        candidate=candidate,
                        shape=shape,
                        batch=batch,
                        seq_len=seq_len,
                        dtype=dtype,
                        warmup=warmup,
                        steps=steps,
                        threads=threads,
                    )
                    last = _run_worker(python, args)
                    if last["versions"]["torch"] != torch.__version__:
                        raise SystemExit(
                            f"{candidate} ran on torch {last['versions']['torch']} ({python}), this tool on torch {torch.__version__}: "
                            "install the same torch in that venv (pip install torch==<this version>) so that the peers compare at equal kernels."
                        )
                    versions[candidate] = last["versions"]
                    results[candidate].append(last)
                    print(
                        f"  {shape_name} {dtype} round {r + 1}: {candidate} {last['tokens_per_s']:.0f} tokens/s, {last['tokens_per_cpu_s']:.0f} per CPU-s",
                        file=sys.stderr,
                    )
            for candidate, runs in results.items():
                tps = statistics.median(run["tokens_per_s"] for run in runs)
                row = dict(
                    shape=shape_name,
                    params=param_count(config),
                    dtype=dtype,
                    candidate=candidate,
                    tokens_per_s=tps,
                    tokens_per_s_runs=[round(run["tokens_per_s"]) for run in runs],
                    tokens_per_cpu_s=statistics.median(run["tokens_per_cpu_s"] for run in runs),
                    memory_mib=statistics.median(run["memory_mib"] for run in runs),
                )
                row["mfu"] = row[_basis(threads)] * flops_per_token(config, seq_len) / peaks[dtype]
                rows.append(row)
    _print_table(rows, batch, seq_len, rounds, steps, peaks, threads, versions, litgpt)
    if json_out is not None:
        Path(json_out).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "peaks": peaks,
                    "batch": batch,
                    "seq_len": seq_len,
                    "threads": threads,
                    "versions": versions,
                },
                indent=1,
            )
        )
    return rows


def _basis(threads: int) -> str:
    """What ratios and MFU are computed from: with one thread, tokens per CPU-second (the
    process's CPU time is its wall time on an idle machine, and it ignores time lost to other
    jobs); with more, wall-clock tokens/s."""
    return "tokens_per_cpu_s" if threads == 1 else "tokens_per_s"


def _version_line(versions: dict[str, dict], litgpt_python: str | None) -> str:
    torches = sorted({v["torch"] for v in versions.values()})
    here, venv = {}, {}
    for candidate, found in versions.items():
        other = candidate.startswith("litgpt") and litgpt_python != sys.executable
        (venv if other else here).update({k: v for k, v in found.items() if k != "torch"})
    line = f"torch {', '.join(torches)} for every candidate; " + ", ".join(f"{k} {v}" for k, v in sorted(here.items()))
    if venv:
        line += "; LitGPT's venv " + f"({litgpt_python}): " + ", ".join(f"{k} {v}" for k, v in sorted(venv.items()))
    return line


def _print_table(
    rows: list[dict],
    batch: int,
    seq_len: int,
    rounds: int,
    steps: int,
    peaks: dict,
    threads: int,
    versions: dict,
    litgpt_python: str | None,
) -> None:
    basis = _basis(threads)
    print(
        f"\nbatch {batch} x seq {seq_len}, fused AdamW, {threads} thread(s) per process; median of {rounds} rounds (fresh process each) x {steps} timed steps; "
        + ", ".join(f"{d} matmul peak {p / 1e12:.3f} TFLOP/s" for d, p in peaks.items() if p)
        + f"; ratios and MFU from {'tokens per CPU-second' if basis == 'tokens_per_cpu_s' else 'tokens/s'}"
    )
    print(_version_line(versions, litgpt_python))
    header = (
        f"| {'shape':<14} | {'params':>6} | {'dtype':<8} | {'candidate':<15} | {'tokens/s':>8} | {'vs fastest peer':>15} | "
        f"{'tok/CPU-s':>9} | {'MFU':>6} | {'mem MiB':>7} | {'vs least-memory peer':>20} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        peers = [
            r for r in rows if r["shape"] == row["shape"] and r["dtype"] == row["dtype"] and r["candidate"] in PEERS
        ]
        speed = f"{row[basis] / max(r[basis] for r in peers):.2f}x" if peers else ""
        memory = f"{row['memory_mib'] / min(r['memory_mib'] for r in peers):.2f}x" if peers else ""
        print(
            f"| {row['shape']:<14} | {row['params'] / 1e6:>5.1f}M | {row['dtype']:<8} | {row['candidate']:<15} | {row['tokens_per_s']:>8.0f} | {speed:>15} | "
            f"{row['tokens_per_cpu_s']:>9.0f} | {100 * row['mfu']:>5.1f}% | {row['memory_mib']:>7.0f} | {memory:>20} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(**json.loads(sys.argv[2]))))
    else:
        from jsonargparse import auto_cli

        auto_cli(bench_train)
