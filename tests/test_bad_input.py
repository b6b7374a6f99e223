"""The bad-input catalogue: every mistake gets a one-paragraph ``sprout: error:`` naming the culprit
(file, key, plugin, shard, checkpoint) and the fix, exit status 2, no traceback, and no
checkpoint written. The table in docs/bad-input.md lists the same cases."""

import json
import shutil
from pathlib import Path

import pytest
from tiny_run import SEQ, VOCAB, recipe, save_reference, sprout

from sprout import registry
from sprout.data.prepare import Source, prepare
from sprout.data.tokenizer import Tokenizer


def fails(config: Path, *args: str) -> str:
    """Run ``sprout fit``; it must fail cleanly. Returns the error paragraph."""
    code, err = sprout("fit", "--config", str(config), *args)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and "usage:" not in err
    lines = [line for line in err.splitlines() if line.startswith("sprout: error: ")]
    assert len(lines) == 1, err[-2000:]
    runs = config.parent / "runs"
    assert not list(runs.rglob("*.ckpt")) and not list(runs.rglob(".*.tmp-*"))  # nothing half-written
    return lines[0].removeprefix("sprout: error: ")


@pytest.fixture
def data(tiny_data, tmp_path) -> Path:
    """A private copy of the tiny data to damage."""
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


# -- the recipe ---------------------------------------------------------------------------------


def test_malformed_yaml(tiny_data, tmp_path):
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs")
    config.write_text(config.read_text().replace("max_steps: 12", "max_steps: [12"))
    message = fails(config)
    assert message.startswith(
        f"The recipe {config} is not valid YAML: while parsing a flow sequence at line 3, column 14"
    )
    assert message.endswith(
        "Fix the syntax there: indentation, a missing ':' after a key, or an unclosed bracket or quote."
    )
    assert not (tmp_path / "runs").exists()


def test_unknown_key_suggests_the_closest(tiny_data, tmp_path):
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"batch_sise": 4}))
    assert message == (
        f"Unknown option 'data.batch_sise' in the recipe {tmp_path / 'r.yaml'} (did you mean 'data.batch_size'?). "
        "Fix or remove it; `sprout fit --help` lists every option with its type."
    )
    assert not (tmp_path / "runs").exists()
    mixture = {"class_path": "fixed", "init_args": {"wieghts": {"code": 1, "text": 1}}}
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"mixture": mixture}))
    assert message == (
        f"Unknown init_args key 'wieghts' for sprout.plugins.mixtures.static.Fixed at data.mixture in the recipe {tmp_path / 'r.yaml'} "
        "(did you mean 'weights'?). It takes: weights."
    )


def test_wrong_type_names_key_file_and_expected_type(tiny_data, tmp_path):
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"batch_size": "four"}))
    assert message == (
        f"Invalid value for data.batch_size in the recipe {tmp_path / 'r.yaml'}: expected int, got four. "
        "Fix that value; `sprout fit --help` lists every option with its type."
    )
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs"), "--data.seq_len", "long")
    assert message.startswith("Invalid value for data.seq_len in the command line: expected int, got long.")


def test_missing_option_and_missing_recipe_file(tmp_path):
    code, err = sprout("fit", "--config", str(tmp_path / "nowhere.yaml"))
    assert (
        code == 2
        and f"sprout: error: The recipe file {tmp_path / 'nowhere.yaml'} does not exist. Check the path given to --config."
        in err
    )
    (tmp_path / "r.yaml").write_text("trainer: {max_steps: 2}\n")
    message = fails(tmp_path / "r.yaml")
    assert message.startswith(
        "Missing option data.data_dir: set it in the recipe (data: {data_dir: ...}) or on the command line with --data.data_dir;"
    )


def test_unknown_plugin_lists_the_registered_ones(tiny_data, tmp_path):
    message = fails(
        recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"mixture": {"class_path": "unifrm"}})
    )
    assert message.startswith(
        f"data.mixture in the recipe {tmp_path / 'r.yaml'}: Unknown mixture plugin 'unifrm'. Available: "
    )
    assert "uniform" in message and message.endswith("Run `sprout plugins` to list them, or give a full class_path.")


@pytest.fixture
def exploding_plugin(tmp_path, monkeypatch):
    """An installed package whose registered selector raises when imported."""
    site = tmp_path / "site"
    info = site / "exploding_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: exploding-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sprout.plugins]\nselector.explodes = exploding_plugin:Explodes\n")
    (site / "exploding_plugin.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(site))
    registry.plugins.cache_clear()
    yield
    registry.plugins.cache_clear()


def test_plugin_that_raises_on_import(exploding_plugin, tiny_data, tmp_path):
    config = recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", model={"selector": {"class_path": "explodes"}})
    with pytest.warns(UserWarning, match="exploding-plugin"):
        message = fails(config)
    assert message == (
        f"model.selector in the recipe {config}: The selector plugin 'explodes' from package 'exploding-plugin' failed to load: "
        "RuntimeError: this plugin is broken on purpose. Fix or reinstall that package."
    )


@pytest.mark.parametrize("selector, k", [("rho1", 0), ("random", 150)])
def test_selector_k_outside_0_100(selector, k, tiny_data, tmp_path):
    message = fails(
        recipe(
            tmp_path / "r.yaml",
            tiny_data,
            tmp_path / "runs",
            model={"selector": {"class_path": selector, "init_args": {"k": k}}},
        )
    )
    assert (
        f"k={float(k)} is outside (0, 100]. Set model.selector.init_args.k to the percentage of tokens to keep"
        in message
    )


@pytest.mark.parametrize(
    "args, sections, key",
    [
        (["--model.optimizer.init_args.lr", "-0.001"], {}, "model.optimizer.init_args.lr"),
        (["--model.optimizer.init_args.lr", "0"], {}, "model.optimizer.init_args.lr"),
        (["--model.optimizer.init_args.betas", "[1.5, 0.95]"], {}, "model.optimizer.init_args.betas"),
        (["--model.optimizer.init_args.weight_decay", "-0.1"], {}, "model.optimizer.init_args.weight_decay"),
        (["--model.schedule.warmup_steps", "-5"], {}, "model.schedule.warmup_steps"),
        (["--model.schedule.min_lr=-1e-5"], {}, "model.schedule.min_lr"),
        (["--data.batch_size", "0"], {}, "data.batch_size"),
        (["--data.seq_len", "0"], {}, "data.seq_len"),
        (["--data.num_workers", "-1"], {}, "data.num_workers"),
        (["--data.val_blocks", "0"], {}, "data.val_blocks"),
        (["--monitor.log_every", "0"], {}, "monitor.log_every"),
        (
            ["--growth.at_step", "-3"],
            {"growth": {"operator": {"class_path": "gstack"}, "target_overrides": {"n_layer": 4}}},
            "growth.at_step",
        ),
        (
            [],
            {"model": {"selector": {"class_path": "random", "init_args": {"seed": -1}}}},
            "model.selector.init_args.seed",
        ),
        (
            [],
            {
                "data": {
                    "mixture": {
                        "class_path": "bimix",
                        "init_args": {
                            "target_steps": 10,
                            "r_min": -0.1,
                            "coefficients": {
                                d: {"A": 1.0, "B": 0.5, "C": 0.5, "alpha": 0.1, "beta": 0.2} for d in ("code", "text")
                            },
                        },
                    }
                }
            },
            "data.mixture.init_args.r_min",
        ),
    ],
)
def test_numeric_options_torch_would_reject_deep_inside(args, sections, key, tiny_data, tmp_path):
    """Refused when the recipe is read, naming the key, before torch or a library fails mid-run."""
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", **sections), *args)
    assert message.startswith(key) and f"--{key}" in message, message


def test_a_negative_number_on_the_command_line(tiny_data, tmp_path):
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs"), "--model.schedule.min_lr", "-1e-5")
    assert message == (
        "The option --model.schedule.min_lr on the command line got no value: argparse reads -1e-5 as another option because "
        "it starts with '-'. Write it as --model.schedule.min_lr=-1e-5."
    )


def test_settings_legal_but_surely_wrong_are_warned_about_at_start(tiny_data, tmp_path):
    """A recipe without a schedule keeps the 2000-step warm-up even for a 2-step run; a floor above the peak."""
    config = recipe(
        tmp_path / "r.yaml",
        tiny_data,
        tmp_path / "runs",
        2,
        model={
            "arch": "micro",
            "arch_overrides": {"vocab_size": 320, "block_size": 32},
            "schedule": {"min_lr": 0.01},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}},
        },
    )
    code, err = sprout("fit", "--config", str(config))
    assert code == 0, err[-2000:]
    warnings = [
        line.removeprefix("sprout: warning: ") for line in err.splitlines() if line.startswith("sprout: warning: ")
    ]
    assert warnings == [
        "model.schedule.warmup_steps=2000 is not below the run's 2 steps (trainer.max_steps=2): the learning rate never leaves warm-up "
        "and ends at 0.1% of its peak lr=0.003. Set model.schedule.warmup_steps to a small share of the run, e.g. 1.",
        'model.schedule.min_lr=0.01 is above the peak model.optimizer.init_args.lr=0.003: the cosine "decay" raises the learning rate '
        "after warm-up. Set min_lr below lr (TinyLlama: lr 4e-4, min_lr 4e-5).",
    ]


def test_negative_mixture_weights(tiny_data, tmp_path):
    mixture = {"class_path": "fixed", "init_args": {"weights": {"code": -1, "text": 2}}}
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"mixture": mixture}))
    assert (
        message
        == "mixture fixed: weights must be finite, non-negative and not all zero; got {'code': -1.0, 'text': 2.0}. Fix data.mixture.init_args.weights."
    )


def test_mixture_weights_not_matching_the_domains(tiny_data, tmp_path):
    mixture = {"class_path": "fixed", "init_args": {"weights": {"code": 1, "prose": 2}}}
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"mixture": mixture}))
    assert (
        message
        == "mixture fixed: data.mixture.init_args.weights names ['code', 'prose'] but the data domains are ['code', 'text']. Give one weight per domain."
    )


# -- the data -------------------------------------------------------------------------------------


def test_missing_data_folder(tmp_path):
    message = fails(recipe(tmp_path / "r.yaml", tmp_path / "nodata", tmp_path / "runs"))
    assert message == (
        f"data.data_dir {tmp_path / 'nodata'} does not exist. Prepare data with sprout prepare --out_dir {tmp_path / 'nodata'}, "
        "or fix the path in the recipe."
    )


def test_missing_shard_folder(data, tmp_path):
    shutil.rmtree(data / "code" / "train")
    message = fails(recipe(tmp_path / "r.yaml", data, tmp_path / "runs"))
    assert message == (
        f"Shard folder {data / 'code' / 'train'} is missing, though {data / 'code' / 'meta.json'} is there. "
        f"Copy {data / 'code'} again, or re-run sprout prepare for this domain with --overwrite."
    )


def test_truncated_shard(data, tmp_path):
    chunk = sorted((data / "text" / "train").glob("*.bin"))[0]
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[: size // 2])
    message = fails(recipe(tmp_path / "r.yaml", data, tmp_path / "runs"))
    index = data / "text" / "train" / "index.json"
    assert message == (
        f"Shard {chunk} is {size // 2:,} bytes, but {index} says {size:,} bytes: it is truncated or corrupt. "
        f"Copy {data / 'text'} again, or re-run sprout prepare for this domain with --overwrite."
    )


def test_garbage_shard_read_by_a_dataloader_worker(data, tmp_path):
    """torch re-raises a worker's error with the worker's traceback as its message; the user
    still gets the one paragraph."""
    for chunk in (data / "text" / "train").glob("*.bin"):
        chunk.write_bytes(b"\xff\xff\xff\x7f" * (chunk.stat().st_size // 4))  # int32 2**31 - 1, same size
    message = fails(recipe(tmp_path / "r.yaml", data, tmp_path / "runs"), "--data.num_workers", "1")
    assert (
        message.startswith("Shard ")
        and "of domain 'text' is damaged: it is of the right size, but its xxh3_64" in message
    )
    assert "DataLoader worker" not in message


def test_corrupt_shard_index(data, tmp_path):
    index = data / "code" / "val" / "index.json"
    index.write_text(index.read_text()[:40])
    message = fails(recipe(tmp_path / "r.yaml", data, tmp_path / "runs"))
    assert message.startswith(f"{index} is corrupt (JSONDecodeError: ")
    assert message.endswith(f"Copy {data / 'code'} again, or re-run sprout prepare for this domain with --overwrite.")


def test_shards_from_another_tokenizer(tiny_data, tmp_path):
    other = Tokenizer.train_bpe(["another corpus, another vocabulary"] * 20, 300, tmp_path / "other.json")
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"tokenizer": str(other.path)}))
    assert message.startswith(
        f"Domain 'code' in {tiny_data} was tokenized with {tiny_data / 'tokenizer.json'} (sha256 "
    )
    assert message.endswith(
        f"but the recipe's tokenizer is {other.path} (sha256 {other.sha256[:12]}). Re-prepare the shards with this tokenizer "
        "or point data.tokenizer at the one they were made with."
    )


def test_tokenizer_larger_than_the_model_vocabulary(tiny_data, tmp_path):
    model = {"arch_overrides": {"vocab_size": 256, "block_size": 32}}
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", model=model))
    assert message == (
        f"The tokenizer {tiny_data / 'tokenizer.json'} has 320 tokens but the model's embedding has vocab_size=256. "
        "Set model.arch_overrides.vocab_size to at least 320 (a multiple of 64 is fastest) or use the tokenizer the model was built for."
    )


def test_empty_domain(data, tmp_path):
    (tmp_path / "tiny.txt").write_text("Too short to fill one training sequence.")
    prepare(
        [Source([str(tmp_path / "tiny.txt")], format="text", domain="tiny")],
        data / "tokenizer.json",
        data,
        num_workers=1,
        progress=False,
        summary=False,
    )
    assert json.loads((data / "tiny" / "meta.json").read_text())["splits"]["train"]["tokens"] < 33
    message = fails(recipe(tmp_path / "r.yaml", data, tmp_path / "runs"))
    assert message == (
        f"Domain 'tiny' in {data} has less than one training sequence of 33 tokens: too little data. "
        "Add data, drop the domain from data.domains, or lower data.seq_len."
    )


def test_tokenizer_json_that_is_not_json(data, tmp_path):
    (data / "tokenizer.json").write_text('{\n  "version": "1.0",\n  "model": {"type": BPE}\n}\n')
    message = fails(recipe(tmp_path / "r.yaml", data, tmp_path / "runs"))
    assert message == (
        f"Tokenizer file {data / 'tokenizer.json'} is not valid JSON: Expecting value at line 3, column 21. It is truncated or was "
        "edited by hand; re-create or re-download it (a tokenizer.json is written by Hugging Face tokenizers)."
    )


def tool_fails(main, args: list[str], capsys, tool: str) -> str:
    """Run a command; it must exit 2 with one ``<tool>: error:`` paragraph and no traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix(f"{tool}: error: ")


def test_json_line_whose_text_is_null(tiny_data, tmp_path, capsys):
    from sprout.cli import main

    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n{"text": null, "id": 2}\n')
    out = tmp_path / "out"
    message = tool_fails(
        main,
        [
            "prepare",
            "--tokenizer",
            str(tiny_data / "tokenizer.json"),
            "--out_dir",
            str(out),
            "--jsonl",
            str(tmp_path / "in.jsonl"),
            "--domain",
            "notes",
            "--num_workers",
            "1",
            "--progress",
            "false",
        ],
        capsys,
        "sprout prepare",
    )
    assert message.startswith(
        f"Bad input record at {tmp_path / 'in.jsonl'}, line 2: field 'text' is null, not a string. Fix or remove it, or re-run with --skip_bad_records true"
    )
    assert not (out / "notes").exists() and not list(out.glob(".staging*"))  # nothing half-written


# -- checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory) -> Path:
    """A 2-layer micro model's checkpoint after one step."""
    root = tmp_path_factory.mktemp("one_step")
    assert sprout("fit", "--config", str(recipe(root / "r.yaml", tiny_data, root / "runs", 1)))[0] == 0
    return root / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


def test_checkpoint_from_another_model_shape(checkpoint, tiny_data, tmp_path):
    model = {"arch_overrides": {"vocab_size": 320, "block_size": 32, "n_layer": 3}}
    message = fails(
        recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", model=model), "--ckpt_path", str(checkpoint)
    )
    assert message == (
        f"The checkpoint {checkpoint} holds another model than the recipe's: n_layer 2 (recipe: 3). Resume with the recipe that wrote it "
        "(its model.arch and model.arch_overrides); to train a larger model from it, start a new run with growth.source set to it."
    )


def test_truncated_checkpoint(checkpoint, tiny_data, tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(checkpoint.read_bytes()[:5000])
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs"), "--ckpt_path", str(cut))
    assert message == (
        f"Checkpoint {cut} cannot be read: it is truncated or corrupt (not a complete archive). "
        f"Resume from another checkpoint in {tmp_path} instead (pass its path to --ckpt_path)."
    )


def test_growth_source_incompatible_with_the_target(checkpoint, tiny_data, tmp_path):
    growth = {"operator": {"class_path": "gstack"}, "source": str(checkpoint), "target_overrides": {"n_embd": 128}}
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", growth=growth))
    assert message == (
        "Growth operator Gstack cannot change `n_embd` (64 -> 128): depth operators (gstack, zero_depth, random_depth) change only n_layer. "
        "Fix growth.target_arch / growth.target_overrides, or use `learn` to grow depth and width together."
    )


# -- combining the methods (growth + rho1 + a mixture) -------------------------------------------


def compose_recipe(tmp_path: Path, data_dir: Path, reference: Path, mixture: dict) -> Path:
    """Gstack growth, rho1 against ``reference`` and ``mixture``, as recipes/compose-tiny.yaml combines them."""
    return recipe(
        tmp_path / "r.yaml",
        data_dir,
        tmp_path / "runs",
        model={
            "selector": {"class_path": "rho1", "init_args": {"k": 60}},
            "reference": str(reference),
            "arch_overrides": {"vocab_size": VOCAB, "block_size": SEQ, "n_layer": 1},
        },
        data={"mixture": mixture},
        growth={"operator": "gstack", "target_overrides": {"n_layer": 2}, "at_step": 6},
    )


def test_compose_reference_with_another_vocabulary(tiny_data, tmp_path):
    from sprout.checkpoint.weights import save_model
    from sprout.model import Llama, LlamaConfig

    other = save_model(
        Llama(LlamaConfig.from_name("micro", vocab_size=512, block_size=SEQ)),
        tmp_path / "ref512.ckpt",
        {"tokenizer": Tokenizer.load(tiny_data / "tokenizer.json").identity},
    )
    message = fails(compose_recipe(tmp_path, tiny_data, other, {"class_path": "entropy"}))
    assert message.startswith(
        f"The reference model {other} has vocab_size=512 but the model being trained has vocab_size={VOCAB}"
    )


def test_compose_reference_with_another_tokenizer(tiny_data, tmp_path):
    from sprout.checkpoint.weights import save_model
    from sprout.model import Llama, LlamaConfig

    foreign = {"path": "/elsewhere/tokenizer.json", "sha256": "f" * 64, "vocab_size": VOCAB}
    other = save_model(
        Llama(LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ)),
        tmp_path / "ref.ckpt",
        {"tokenizer": foreign},
    )
    message = fails(compose_recipe(tmp_path, tiny_data, other, {"class_path": "entropy"}))
    ours = Tokenizer.load(tiny_data / "tokenizer.json").identity["sha256"][:12]
    assert (
        f"was trained with tokenizer /elsewhere/tokenizer.json (sha256 ffffffffffff) but the training data uses {tiny_data / 'tokenizer.json'} (sha256 {ours})"
        in message
    )


def test_compose_bimix_fit_for_other_domains(tiny_data, tmp_path):
    from sprout.bimix import BiMixLaw, write_fit

    law = BiMixLaw(A=1.0, B=0.5, C=0.5, alpha=0.2, beta=0.3)
    fit = tmp_path / "fit.json"
    write_fit(fit, {"code": law, "prose": law, "math": law})
    reference = save_reference(tiny_data, tmp_path / "ref.ckpt")
    message = fails(
        compose_recipe(
            tmp_path,
            tiny_data,
            reference,
            {"class_path": "bimix", "init_args": {"fit_file": str(fit), "target_steps": 12}},
        )
    )
    assert f"The bimix law (fit_file {fit}) was fitted for other domains than the training data" in message
    assert "missing from the law: ['text'], extra in the law: ['math', 'prose']" in message


# -- the methods' options (issue: faithful to the papers) ----------------------------------------


def test_stage2_lr_without_growth_names_the_option(tiny_data, tmp_path):
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", growth={"stage2_lr": 3.0e-4}))
    assert message.startswith(
        "growth.stage2_lr set(s) the learning rate of the grown model, but the recipe grows nothing (no growth.operator)."
    )


def test_doremi_sampling_with_unknown_domains_names_them(tiny_data, tmp_path):
    reference = tmp_path / "ref.ckpt"
    from tiny_run import save_reference

    save_reference(tiny_data, reference)
    mixture = {"class_path": "doremi", "init_args": {"sampling": {"code": 1.0, "prose": 1.0}}}
    message = fails(
        recipe(
            tmp_path / "r.yaml",
            tiny_data,
            tmp_path / "runs",
            data={"mixture": mixture},
            model={"reference": str(reference)},
        )
    )
    assert message.startswith(
        "doremi: data.mixture.init_args.sampling names domains ['prose'] that are not training domains; gives no weight to training domains ['text']"
    )


def test_natural_groups_leaving_a_domain_out_names_it(tiny_data, tmp_path):
    mixture = {"class_path": "natural", "init_args": {"groups": {"a": {"total": 1.0, "domains": ["code"]}}}}
    message = fails(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", data={"mixture": mixture}))
    assert message.startswith(
        "mixture natural: data.mixture.init_args.groups leaves training domains ['text'] in no group"
    )
