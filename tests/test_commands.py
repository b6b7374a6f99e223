"""The ``sprout`` subcommands: ``sprout --help`` lists them, each answers ``--help``, takes
``--config`` and ``--print_config``, and runs end to end (prepare, eval, fit-bimix: their own test files)."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import TINY_VOCAB
from tiny_run import sprout

from sprout.checkpoint.weights import load_model, save_model
from sprout.cli import TRAINING
from sprout.commands import COMMANDS
from sprout.data.tokenizer import Tokenizer
from sprout.hf import save_hf
from sprout.model import Llama, LlamaConfig


def test_help_lists_every_command_without_importing_torch_or_jsonargparse():
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sprout.cli import main; main(['--help']); "
            "assert not {'torch', 'lightning', 'jsonargparse'} & set(sys.modules), 'sprout --help imported too much'",
        ],
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("  ")]
    assert names == [*TRAINING, *COMMANDS, "plugins"]


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_answers_help_with_config_options(name, capsys):
    assert sprout(name, "--help") == (0, "")
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sprout {name} ") and "--config CONFIG" in out and "--print_config" in out


def test_config_file_and_print_config(tmp_path, capsys):
    config = tmp_path / "plan.yaml"
    config.write_text("tokens: 2T\nparams: 7B\n")
    assert sprout("plan-growth", "--config", str(config), "--factor", "2", "--print_config") == (0, "")
    assert yaml.safe_load(capsys.readouterr().out) == {
        "tokens": "2T",
        "params": "7B",
        "arch": None,
        "factor": 2,
        "write_recipe": None,
    }
    assert sprout("plan-growth", "--config", str(config)) == (0, "")
    assert "grow after d = 11.11B tokens" in capsys.readouterr().out


def test_user_error_is_one_line_named_after_the_command(capsys):
    code, err = sprout("plan-growth", "--tokens", "2T")
    assert code == 2 and err.startswith("sprout plan-growth: error: Give the target size with --params")


def test_memory(capsys):
    assert sprout("memory", "--arch", "micro", "--shards", "1", "--micro_batch", "2", "--seq_len", "64")[0] == 0
    assert "GiB per GPU" in capsys.readouterr().out


def micro_model(seed: int) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig.from_name("micro", vocab_size=TINY_VOCAB, block_size=32))
    model.init_weights()
    return model


def test_import_consolidate_export(tmp_path):
    model = micro_model(0)
    save_hf(model, tmp_path / "hf")
    assert sprout("import", str(tmp_path / "hf"), str(tmp_path / "in.ckpt")) == (0, "")
    assert sprout("consolidate", str(tmp_path / "in.ckpt"), str(tmp_path / "one.ckpt"), "--dtype", "bfloat16")[0] == 0
    assert sprout("export", str(tmp_path / "one.ckpt"), str(tmp_path / "out"))[0] == 0  # no tokenizer: a note only
    back, _ = load_model(tmp_path / "out")
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor.to(torch.bfloat16)), name


def test_score_and_dynamics(tiny_data, tmp_path):
    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    a, b = (str(save_model(micro_model(s), tmp_path / f"m{s}.ckpt", {"tokenizer": tok.identity})) for s in (1, 2))
    args = ["--data_dir", str(tiny_data), "--seq_len", "16"]
    code, err = sprout("score", "--reference", a, *args, "--out_dir", str(tmp_path / "s"), "--domains", "[code]")
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "code" / "train" / "meta.json").read_text())["done"] > 0
    code, err = sprout(
        "dynamics", "--checkpoints", f"[{a}, {b}]", *args, "--domain", "code", "--out_dir", str(tmp_path / "d")
    )
    assert code == 0, err
    assert json.loads((tmp_path / "d" / "shares.json").read_text())["tokens"] > 0
