"""Reference-model losses scored offline, stored beside the data they score.

``sprout score`` scores every training block once and writes, per domain and
split, ``<scores_dir>/<domain>/<split>/scores.npy``: float16 ``[n_blocks, seq_len]`` whose row
``i`` holds the reference's loss on the targets of block ``i`` exactly as
``sprout.data.blocks.open_blocks(split_dir, seq_len + 1)[i]`` serves it. Rows are keyed by block
rather than by position in the flat token stream because litdata's ``TokensLoader`` never
lets a block straddle two chunks: it drops each chunk's tail, so block ``i`` does not start at
token ``i * (seq_len + 1)`` of the stream. A ``meta.json`` beside the scores records who made
them (reference, tokenizer, block size, the shards' index), so training refuses a mismatch.
The identities here (content hashes of a reference checkpoint and of a split's index) are
what such a record compares. Online scoring lives in ``sprout.reference``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sprout.data.shards import INDEX_FILE, META_FILE
from sprout.errors import SproutError
from sprout.files import write_json

FORMAT = "sprout-ref-scores/1"
SCORES_FILE = "scores.npy"


# -- identities ---------------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """Content hash of a checkpoint file, or of every file in a checkpoint folder (names included)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SproutError(
            f"Reference checkpoint {path} does not exist. Point model.reference (or --reference) at a Sprout .ckpt or a Hugging Face Llama folder."
        )
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def reference_identity(path: str | os.PathLike, model_config: dict | None = None) -> dict[str, Any]:
    """What score files record about the reference model; equal ``sha256`` means the same weights."""
    path = Path(path).expanduser()
    return {"path": str(path.resolve()), "sha256": path_sha256(path), "model_config": model_config}


def shards_sha256(split_dir: str | os.PathLike) -> str:
    """Identity of a prepared split: litdata's ``index.json`` lists every chunk and its size."""
    return _file_sha256(Path(split_dir) / INDEX_FILE)


def describe(identity: dict | None) -> str:
    if not identity:
        return "an unknown model"
    return f"{identity.get('path') or identity.get('name')} (sha256 {str(identity.get('sha256'))[:12]})"


# -- offline --------------------------------------------------------------------------------
def scores_folder(scores_dir: str | os.PathLike, domain: str, split: str) -> Path:
    return Path(scores_dir).expanduser() / domain / split


def read_scores_meta(folder: Path) -> dict[str, Any] | None:
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SproutError(
            f"{path} is not valid JSON ({err}); re-score this split with sprout score --overwrite."
        ) from None
    if meta.get("format") != FORMAT:
        raise SproutError(
            f"{path} is not a Sprout reference-score file (format {meta.get('format')!r}, expected {FORMAT!r}); re-score with sprout score."
        )
    return meta


def write_scores_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Atomically, so an interrupted scorer never leaves a half-written record."""
    write_json(folder / META_FILE, meta)


def check_scores(
    scores_dir: str | os.PathLike,
    domain: str,
    split_dir: str | os.PathLike,
    tokenizer: dict,
    block_size: int,
    n_blocks: int,
) -> dict[str, Any]:
    """The metadata of a domain split's finished scores, after checking they belong to this data."""
    split_dir = Path(split_dir)
    folder = scores_folder(scores_dir, domain, split_dir.name)
    how = f"sprout score --reference <reference checkpoint> --data_dir {split_dir.parent.parent} --domains [{domain}] --seq_len {block_size - 1} --out_dir {scores_dir}"
    meta = read_scores_meta(folder)
    if meta is None:
        raise SproutError(
            f"No reference scores for domain {domain!r} ({split_dir.name}) in data.reference_scores={scores_dir}: {folder / META_FILE} is missing. Score it with `{how}`."
        )
    if meta["done"] < meta["n_blocks"]:
        raise SproutError(
            f"The reference scores in {folder} are unfinished ({meta['done']} of {meta['n_blocks']} blocks). Run the same scoring command again to finish them: `{how}`."
        )
    if meta["tokenizer"].get("sha256") != tokenizer.get("sha256"):
        raise SproutError(
            f"The reference scores in {folder} were made on data tokenized with {describe(meta['tokenizer'])}, but the training data "
            f"uses {describe(tokenizer)}. Re-score with `{how}` or point data.reference_scores at scores of this data."
        )
    if meta["block_size"] != block_size:
        raise SproutError(
            f"The reference scores in {folder} were made for seq_len={meta['block_size'] - 1}, but data.seq_len={block_size - 1}. "
            f"Set data.seq_len={meta['block_size'] - 1} or re-score with `{how}`."
        )
    if meta["shards_sha256"] != shards_sha256(split_dir) or meta["n_blocks"] != n_blocks:
        raise SproutError(
            f"The reference scores in {folder} were made for other shards than {split_dir} (index sha256 {meta['shards_sha256'][:12]} vs "
            f"{shards_sha256(split_dir)[:12]}; {meta['n_blocks']} vs {n_blocks} blocks): the data was re-prepared since. Re-score with `{how}`."
        )
    return meta


def open_scores(folder: Path, mode: str = "r") -> np.ndarray:
    """The ``[n_blocks, seq_len]`` float16 scores, memory-mapped (cheap to open in each worker; ``r+``
    to go on writing them). Never unpickled: a file holding Python objects is refused, not run."""
    path = folder / SCORES_FILE
    try:
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except ValueError as error:
        raise SproutError(
            f"{path} is not a reference-score file: it holds Python objects or is damaged ({error}), and Sprout does not "
            "unpickle score files. Re-score with sprout score --overwrite."
        ) from None
