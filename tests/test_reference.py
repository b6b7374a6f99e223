"""Reference losses: offline scores align with the blocks training reads, equal online scoring,
resume, refuse other references/tokenizers/lengths, and drive a tiny rho1 run end to end."""

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from sprout.checkpoint.weights import save_model
from sprout.commands.score import score_reference
from sprout.data.blocks import DomainBlocks, open_blocks
from sprout.data.datamodule import SproutDataModule
from sprout.data.prepare import Source, prepare
from sprout.data.scores import scores_folder
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig
from sprout.plugins.selectors.rho1 import Rho1
from sprout.reference import Reference

SEQ_LEN = 16
VOCAB = 320
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def random_reference(path: Path, tok: Tokenizer, seed: int, vocab_size: int = VOCAB) -> Path:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig.from_name("micro", vocab_size=vocab_size, block_size=32))
    model.init_weights()
    return save_model(model, path, {"tokenizer": tok.identity})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two small prepared domains (many chunks, so blocks skip chunk tails), a reference, its scores."""
    root = tmp_path_factory.mktemp("rho1")
    code, mail = sorted((STDLIB / "json").glob("*.py")), sorted((STDLIB / "email").glob("*.py"))[3:6]  # ~40 kB each
    tok = Tokenizer.train_bpe([p.read_text() for p in code + mail], VOCAB, root / "tokenizer.json")
    sources = [
        Source([str(p) for p in code], format="text", domain="code"),
        Source([str(p) for p in mail], format="text", domain="mail"),
    ]
    prepare(
        sources, tok, root / "data", num_workers=1, chunk_tokens=1000, val_fraction=0.2, progress=False, summary=False
    )
    ref = random_reference(root / "ref.ckpt", tok, seed=1)
    report = score_reference(
        str(ref), str(root / "data"), str(root / "scores"), SEQ_LEN, batch_size=64, piece_blocks=64, progress=False
    )
    return {"root": root, "data": root / "data", "scores": root / "scores", "tok": tok, "ref": ref, "report": report}


def test_offline_scores_are_the_online_losses_of_the_blocks_training_reads(world):
    split = world["data"] / "code" / "train"
    n_tokens = sum(c["dim"] for c in json.loads((split / "index.json").read_text())["chunks"])
    n_blocks = len(open_blocks(split, SEQ_LEN + 1))
    assert n_blocks < n_tokens // (SEQ_LEN + 1)  # chunk tails are skipped: rows follow blocks, not the flat stream
    blocks = DomainBlocks(
        [world["data"] / "code" / "train", world["data"] / "mail" / "train"],
        SEQ_LEN + 1,
        [scores_folder(world["scores"], d, "train") for d in ("code", "mail")],
    )
    keys = [(0, 0, 0), (0, 0, 57), (0, 0, n_blocks - 1), (0, 1, 3), (0, 1, 40)]
    samples = [blocks[k] for k in keys]
    input_ids = torch.stack([s["input_ids"] for s in samples])
    targets = torch.stack([s["targets"] for s in samples])
    offline = torch.stack([s["ref_loss"] for s in samples])
    online = Reference(world["ref"], VOCAB).losses(input_ids, targets)
    torch.testing.assert_close(online, offline, atol=2e-2, rtol=0)  # float16 rounding of a differently batched forward
    token_loss = torch.rand_like(online) * 8
    valid = torch.ones_like(online, dtype=torch.bool)
    for scope in ("batch", "sequence"):
        select = Rho1(k=60, scope=scope)
        assert torch.equal(
            select.token_weights(token_loss, {"valid": valid, "ref_loss": online}),
            select.token_weights(token_loss, {"valid": valid, "ref_loss": offline}),
        )


def test_scoring_resumes_where_it_stopped(world, tmp_path):
    out = tmp_path / "scores"
    shutil.copytree(world["scores"], out)
    folder = scores_folder(out, "mail", "train")
    meta = json.loads((folder / "meta.json").read_text())
    full = np.load(folder / "scores.npy").copy()
    meta["done"] = 64  # as if killed after the first piece
    (folder / "meta.json").write_text(json.dumps(meta))
    partial = np.load(folder / "scores.npy", mmap_mode="r+")
    partial[64:] = 0
    partial.flush()
    report = score_reference(
        str(world["ref"]), str(world["data"]), str(out), SEQ_LEN, batch_size=64, piece_blocks=64, progress=False
    )
    assert report["code"]["train"]["scored_now"] == 0
    assert report["mail"]["train"]["scored_now"] == len(full) - 64
    np.testing.assert_allclose(np.load(folder / "scores.npy").astype(np.float32), full.astype(np.float32), atol=2e-2)


def datamodule(world, scores, seq_len=SEQ_LEN):
    dm = SproutDataModule(str(world["data"]), seq_len=seq_len, batch_size=4, reference_scores=str(scores))
    dm.setup("fit")
    return dm


def test_refuses_scores_of_other_data_lengths_and_references(world, tmp_path):
    assert datamodule(world, world["scores"]).reference_scores_identity["sha256"]
    with pytest.raises(SproutError, match=r"seq_len=16.*data.seq_len=12"):
        datamodule(world, world["scores"], seq_len=12)
    with pytest.raises(SproutError, match=r"No reference scores for domain 'code'.*sprout score"):
        datamodule(world, tmp_path / "nothing")
    other_tok = tmp_path / "other_tok"
    shutil.copytree(world["scores"], other_tok)
    meta_path = scores_folder(other_tok, "mail", "train") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"] = {**meta["tokenizer"], "name": "/elsewhere/llama.model", "sha256": "f" * 64}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        SproutError,
        match=r"tokenized with /elsewhere/llama.model \(sha256 ffffffffffff\).*but the training data uses .*tokenizer.json",
    ):
        datamodule(world, other_tok)
    # another reference: the scorer will not mix it into these scores, nor the module accept it
    other_ref = random_reference(tmp_path / "other.ckpt", world["tok"], seed=2)
    with pytest.raises(SproutError, match=r"already holds scores by .*ref.ckpt.*this run is .*other.ckpt.*--overwrite"):
        score_reference(str(other_ref), str(world["data"]), str(world["scores"]), SEQ_LEN, progress=False)
    from sprout.module import SproutModule

    module = SproutModule(
        arch="micro", arch_overrides={"vocab_size": VOCAB, "block_size": 32}, selector=Rho1(), reference=str(other_ref)
    )
    with pytest.raises(
        SproutError, match=r"made by the reference .*ref.ckpt \(sha256 \w{12}\), but model.reference is .*other.ckpt"
    ):
        module._setup_reference(datamodule(world, world["scores"]))


def test_reference_with_another_vocabulary_is_refused(world, tmp_path):
    with pytest.raises(SproutError, match=r"vocab_size=320 but the model being trained has vocab_size=384"):
        Reference(world["ref"], 384)
    small = random_reference(tmp_path / "small.ckpt", world["tok"], seed=3, vocab_size=256)
    with pytest.raises(SproutError, match=r"vocab_size=256, fewer than the 320 tokens"):
        score_reference(str(small), str(world["data"]), str(tmp_path / "s"), SEQ_LEN, progress=False)


def test_tiny_rho1_recipe_trains_end_to_end_with_offline_scores(world, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sprout.cli import main

    recipe = tmp_path / "rho1.yaml"
    recipe.write_text(f"""
seed_everything: 1
trainer:
  max_steps: 6
  limit_val_batches: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  logger: {{class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {{save_dir: {tmp_path / "runs"}, name: rho1}}}}
model:
  arch: micro
  arch_overrides: {{vocab_size: {VOCAB}, block_size: 32}}
  selector: {{class_path: rho1, init_args: {{k: 60}}}}
  optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 0.003}}}}
  schedule: {{warmup_steps: 2}}
data:
  data_dir: {world["data"]}
  seq_len: {SEQ_LEN}
  batch_size: 4
  reference_scores: {world["scores"]}
checkpoint: {{dirpath: {tmp_path / "ckpt"}}}
""")
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(recipe)])
    events = next((tmp_path / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    scalar = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert len(scalar["train/loss"]) == 6
    assert all(f == pytest.approx(0.6, abs=0.01) for f in scalar["select/fraction"])
    assert all(k > d for k, d in zip(scalar["select/kept_excess"], scalar["select/dropped_excess"]))
    shares = np.array([scalar["select/kept_share/code"], scalar["select/kept_share/mail"]])
    np.testing.assert_allclose(shares.sum(axis=0), 1.0, rtol=1e-5)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_init_from_starts_from_the_checkpoint_and_checks_its_shape(world):
    from sprout.checkpoint.weights import load_model
    from sprout.module import SproutModule

    module = SproutModule(
        arch="micro", arch_overrides={"vocab_size": VOCAB, "block_size": 64}, init_from=str(world["ref"])
    )
    module.configure_model()
    ref, _ = load_model(world["ref"])
    x = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(module.model(x), ref(x))
    wrong = SproutModule(
        arch="micro", arch_overrides={"vocab_size": 384, "block_size": 32}, init_from=str(world["ref"])
    )
    with pytest.raises(
        SproutError,
        match=r"model.init_from=.*ref.ckpt has another shape.*vocab_size=320 in the checkpoint vs 384 in the recipe",
    ):
        wrong.configure_model()
