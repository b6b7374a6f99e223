"""One command for a CUDA machine: Sprout's bf16 training step at the 1.1B shape, and its peers.

    python -m tools.gpu_check                 # on a machine with a CUDA GPU
    python -m tools.gpu_check --dry_run       # on CPU, a tiny shape: checks the tool itself

It runs from the source tree with whatever PyTorch the machine has (the pin need not be
installed: only ``torch`` and Sprout's ``sprout.model``/``sprout.loss``/``sprout.parallel`` are imported),
downloads nothing, and names each optional package it did not find, skipping only the rows that
need it (``flash-attn`` for FlashAttention-2, ``transformers`` for the peer). Each row trains
``tiny-llama-1.1b`` (22 layers, width 2048, 32 heads, 4 KV groups, FFN 5632, vocab 32000) at
micro-batch 4 x 2048 tokens in bf16 autocast with fp32 master weights and fused AdamW, in a
fresh process, for 20 steps on one fixed batch of random tokens:

- ``sprout eager`` / ``sprout compiled`` (compiled blocks and loss slices, what
  ``model.parallel.compile: true`` runs), each with PyTorch SDPA and, when installed,
  FlashAttention-2; the loss is Sprout's chunked cross-entropy;
- ``transformers compiled``: ``LlamaForCausalLM`` (SDPA) under ``torch.compile``, logits then
  ``F.cross_entropy``, when transformers is installed.

The table has tokens/s (median of the last ``steps - warmup`` steps), model-FLOPs MFU
(``sprout.model.flops_per_token`` against the GPU's datasheet bf16 peak, ``sprout.peaks.GPU_PEAKS``,
or ``--peak_tflops``), peak GPU memory (``torch.cuda.max_memory_allocated``), and the loss
check: the loss of the 20 steps must fall (the last three steps' mean below the first three's
by ``MIN_LOSS_DROP``), else the row says FAIL and the command exits 1. Target: at least 50% MFU
on one H100 (TinyLlama reports 56% on A100s with fused kernels).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = "tiny-llama-1.1b"
DRY_SHAPE = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 4,
    "n_kv_head": 2,
    "intermediate_size": 176,
    "vocab_size": 512,
    "block_size": 64,
}
MIN_LOSS_DROP = 0.5  # nats: 20 AdamW steps on one fixed batch memorise much more than this
LR = {
    "cuda": 4e-4,
    "cpu": 1e-2,
}  # TinyLlama's peak LR; the dry run's tiny model needs a larger one to memorise in 20 steps
OPTIONAL = {"flash": ("flash_attn", "flash-attn"), "transformers": ("transformers", "transformers")}
ROWS = [  # (name, framework, compiled, attention)
    ("sprout eager sdpa", "sprout", False, "sdpa"),
    ("sprout compiled sdpa", "sprout", True, "sdpa"),
    ("sprout eager flash-attn 2", "sprout", False, "flash"),
    ("sprout compiled flash-attn 2", "sprout", True, "flash"),
    ("transformers compiled sdpa", "transformers", True, "sdpa"),
]


def missing_packages() -> dict[str, str]:
    """Optional packages this Python cannot import: {what needs it: pip name}."""
    return {need: pip for need, (module, pip) in OPTIONAL.items() if importlib.util.find_spec(module) is None}


def needs(framework: str, attention: str) -> str | None:
    if framework == "transformers":
        return "transformers"
    return "flash" if attention == "flash" else None


# -- worker side: one row in a fresh process ----------------------------------------------------
def _sprout(config, compiled: bool):
    from sprout.loss import chunked_token_losses
    from sprout.model import Llama
    from sprout.parallel import Parallelism, parallelize

    model = parallelize(Llama(config), Parallelism(compile=compiled))

    def loss_fn(x, y):
        return chunked_token_losses(model.hidden_states(x), model.output.weight, y, compiled=compiled).mean()

    return model, loss_fn


def _transformers(config, compiled: bool):
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    hf = HFConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
        max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps, rope_theta=config.rope_base,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    model = LlamaForCausalLM(hf)
    forward = torch.compile(model) if compiled else model

    def loss_fn(x, y):
        return F.cross_entropy(forward(input_ids=x).logits.flatten(0, 1).float(), y.flatten())

    return model, loss_fn


def worker(
    framework: str,
    compiled: bool,
    attention: str,
    shape: dict,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    lr: float,
) -> dict:
    import torch

    from sprout.model import LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**shape, attention=attention)
    with torch.device(device):
        model, loss_fn = (_sprout if framework == "sprout" else _transformers)(config, compiled)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x = torch.randint(0, config.vocab_size, (batch, config.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (batch, config.block_size), device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    losses, times = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device, torch.bfloat16):
            loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronises
        times.append(time.perf_counter() - t0)
    return {
        "tokens_per_s": batch * config.block_size / statistics.median(times[warmup:]),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "losses": losses,
    }


# -- driver side ----------------------------------------------------------------------------------
def _run_row(args: dict, timeout: float) -> dict:
    """``worker(**args)`` in a fresh process (its own CUDA context and compile caches), or why it failed."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    try:
        run = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if run.returncode != 0:
        last = [line for line in run.stderr.strip().splitlines() if line.strip()][-1:] or [
            f"exit code {run.returncode}"
        ]
        return {"error": last[0][:200], "stderr": run.stderr[-4000:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def loss_falls(losses: list[float]) -> bool:
    """The last three steps' mean loss is ``MIN_LOSS_DROP`` below the first three's, all finite."""
    return (
        all(math.isfinite(v) for v in losses)
        and statistics.mean(losses[-3:]) < statistics.mean(losses[:3]) - MIN_LOSS_DROP
    )


def gpu_check(
    dry_run: bool = False,
    batch: int = 4,
    steps: int = 20,
    warmup: int = 5,
    peak_tflops: float | None = None,
    row_timeout: float = 150.0,
    time_limit: float = 470.0,
    rows: list[str] | None = None,
    json_out: str | None = None,
) -> list[dict]:
    """Run every row that this machine can, print the table; exit 1 when a row failed.

    Args:
        dry_run: on CPU at a tiny shape (2 layers, width 64, 64 tokens): checks the tool, not a GPU.
        batch: sequences per step (4 x 2048 is the 1.1B recipe's micro-batch).
        steps: training steps per row; the loss check reads all of them.
        warmup: the first steps, not timed (compilation, allocator warm-up).
        peak_tflops: the GPU's dense bf16 peak for MFU (default: its datasheet value when known).
        row_timeout: seconds a row may take before it is reported as timed out.
        time_limit: seconds for the whole check; rows that would start with less than a minute
            left are skipped and named (the check must fit in 8 minutes on one H100).
        rows: run only these rows (names as in the table; default all).
        json_out: also write the rows as JSON.
    """
    import torch

    from sprout.model import CONFIGS, LlamaConfig, flops_per_token, param_count

    deadline = time.monotonic() + time_limit
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 5):
        raise SystemExit(
            f"torch {torch.__version__} is too old for Sprout's model (SDPA's enable_gqa needs torch >= 2.5); upgrade torch on this machine."
        )
    if steps < warmup + 3 or warmup < 1:
        raise SystemExit(f"--steps ({steps}) must be at least --warmup ({warmup}) + 3, and --warmup at least 1")
    if dry_run:
        device, shape, batch = "cpu", DRY_SHAPE, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                "No CUDA GPU is visible to this PyTorch (torch.cuda.is_available() is False); run on a GPU machine, or pass --dry_run to check the tool on CPU."
            )
        device, shape = "cuda", CONFIGS[SHAPE]
    config = LlamaConfig(**shape)
    missing = missing_packages()
    if dry_run:
        name, peak = "CPU (dry run)", None
    else:
        from sprout.peaks import gpu_peak

        name = torch.cuda.get_device_name(0)
        peak = peak_tflops * 1e12 if peak_tflops else gpu_peak(torch.device("cuda"), torch.bfloat16)
    print(f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda})", end="")
    for _, pip in OPTIONAL.values():
        print(f"; {pip} {_version(pip)}", end="")
    print()
    for need, pip in missing.items():
        what = "the FlashAttention-2 rows" if need == "flash" else "the transformers row"
        print(f"{pip} is not importable here: skipping {what} (pip install {pip} to run them)")
    if peak is None and not dry_run:
        print(f"{name} is not in sprout.peaks.GPU_PEAKS: MFU is left out; pass --peak_tflops with its dense bf16 peak")

    unknown = sorted(set(rows or []) - {r[0] for r in ROWS})
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)}; the rows are: {', '.join(r[0] for r in ROWS)}")
    chosen = [r for r in ROWS if rows is None or r[0] in rows]
    rows = []
    for label, framework, compiled, attention in chosen:
        need = needs(framework, attention)
        if device == "cpu" and attention == "flash":
            result = {"skipped": "flash-attn runs only on CUDA"}
        elif need in missing:
            result = {"skipped": f"{missing[need]} not installed"}
        elif deadline - time.monotonic() < 60:
            result = {"skipped": f"less than a minute left of --time_limit {time_limit:.0f} s"}
        else:
            print(f"  running {label} ...", file=sys.stderr, flush=True)
            timeout = min(row_timeout, deadline - time.monotonic())
            args = dict(
                framework=framework,
                compiled=compiled,
                attention=attention,
                shape=shape,
                batch=batch,
                steps=steps,
                warmup=warmup,
                device=device,
                lr=LR[device],
            )
            result = _run_row(args, timeout)
        if "tokens_per_s" in result:
            result["mfu"] = result["tokens_per_s"] * flops_per_token(config, config.block_size) / peak if peak else None
            result["loss_falls"] = loss_falls(result["losses"])
        rows.append({"row": label, **result})
    _print_table(rows, config, batch, steps, warmup, peak, param_count(config))
    if json_out is not None:
        Path(json_out).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    failed = [r["row"] for r in rows if "error" in r or r.get("loss_falls") is False]
    for row in rows:
        if "stderr" in row:
            print(f"\n--- {row['row']} failed; the end of its output:\n{row['stderr']}", file=sys.stderr)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        raise SystemExit(1)
    return rows


def _print_table(
    rows: list[dict], config, batch: int, steps: int, warmup: int, peak: float | None, params: int
) -> None:
    print(
        f"\n{config.n_layer} layers x {config.n_embd} ({params / 1e9:.2f}B parameters), batch {batch} x {config.block_size} tokens, bf16 autocast, fused AdamW; "
        f"tokens/s: median of steps {warmup + 1}-{steps}; MFU against {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'no peak'}"
    )
    print("| row | tokens/s | MFU | peak GPU memory | loss step 1 -> last | loss falls |")
    print("|---|---:|---:|---:|---|---|")
    for row in rows:
        if "tokens_per_s" in row:
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
            memory = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a (CPU)"
            losses = f"{row['losses'][0]:.3f} -> {row['losses'][-1]:.3f}"
            print(
                f"| {row['row']} | {row['tokens_per_s']:,.0f} | {mfu} | {memory} | {losses} | {'yes' if row['loss_falls'] else 'FAIL'} |"
            )
        else:
            print(
                f"| {row['row']} | {'skipped: ' + row['skipped'] if 'skipped' in row else 'ERROR: ' + row['error']} | | | | |"
            )


def main(argv: list[str] | None = None) -> None:
    """argparse, not jsonargparse: the GPU machine may have nothing but torch."""
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry_run", action="store_true", help="on CPU at a tiny shape: checks the tool, not a GPU")
    parser.add_argument(
        "--batch", type=int, default=4, help="sequences per step (default 4, the 1.1B recipe's micro-batch)"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="training steps per row (default 20); the loss check reads all"
    )
    parser.add_argument("--warmup", type=int, default=5, help="first steps, not timed (default 5)")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="the GPU's dense bf16 peak, for MFU (default: datasheet value when known)",
    )
    parser.add_argument("--row_timeout", type=float, default=150.0, help="seconds a row may take (default 150)")
    parser.add_argument("--time_limit", type=float, default=470.0, help="seconds for the whole check (default 470)")
    parser.add_argument(
        "--rows", nargs="+", default=None, metavar="ROW", help="run only these rows, e.g. 'sprout compiled sdpa'"
    )
    parser.add_argument("--json_out", default=None, help="also write the rows as JSON")
    gpu_check(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(**json.loads(sys.argv[2]))))
    else:
        main()
