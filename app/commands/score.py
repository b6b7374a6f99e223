"""Score prepared shards with a reference model once, so Rho-1 training pays nothing per step.

    sprout score --reference runs/ref/last.ckpt --data_dir data/corpus \\
        --seq_len 256 --out_dir data/corpus-scores --batch_size 32
    # then, in the rho1 recipe:   data: {reference_scores: data/corpus-scores}

Writes ``<out_dir>/<domain>/<split>/scores.npy`` (float16, one row of ``seq_len`` losses per
training block, in the order the data module reads blocks) and ``meta.json`` (reference,
tokenizer and shard identities, block size, how many blocks are done). The work is saved
every ``--piece_blocks`` blocks: an interrupted run started again continues where it
stopped, and a finished split is skipped. Scores made by another reference, tokenizer or
sequence length are never overwritten silently: pass --overwrite.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sprout.data.blocks import SequentialBlocks
from sprout.data.scores import (
    FORMAT,
    SCORES_FILE,
    describe,
    open_scores,
    read_scores_meta,
    reference_identity,
    scores_folder,
    shards_sha256,
    write_scores_meta,
)
from sprout.data.shards import META_FILE, prepared_domains, read_meta
from sprout.errors import SproutError
from sprout.reference import Reference

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
# Fields that must agree for an unfinished run to be continued rather than restarted.
SAME_RUN = ("block_size", "n_blocks", "shards_sha256", "precision")


def _split_meta(
    reference: dict, tokenizer: dict, split_dir: Path, block_size: int, n_blocks: int, precision: str
) -> dict:
    return {
        "format": FORMAT,
        "reference": reference,
        "tokenizer": tokenizer,
        "block_size": block_size,
        "n_blocks": n_blocks,
        "shards_sha256": shards_sha256(split_dir),
        "precision": precision,
        "done": 0,
    }


def _start_or_resume(folder: Path, wanted: dict, overwrite: bool) -> tuple[np.ndarray, dict]:
    """The score array and meta to continue from: existing ones when they are the same job."""
    old = read_scores_meta(folder) if folder.is_dir() else None
    if old is not None and not overwrite:
        same = (
            old["reference"]["sha256"] == wanted["reference"]["sha256"]
            and old["tokenizer"]["sha256"] == wanted["tokenizer"]["sha256"]
        )
        if not (same and all(old[k] == wanted[k] for k in SAME_RUN)):
            raise SproutError(
                f"{folder} already holds scores by {describe(old['reference'])} for tokenizer {describe(old['tokenizer'])}, seq_len "
                f"{old['block_size'] - 1}, {old['n_blocks']} blocks, {old['precision']}; this run is {describe(wanted['reference'])}, "
                f"{describe(wanted['tokenizer'])}, seq_len {wanted['block_size'] - 1}, {wanted['n_blocks']} blocks, {wanted['precision']}. "
                "Choose another --out_dir, or pass --overwrite to replace them."
            )
        if (folder / SCORES_FILE).is_file():
            return open_scores(folder, "r+"), old
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    scores = np.lib.format.open_memmap(
        folder / SCORES_FILE, mode="w+", dtype=np.float16, shape=(wanted["n_blocks"], wanted["block_size"] - 1)
    )
    write_scores_meta(folder, wanted)
    return scores, wanted


def _score_split(
    ref: Reference,
    split_dir: Path,
    folder: Path,
    meta: dict,
    scores: np.ndarray,
    *,
    batch_size: int,
    piece_blocks: int,
    device: torch.device,
    precision: str,
    num_workers: int,
    progress: bool,
    label: str,
) -> int:
    """Score the blocks not done yet, saving after every piece; returns the blocks scored now."""
    dataset = SequentialBlocks(split_dir, meta["block_size"], domain=0, limit=None)
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    start = meta["done"]
    bar = tqdm(
        total=meta["n_blocks"], initial=start, desc=label, unit="block", disable=not progress, dynamic_ncols=True
    )
    for first in range(start, meta["n_blocks"], piece_blocks):
        last = min(first + piece_blocks, meta["n_blocks"])
        loader = DataLoader(Subset(dataset, range(first, last)), batch_size=batch_size, num_workers=num_workers)
        row = first
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                losses = ref.losses(batch["input_ids"].to(device), batch["targets"].to(device), dtype)
            scores[row : row + len(losses)] = losses.cpu().numpy().astype(np.float16)
            row += len(losses)
            bar.update(len(losses))
        scores.flush()
        meta["done"] = last
        write_scores_meta(folder, meta)
    bar.close()
    return meta["n_blocks"] - start


def score_reference(
    reference: str,
    data_dir: str,
    out_dir: str,
    seq_len: int,
    domains: list[str] | None = None,
    splits: list[str] | None = None,
    batch_size: int = 16,
    precision: str = "32-true",
    device: str = "auto",
    piece_blocks: int = 1024,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, dict]]:
    """Write per-token reference losses for prepared domains (see the module docstring).

    Args:
        reference: the reference model: a Sprout .ckpt or a Hugging Face Llama folder.
        data_dir: prepared data (``<data_dir>/<domain>/{train,val}``, as `sprout prepare` writes).
        out_dir: where the scores go; the training recipe's ``data.reference_scores``.
        seq_len: the training recipe's ``data.seq_len`` (blocks are seq_len + 1 tokens).
        domains: domains to score (default: every prepared domain in data_dir).
        splits: splits to score (default: train, the only one training reads).
        batch_size: blocks per reference forward pass.
        precision: ``32-true``, ``bf16-mixed`` or ``bf16-true``: use the training run's, so
            offline and online scores agree.
        device: ``cpu``, ``cuda``, ``cuda:1``, ... (``auto``: CUDA when available).
        piece_blocks: blocks between saves; an interrupted run loses at most this much work.
        num_workers: DataLoader workers reading the shards.
        overwrite: replace existing scores made by another reference, tokenizer or seq_len.
        progress: show a progress bar.
    """
    if precision not in PRECISIONS:
        raise SproutError(
            f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}; use the training recipe's trainer.precision."
        )
    if seq_len < 1 or batch_size < 1 or piece_blocks < 1:
        raise SproutError(
            f"--seq_len, --batch_size and --piece_blocks must be positive (got {seq_len}, {batch_size}, {piece_blocks})."
        )
    data_root = Path(data_dir).expanduser()
    if not data_root.is_dir():
        raise SproutError(f"--data_dir {data_root} does not exist; pass the folder `sprout prepare` wrote.")
    domains = domains or prepared_domains(data_root)
    if not domains:
        raise SproutError(f"No prepared domains (folders with {META_FILE}) in --data_dir {data_root}.")
    splits = splits or ["train"]
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    tokenizers = {d: read_meta(data_root / d)["tokenizer"] for d in domains}
    first_tok = next(iter(tokenizers.values()))
    mixed = [d for d, t in tokenizers.items() if t.get("sha256") != first_tok.get("sha256")]
    if mixed:
        raise SproutError(
            f"Domains {mixed} in {data_root} were tokenized with another tokenizer than {domains[0]!r} ({describe(first_tok)}); score them separately."
        )
    ref = Reference(reference, None, first_tok)
    if seq_len > ref.block_size:
        raise SproutError(
            f"--seq_len {seq_len} is longer than the reference model's context block_size={ref.block_size}; lower --seq_len."
        )
    identity = reference_identity(reference, ref.model.config.to_dict())
    report: dict[str, dict[str, dict]] = {}
    for domain in domains:
        for split in splits:
            split_dir = data_root / domain / split
            if not (split_dir / "index.json").is_file():
                raise SproutError(
                    f"{split_dir} has no index.json: domain {domain!r} has no prepared {split!r} split. Fix --domains/--splits or re-prepare it."
                )
            n_blocks = len(SequentialBlocks(split_dir, seq_len + 1, domain=0, limit=None))
            folder = scores_folder(out_dir, domain, split)
            wanted = _split_meta(identity, tokenizers[domain], split_dir, seq_len + 1, n_blocks, precision)
            scores, meta = _start_or_resume(folder, wanted, overwrite)
            started = time.perf_counter()
            scored = _score_split(
                ref,
                split_dir,
                folder,
                meta,
                scores,
                batch_size=batch_size,
                piece_blocks=piece_blocks,
                device=dev,
                precision=precision,
                num_workers=num_workers,
                progress=progress,
                label=f"{domain}/{split}",
            )
            seconds = time.perf_counter() - started
            report.setdefault(domain, {})[split] = {
                "blocks": n_blocks,
                "scored_now": scored,
                "seconds": seconds,
                "folder": str(folder),
            }
            rate = f"{scored * seq_len / seconds:,.0f} tokens/s" if scored else "already done"
            print(f"{domain}/{split}: {n_blocks} blocks x {seq_len} tokens -> {folder} ({rate})")
    print(
        f"Reference scores are in {out_dir}; set data.reference_scores: {out_dir} (and data.seq_len: {seq_len}) in the rho1 recipe."
    )
    return report
