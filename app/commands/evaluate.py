"""Score a checkpoint on lm-evaluation-harness tasks, in this process, without exporting it.

    sprout eval runs/quickstart/version_0/checkpoints/last.ckpt --tasks stdlib_mc,gsm8k_local --limit 100

CHECKPOINT is a Sprout ``.ckpt``, a sharded (distributed) checkpoint folder or a Hugging Face
Llama folder. The scores go to ``results.json``; when the checkpoint belongs to a run
(``<run>/checkpoints/<file>`` beside TensorBoard logs) they are also logged there as
``eval/<task>/<metric>`` at the checkpoint's global step, next to its loss curves.

Not a LightningCLI subcommand: those are Trainer methods on a recipe's model and data module,
and evaluation needs neither a Trainer nor a recipe, only a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from sprout.checkpoint.resume import stored_entries
from sprout.checkpoint.weights import load_model
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.evaluation import evaluate as run_evaluation
from sprout.evaluation import require_harness, scores, write_results


def evaluate(
    checkpoint: Path,
    *,
    tasks: str,
    out_dir: Path | None = None,
    tokenizer: Path | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_gen_toks: int = 256,
) -> dict[str, float]:
    """Evaluate CHECKPOINT on lm-evaluation-harness tasks and write results.json.

    Args:
        checkpoint: a .ckpt written by `sprout fit` (or `sprout import`), a distributed checkpoint
            folder, or a Hugging Face LlamaForCausalLM folder.
        tasks: comma-separated task names: Sprout's offline tasks (stdlib_mc, gsm8k_local) or any task,
            group or tag of lm-evaluation-harness (hellaswag, arc_easy, gsm8k, ...; these download their data).
        out_dir: folder for results.json (default: <run>/eval/<checkpoint name> for a run's checkpoint,
            else eval/<checkpoint name> here).
        tokenizer: the tokenizer the model was trained with (default: the file the checkpoint records,
            or the one in a Hugging Face folder).
        num_fewshot: examples put before each question (default: each task's own setting, else 0).
        limit: at most this many documents per task (a fraction of each task when below 1).
        batch_size: sequences per forward pass when scoring.
        device: where the model runs (cpu, cuda, cuda:1, ...).
        max_gen_toks: most tokens generated per answer, unless the task sets its own.
    """
    require_harness()
    checkpoint = Path(checkpoint).expanduser()
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    model, meta = load_model(checkpoint, map_location=device)
    vocabulary = trained_tokenizer(checkpoint, meta, tokenizer, model.config.vocab_size)
    results = run_evaluation(
        model,
        vocabulary,
        names,
        num_fewshot=num_fewshot,
        limit=int(limit) if limit and limit >= 1 else limit,
        batch_size=batch_size,
        device=device,
        max_gen_toks=max_gen_toks,
    )
    run, step = run_of(checkpoint), stored_entries(checkpoint).get("global_step")
    out_dir = Path(out_dir) if out_dir else (run / "eval" if run else Path("eval")) / checkpoint.name
    path = write_results(
        results,
        out_dir / "results.json",
        checkpoint=str(checkpoint),
        step=step,
        tokenizer=str(vocabulary.path),
    )
    found = scores(results)
    if run is not None and step is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(run)) as writer:
            for name, value in found.items():
                writer.add_scalar(f"eval/{name}", value, step)
    width = max(map(len, found), default=0)
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in found.items()))
    print(
        f"wrote {path}" + (f"; logged eval/* at step {step} to {run}" if run is not None and step is not None else "")
    )
    return found


def trained_tokenizer(checkpoint: Path, meta: dict | None, path: Path | None, vocab_size: int) -> Tokenizer:
    """The tokenizer ``checkpoint`` was trained with: ``path``, the file its metadata records, or the
    one in its Hugging Face folder. A different file is refused, since scores made with another
    vocabulary mean nothing."""
    identity = (meta or {}).get("tokenizer") or {}
    if path is None:
        if checkpoint.is_dir() and (checkpoint / "config.json").is_file():
            candidates = [checkpoint / "tokenizer.json", checkpoint / "tokenizer.model"]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise SproutError(
                    f"The Hugging Face folder {checkpoint} has no tokenizer (looked for {candidates[0]} and {candidates[1]}); pass --tokenizer with the tokenizer the model was trained with."
                )
        elif not identity.get("name"):
            raise SproutError(
                f"Checkpoint {checkpoint} records no tokenizer; pass --tokenizer with the tokenizer.json or SentencePiece .model the model was trained with."
            )
        else:
            path = Path(identity["name"])
            if not path.is_file():
                raise SproutError(
                    f"Checkpoint {checkpoint} was trained with the tokenizer {path}, which does not exist; pass --tokenizer with "
                    f"that tokenizer's file (sha256 {identity.get('sha256', '?')[:12]}), e.g. from the data folder the run used."
                )
    return Tokenizer.load_trained(path, identity, vocab_size, f"checkpoint {checkpoint}")


def run_of(checkpoint: Path) -> Path | None:
    """The run folder of a checkpoint saved by `sprout fit` (``<run>/checkpoints/<file>``, TensorBoard events in ``<run>``)."""
    folder = checkpoint.resolve().parent
    if folder.name == "checkpoints" and any(folder.parent.glob("events.out.tfevents.*")):
        return folder.parent
    return None
