"""How each token's loss moves during training, classified as in Rho-1 (Lin et al. 2024, fig. 2).

    sprout dynamics --checkpoints '[runs/x/step000100.ckpt, runs/x/step000200.ckpt, runs/x/last.ckpt]' \\
        --data_dir data/corpus --domain books --seq_len 256 --out_dir dynamics/books

Every checkpoint scores the same validation tokens; a least-squares line through each token's
losses (checkpoints placed evenly on [0, 1], in the order given) gives its change ΔL = fitted
last − fitted first. ΔL < −0.2 is H→L, ΔL > 0.2 is L→H; otherwise the token is L→L if its loss
at the last checkpoint is at most the mean last loss, else H→H. Writes ``shares.json`` (with
the paper's shares beside), ``curves.png`` (example loss curves per class) and
``passage.txt`` (a validation passage with every token marked by its class).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sprout.checkpoint.weights import load_model
from sprout.data.blocks import SequentialBlocks
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.reference import reference_losses

CLASSES = ("H→H", "L→H", "H→L", "L→L")
PAPER_SHARES = {"H→H": 0.11, "L→H": 0.12, "H→L": 0.26, "L→L": 0.51}  # Rho-1, fig. 2 (TinyLlama-1B on 15B tokens)
THRESHOLD = 0.2
# How passage.txt marks a token of each class (L→L, the majority, stays plain).
MARKS = {"H→H": ("<", ">"), "L→H": ("{", "}"), "H→L": ("[", "]"), "L→L": ("", "")}


def classify(losses: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Class index (into ``CLASSES``) and ΔL of every token, from losses ``[checkpoints, tokens]``."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] < 2:
        raise SproutError(
            f"Token dynamics need the losses of at least 2 checkpoints, got shape {losses.shape}; pass two or more --checkpoints."
        )
    x = np.linspace(0.0, 1.0, losses.shape[0])[:, None]
    xc = x - x.mean()
    delta = (xc * (losses - losses.mean(axis=0))).sum(axis=0) / (xc**2).sum()  # the slope; x spans [0, 1]
    last = losses[-1]
    classes = np.where(last <= last.mean(), CLASSES.index("L→L"), CLASSES.index("H→H"))
    classes = np.where(delta > threshold, CLASSES.index("L→H"), classes)
    classes = np.where(delta < -threshold, CLASSES.index("H→L"), classes)
    return classes, delta


def shares(classes: np.ndarray) -> dict[str, float]:
    counts = np.bincount(classes, minlength=len(CLASSES))
    return {name: float(c) / max(len(classes), 1) for name, c in zip(CLASSES, counts)}


def checkpoint_losses(path: str, blocks: Subset, batch_size: int, device: torch.device, vocab_size: int) -> np.ndarray:
    """Per-token losses ``[blocks, seq_len]`` of one checkpoint on the validation blocks."""
    model, _ = load_model(path, map_location=device)
    if model.config.vocab_size < vocab_size:
        raise SproutError(
            f"Checkpoint {path} has vocab_size={model.config.vocab_size}, fewer than the tokenizer's {vocab_size}: it was trained with another tokenizer. Pass checkpoints of one run on this data."
        )
    model.eval()
    out = [
        reference_losses(model, b["input_ids"].to(device), b["targets"].to(device)).cpu()
        for b in DataLoader(blocks, batch_size=batch_size)
    ]
    return torch.cat(out).numpy()


def render_passage(tok: Tokenizer, first: int, targets: list[int], classes: np.ndarray) -> str:
    """The passage as text, each predicted token wrapped in its class's marks."""
    pieces = [tok.decode([first])]
    for token, cls in zip(targets, classes):
        left, right = MARKS[CLASSES[cls]]
        pieces.append(f"{left}{tok.decode([token])}{right}")
    legend = "Marks: " + ", ".join(
        f"{name} {left}token{right}" if left else f"{name} plain" for name, (left, right) in MARKS.items()
    )
    return legend + "\n\n" + "".join(pieces) + "\n"


def plot_curves(losses: np.ndarray, classes: np.ndarray, out: Path, examples: int, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    x = np.arange(1, losses.shape[0] + 1)
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(4 * len(CLASSES), 3.2), sharey=True)
    for ax, (i, name) in zip(axes, enumerate(CLASSES)):
        members = np.flatnonzero(classes == i)
        for t in rng.choice(members, size=min(examples, len(members)), replace=False) if len(members) else []:
            ax.plot(x, losses[:, t], color="tab:gray", alpha=0.5, lw=1)
        if len(members):
            ax.plot(x, losses[:, members].mean(axis=1), color="tab:red", lw=2.5, label="class mean")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{name}: {len(members) / len(classes):.0%} of tokens")
        ax.set_xlabel("checkpoint")
        ax.set_xticks(x)
    axes[0].set_ylabel("token loss (nats)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def token_dynamics(
    checkpoints: list[str],
    data_dir: str,
    domain: str,
    seq_len: int,
    out_dir: str,
    split: str = "val",
    max_blocks: int = 64,
    batch_size: int = 16,
    tokenizer: str | None = None,
    examples: int = 12,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """Classify validation tokens by how their loss changes across ``checkpoints``.

    Args:
        checkpoints: two or more checkpoints of one run, in training order (Sprout .ckpt or
            Hugging Face Llama folders).
        data_dir: prepared data (``<data_dir>/<domain>/<split>``).
        domain: the domain whose tokens are classified.
        seq_len: tokens per scored sequence.
        out_dir: where shares.json, curves.png and passage.txt go.
        split: the split to read (default the held-out ``val``).
        max_blocks: sequences to score (the first ones of the split).
        batch_size: sequences per forward pass.
        tokenizer: tokenizer for the passage (default ``<data_dir>/tokenizer.json``).
        examples: loss curves drawn per class in curves.png.
        device: ``cpu``, ``cuda``, ... (``auto``: CUDA when available).
        seed: which example curves are drawn.
    """
    if len(checkpoints) < 2:
        raise SproutError(
            f"--checkpoints lists {len(checkpoints)} checkpoint(s); token dynamics need at least 2 (better 5 or more) of one run, in training order."
        )
    split_dir = Path(data_dir).expanduser() / domain / split
    if not (split_dir / "index.json").is_file():
        raise SproutError(
            f"{split_dir} is not a prepared split (no index.json). Check --data_dir, --domain and --split."
        )
    tok = Tokenizer.load(tokenizer or Path(data_dir).expanduser() / "tokenizer.json")
    dataset = SequentialBlocks(split_dir, seq_len + 1, domain=0, limit=max_blocks)
    if len(dataset) == 0:
        raise SproutError(f"{split_dir} has no sequence of {seq_len + 1} tokens; lower --seq_len.")
    blocks = Subset(dataset, range(len(dataset)))
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    losses = np.stack(
        [checkpoint_losses(c, blocks, batch_size, dev, tok.vocab_size) for c in checkpoints]
    )  # [K, blocks, T]
    classes, delta = classify(losses.reshape(len(checkpoints), -1))
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "shares": shares(classes),
        "paper_shares": PAPER_SHARES,
        "tokens": int(classes.size),
        "mean_loss": [float(m) for m in losses.reshape(len(checkpoints), -1).mean(axis=1)],
        "checkpoints": list(checkpoints),
        "data": str(split_dir),
        "threshold": THRESHOLD,
    }
    (out / "shares.json").write_text(json.dumps(result, indent=1))
    plot_curves(losses.reshape(len(checkpoints), -1), classes, out / "curves.png", examples, seed)
    first = dataset[0]
    row = classes.reshape(losses.shape[1], seq_len)[0]
    (out / "passage.txt").write_text(
        render_passage(tok, int(first["input_ids"][0]), first["targets"].tolist(), row), encoding="utf-8"
    )
    print(
        f"{classes.size} tokens of {split_dir} over {len(checkpoints)} checkpoints (mean loss {result['mean_loss'][0]:.3f} -> {result['mean_loss'][-1]:.3f}):"
    )
    print(f"  {'class':6} {'share':>7} {'paper':>7}")
    for name in CLASSES:
        print(f"  {name:6} {result['shares'][name]:7.1%} {PAPER_SHARES[name]:7.0%}")
    print(f"Wrote {out / 'shares.json'}, {out / 'curves.png'} and {out / 'passage.txt'}.")
    return result
