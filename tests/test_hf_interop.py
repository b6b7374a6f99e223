"""Checkpoint loading and Hugging Face export/import, checked against ``transformers`` itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sprout.checkpoint.weights import load_model, save_model
from sprout.errors import SproutError
from sprout.hf import save_hf
from sprout.model import Llama, LlamaConfig

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[1]

GQA = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176, vocab_size=320, block_size=64)
VARIANTS = {
    "gqa": {},
    "tied": dict(tie_embeddings=True),
    "mha-rope-eps": dict(n_kv_head=4, rope_base=500000.0, norm_eps=1e-6, n_layer=3),
}


def random_model(seed: int = 0, **changes) -> Llama:
    """Random weights, norms included, so a swapped or unused tensor cannot go unnoticed."""
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**{**GQA, **changes}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model.eval()


def hf_logits(folder: Path, idx: torch.Tensor) -> torch.Tensor:
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(idx).logits


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_matches_transformers_logits(tmp_path, variant):
    model = random_model(**VARIANTS[variant])
    save_hf(model, tmp_path)
    idx = torch.randint(0, GQA["vocab_size"], (2, 48))
    with torch.no_grad():
        ours = model(idx)
    torch.testing.assert_close(hf_logits(tmp_path, idx), ours, atol=1e-4, rtol=1e-4)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["num_key_value_heads"] == model.config.n_kv_head
    assert hf_config["rope_theta"] == model.config.rope_base
    assert hf_config["rms_norm_eps"] == model.config.norm_eps
    assert hf_config["tie_word_embeddings"] == model.config.tie_embeddings
    assert ("lm_head.weight" in load_file(tmp_path / "model.safetensors")) != model.config.tie_embeddings


def test_export_in_bfloat16_writes_bfloat16(tmp_path):
    save_hf(random_model(), tmp_path, dtype=torch.bfloat16)
    assert {t.dtype for t in load_file(tmp_path / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_import_round_trip_is_exact(tmp_path, variant):
    from sprout.commands.import_hf import import_hf

    model = random_model(**VARIANTS[variant])
    save_hf(model, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back.ckpt")
    loaded, meta = load_model(tmp_path / "back.ckpt")
    assert loaded.config == model.config
    assert meta["source"] == str(tmp_path / "hf")
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    if model.config.tie_embeddings:
        assert loaded.output.weight is loaded.tok_embeddings.weight


def test_sharded_transformers_folder_loads(tmp_path):
    """A folder written by transformers itself, split into several safetensors shards."""
    model = random_model()
    save_hf(model, tmp_path / "single")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "single", local_files_only=True)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    loaded, meta = load_model(tmp_path / "sharded")
    assert meta["model_config"] == model.config.to_dict()
    idx = torch.randint(0, GQA["vocab_size"], (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx))


def fit_two_steps(tmp_path: Path) -> tuple[Path, Llama]:
    """A real Lightning checkpoint of the Sprout module, written by the Trainer."""
    import lightning as L

    from sprout.module import SproutModule

    module = SproutModule(arch="micro", arch_overrides={"vocab_size": 320, "block_size": 32})
    data = [{"input_ids": torch.randint(0, 320, (16,)), "targets": torch.randint(0, 320, (16,))} for _ in range(4)]
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    path = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(path)
    return path, module.model


def test_load_model_reads_a_lightning_checkpoint(tmp_path):
    path, trained = fit_two_steps(tmp_path)
    model, meta = load_model(path)
    assert meta["model_config"] == trained.config.to_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name


def test_export_cli_from_lightning_checkpoint_with_tokenizer(tmp_path):
    from sprout.data.tokenizer import Tokenizer

    path, trained = fit_two_steps(tmp_path)
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "def main():\n    return 0\n"] * 20
    tokenizer = Tokenizer.train_bpe(texts, 300, tmp_path / "tok" / "tokenizer.json")
    out = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "sprout", "export", str(path), str(out), "--tokenizer", str(tokenizer.path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "The lazy fox returns 0"
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text)
    assert (
        hf_tokenizer.eos_token_id == tokenizer.eos_id == json.loads((out / "config.json").read_text())["eos_token_id"]
    )
    idx = torch.randint(0, 320, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(out, idx), trained.eval()(idx), atol=1e-4, rtol=1e-4)
    again = subprocess.run(
        [sys.executable, "-m", "sprout", "export", str(path), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_export_sentencepiece_tokenizer(tmp_path):
    import sentencepiece

    lines = Path(os.__file__).read_text().splitlines()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=400,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        normalization_rule_name="identity",
        byte_fallback=True,
        minloglevel=2,
    )  # Llama-2 style: no normalisation, byte fallback
    save_hf(random_model(vocab_size=400), tmp_path / "hf", tokenizer=tmp_path / "sp.model")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    text = "import os\nfor path in names: return path"
    assert hf_tokenizer(text)["input_ids"] == processor.encode(text)
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token) == ("<s>", "</s>")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 2


def test_export_refuses_a_tokenizer_other_than_the_checkpoints(tmp_path):
    from sprout.data.tokenizer import Tokenizer

    recorded = Tokenizer.train_bpe(["alpha beta gamma"] * 10, 270, tmp_path / "a" / "tokenizer.json")
    other = Tokenizer.train_bpe(["delta epsilon zeta"] * 10, 270, tmp_path / "b" / "tokenizer.json")
    with pytest.raises(SproutError, match="not the one the checkpoint was trained with"):
        save_hf(random_model(), tmp_path / "hf", tokenizer=other.path, tokenizer_identity=recorded.identity)
    with pytest.raises(SproutError, match="vocab_size is 256"):
        save_hf(random_model(vocab_size=256), tmp_path / "hf2", tokenizer=recorded.path)


def test_distributed_checkpoint_folder_loads(tmp_path):
    """Lightning's sharded layout: DCP files holding {"state_dict": ...} plus meta.pt with the rest."""
    import torch.distributed.checkpoint as dcp

    model = random_model()
    state = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_0": {"step": torch.tensor(3.0)},
    }
    with pytest.warns(UserWarning):
        dcp.save(state, checkpoint_id=tmp_path / "dist")
    torch.save({"sprout": {"model_config": model.config.to_dict(), "tokenizer": None}}, tmp_path / "dist" / "meta.pt")
    loaded, _ = load_model(tmp_path / "dist")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_keys_of_a_compiled_model_load(tmp_path):
    model = random_model()
    compiled = torch.compile(model.layers[0])  # the wrapper adds `_orig_mod.` to its keys
    model.layers[0] = compiled
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    assert "model.layers.0._orig_mod.attention.wq.weight" in state
    torch.save({"state_dict": state, "sprout": {"model_config": model.config.to_dict()}}, tmp_path / "m.ckpt")
    loaded, _ = load_model(tmp_path / "m.ckpt")
    assert torch.equal(loaded.layers[0].attention.wq.weight, compiled._orig_mod.attention.wq.weight)


def test_stored_flash_attention_loads_where_flash_is_missing(tmp_path):
    from sprout.model.attention import flash_available

    if flash_available():
        pytest.skip("flash-attn is installed here")
    model = random_model()
    config = model.config.to_dict() | {"attention": "flash"}
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "sprout": {"model_config": config}},
        tmp_path / "m.ckpt",
    )
    loaded, _ = load_model(tmp_path / "m.ckpt")
    assert loaded.config.attention == "auto"


# -- bad input: each error names the path (and the tensor) -------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(SproutError, match="does not exist"):
        load_model(tmp_path / "nope.ckpt")


def test_truncated_checkpoint(tmp_path):
    path = save_model(random_model(), tmp_path / "m.ckpt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SproutError, match=r"m\.ckpt.*truncated"):
        load_model(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(SproutError, match="notes.ckpt"):
        load_model(tmp_path / "notes.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(SproutError, match="no `state_dict`"):
        load_model(tmp_path / "plain.pt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(SproutError, match="sprout.model_config"):
        load_model(tmp_path / "bare.ckpt")


def test_unsupported_folder(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(SproutError, match="no format Sprout reads"):
        load_model(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    path = save_model(random_model(), tmp_path / "m.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["model.layers.1.feed_forward.w3.weight"]
    torch.save(checkpoint, path)
    with pytest.raises(SproutError, match=r"m\.ckpt.*layers\.1\.feed_forward\.w3\.weight"):
        load_model(path)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    path = save_model(random_model(), tmp_path / "m.ckpt")
    expected = LlamaConfig(**{**GQA, "intermediate_size": 192})
    with pytest.raises(
        SproutError, match=r"layers\.0\.feed_forward\.w1\.weight has shape \(176, 64\).*needs \(192, 64\)"
    ):
        load_model(path, config=expected)


def test_truncated_safetensors(tmp_path):
    save_hf(random_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SproutError, match="model.safetensors"):
        load_model(tmp_path)


def test_hf_tensor_missing(tmp_path):
    from safetensors.torch import save_file

    save_hf(random_model(), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(SproutError, match="model.layers.0.self_attn.k_proj.weight"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_unsupported_hf_variants_are_refused(tmp_path, change, field):
    save_hf(random_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SproutError, match=field):
        load_model(tmp_path)


def test_import_cli_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sprout", "import", str(tmp_path), str(tmp_path / "x.ckpt")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert str(tmp_path) in result.stderr and "Traceback" not in result.stderr
