"""Shuffle-quality experiment: the chunk-aware windowed order against a full random order.

The experiments' four domains (books, Shakespeare, GSM8K math, standard-library code) are
prepared in small chunks (``--chunk_tokens``), so that every domain has many and a window of a
few chunks is a small part of it; books and Shakespeare keep their text in order, so
neighbouring chunks hold neighbouring text, the case where a narrow shuffle could hurt. The same
model then trains for ``--steps`` steps with ``data.window`` set to each of ``--windows`` and to
a window larger than any domain (every block of an epoch shuffled together: the full random
order of earlier versions), ``--seeds`` seeds each. The table holds the final mean validation
loss, mean ± std over seeds, and whether each window is level with the full order (less than
2 std apart, ``common.compare``).

    python -m tools.experiments.shuffle --work_dir runs/shuffle

Every run is an ordinary ``sprout fit``; finished runs are reused when the command is repeated.
"""

from __future__ import annotations

from pathlib import Path

from sprout.commands import run_function
from tools.experiments import common

FULL = 1 << 30  # a window wider than any domain: the whole epoch shuffled together


def shuffle(
    work_dir: str = "runs/shuffle",
    corpus: str = common.CORPUS,
    windows: list[int] = [8, 2, 1],  # noqa: B006 (jsonargparse reads the default)
    steps: int = 300,
    val_every: int = 100,
    arch: str = "micro",
    vocab_size: int = 2048,
    seq_len: int = 128,
    batch_size: int = 16,
    val_blocks: int = 32,
    lr: float = 3e-3,
    chunk_tokens: int = 8192,
    code_bytes: int = 3_000_000,
    max_doc_chars: int = 20_000,
    tokenizer_chars: int = 1_000_000,
    seed: int = 0,
    seeds: int = 3,
    threads: int | None = 1,
) -> dict[str, list[float]]:
    """Run the experiment; prints and writes ``<work_dir>/shuffle.md``. Returns the final mean
    validation losses per order, one per seed.

    Args:
        work_dir: where data, runs and the report go.
        corpus: the shared corpus folder (books/, shakespeare/, math/).
        windows: the ``data.window`` values compared with the full order.
        steps, val_every, arch, vocab_size, seq_len, batch_size, val_blocks, lr: the runs, as in
            ``tools/experiments/mixtures.py``.
        chunk_tokens: tokens per prepared chunk.
        code_bytes, max_doc_chars, tokenizer_chars: the corpus, as in ``mixtures.py``.
        seed, seeds: runs use seeds ``seed`` .. ``seed + seeds - 1``.
        threads: OMP_NUM_THREADS of each run.
    """
    args = dict(locals())
    work = Path(work_dir).expanduser().resolve()
    data_dir = work / "data"
    common.prepare_corpus(
        Path(corpus), data_dir, vocab_size, code_bytes, max_doc_chars, tokenizer_chars, chunk_tokens=chunk_tokens
    )
    orders = {"full": FULL, **{f"window {w}": w for w in windows}}
    losses: dict[str, list[float]] = {name: [] for name in orders}
    for s in common.seed_list(seed, seeds):
        for name, window in orders.items():
            run_dir = work / f"seed{s}" / name.replace(" ", "")
            config = common.recipe(
                run_dir,
                data_dir,
                {**args, "seed": s},
                steps=steps,
                arch=arch,
                shape={},
                warmup_steps=max(1, steps // 20),
                log_every=val_every,
                mixture={"class_path": "uniform"},
            )
            config["data"]["window"] = window
            losses[name].append(common.train(run_dir, config, threads=threads)["val_loss"])
    lines = [
        f"{seeds} seeds, {steps} steps, {arch}, chunks of {chunk_tokens} tokens, uniform mixture",
        "",
        "| order | final mean val loss | vs full order |",
        "|---|---|---|",
        *(
            f"| {name} | {common.cell(values)} | {'-' if name == 'full' else common.compare(values, losses['full'])} |"
            for name, values in losses.items()
        ),
    ]
    (work / "shuffle.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return losses


def main(args: list[str] | None = None) -> None:
    run_function(shuffle, args, as_positional=False)


if __name__ == "__main__":
    main()
