"""Downstream evaluation through lm-evaluation-harness, offline: ``sprout eval`` on a
checkpoint, the ``eval:`` callback during a run, and their bad input.

Tiny models on one thread (on a loaded 2-core machine two threads wait on each other at every
small matmul); Sprout's offline tasks only, since the tests have no network.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_run import recipe, scalars, sprout

from sprout.checkpoint.weights import load_model, save_model
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.evaluation.tasks import LOCAL_DIR, local_task_configs
from sprout.hf import save_hf
from sprout.model import Llama, LlamaConfig


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def multiple_choice_texts() -> list[str]:
    """The multiple-choice task's own text: each question followed by its right answer."""
    rows = [json.loads(line) for line in (LOCAL_DIR / "stdlib_mc.jsonl").read_text().splitlines()]
    return [f"{row['question']} {row['choices'][row['answer']]}" for row in rows]


def trained_checkpoint(tmp_path: Path, texts: list[str], steps: int) -> Path:
    """A micro Llama trained ``steps`` full-batch steps on ``texts`` (one document each), saved as
    a Sprout checkpoint that records its tokenizer."""
    tokenizer = Tokenizer.train_bpe(texts * 4, 384, tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = Llama(LlamaConfig.from_name("micro", vocab_size=384, block_size=128))
    docs = [[tokenizer.eos_id, *tokenizer.encode(text), tokenizer.eos_id] for text in texts]
    width = max(map(len, docs))
    ids = torch.tensor([doc + [-100] * (width - len(doc)) for doc in docs])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(ids[:, :-1].clamp(min=0))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_model(model, tmp_path / "model.ckpt", {"tokenizer": tokenizer.identity})


def run_tool(*args: str, capsys) -> tuple[int, str]:
    """``sprout eval ARGS``: (exit status, stderr)."""
    code, err = sprout("eval", *args)
    capsys.readouterr()
    return code, err


def one_paragraph(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("sprout eval: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_a_model_trained_on_the_task_text_scores_above_chance(tmp_path, capsys):
    checkpoint = trained_checkpoint(tmp_path, multiple_choice_texts(), steps=80)
    code, err = run_tool(
        str(checkpoint),
        "--tasks",
        "stdlib_mc",
        "--out_dir",
        str(tmp_path / "mc"),
        capsys=capsys,
    )
    assert code == 0, err[-3000:]
    results = json.loads((tmp_path / "mc" / "results.json").read_text())
    assert results["lm_eval"]["n-samples"]["stdlib_mc"]["effective"] == 40
    # Chance is 0.25 (4 choices); 0.6 of 40 questions is 5 standard deviations above it.
    assert results["scores"]["stdlib_mc/acc"] >= 0.6, results["scores"]
    assert results["step"] is None  # not a run's checkpoint: nothing logged to TensorBoard

    code, err = run_tool(
        str(checkpoint),
        "--tasks",
        "gsm8k_local",
        "--out_dir",
        str(tmp_path / "math"),
        "--limit",
        "3",
        capsys=capsys,
    )
    assert code == 0, err[-3000:]
    results = json.loads((tmp_path / "math" / "results.json").read_text())
    assert results["lm_eval"]["n-samples"]["gsm8k_local"]["effective"] == 3
    assert set(results["scores"]) == {
        "gsm8k_local/exact_match_strict-match",
        "gsm8k_local/exact_match_flexible-extract",
    }
    assert all(0.0 <= value <= 1.0 for value in results["scores"].values())


def test_eval_callback_logs_during_training_and_the_tool_matches_it(tiny_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    config = recipe(
        tmp_path / "r.yaml",
        tiny_data,
        runs,
        steps=8,
        eval={"tasks": ["stdlib_mc"], "every_n_steps": 4, "limit": 8},
    )
    code, err = sprout("fit", "--config", str(config))
    assert code == 0, err[-3000:]
    run = runs / "tiny" / "version_0"
    during = scalars(run, "eval/stdlib_mc/acc")
    assert sorted(during) == [4, 8] and all(0.0 <= v <= 1.0 for v in during.values())
    # The same weights, tasks and limit from the checkpoint give the same score, logged in the run at its step.
    code, err = run_tool(
        str(run / "checkpoints" / "last.ckpt"),
        "--tasks",
        "stdlib_mc",
        "--limit",
        "8",
        capsys=capsys,
    )
    assert code == 0, err[-3000:]
    results = json.loads((run / "eval" / "last.ckpt" / "results.json").read_text())
    assert results["step"] == 8
    assert results["scores"]["stdlib_mc/acc"] == pytest.approx(during[8])
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the tool's events file beside the run's


def test_gsm8k_task_reads_the_shared_corpus_else_its_fixture(monkeypatch, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(LOCAL_DIR, project / "app" / "evaluation" / "local_tasks")
    monkeypatch.setattr("sprout.evaluation.tasks.PROJECT_ROOT", project)
    monkeypatch.setattr("sprout.evaluation.tasks.LOCAL_DIR", project / "app" / "evaluation" / "local_tasks")

    def data():
        return Path(local_task_configs()["gsm8k_local"]["dataset_kwargs"]["data_files"]["test"])

    assert data() == project / "app" / "evaluation" / "local_tasks" / "gsm8k_fixture.jsonl"
    shared = tmp_path / "shared" / "corpus" / "math" / "gsm8k_train.jsonl"
    shared.parent.mkdir(parents=True)
    shared.write_text((LOCAL_DIR / "gsm8k_fixture.jsonl").read_text())
    assert data() == project / ".." / "shared" / "corpus" / "math" / "gsm8k_train.jsonl"
    (project / "app" / "evaluation" / "local_tasks" / "stdlib_mc.jsonl").unlink()
    with pytest.raises(
        SproutError,
        match="Task stdlib_mc .* reads .*stdlib_mc.jsonl, which does not exist",
    ):
        local_task_configs()


def test_offline_tasks_read_the_data_installed_beside_them_wherever_the_package_is(monkeypatch, tmp_path):
    """A wheel install has no project root around it: the shipped data resolve beside the task YAMLs."""
    monkeypatch.setattr("sprout.evaluation.tasks.PROJECT_ROOT", tmp_path / "site-packages")  # no checkout here
    files = {name: config["dataset_kwargs"]["data_files"]["test"] for name, config in local_task_configs().items()}
    assert files == {
        "gsm8k_local": str(LOCAL_DIR / "gsm8k_fixture.jsonl"),
        "stdlib_mc": str(LOCAL_DIR / "stdlib_mc.jsonl"),
    }


# -- bad input ----------------------------------------------------------------------------------


def test_unknown_task_lists_close_matches(tmp_path, capsys):
    checkpoint = trained_checkpoint(tmp_path, multiple_choice_texts(), steps=0)
    message = one_paragraph(*run_tool(str(checkpoint), "--tasks", "stdlib_mcq", capsys=capsys))
    assert "Unknown evaluation task `stdlib_mcq`" in message and "Close matches: stdlib_mc" in message
    message = one_paragraph(*run_tool(str(checkpoint), "--tasks", "helaswag", capsys=capsys))
    assert "Close matches: hellaswag" in message


def test_a_task_that_needs_a_download_names_it_and_the_offline_tasks(tmp_path, capsys):
    checkpoint = trained_checkpoint(tmp_path, multiple_choice_texts(), steps=0)
    message = one_paragraph(*run_tool(str(checkpoint), "--tasks", "stdlib_mc,arc_easy", capsys=capsys))
    assert (
        "Evaluation task `arc_easy` needs its data set" in message
        and "offline tasks instead: gsm8k_local, stdlib_mc" in message
    )


def test_a_checkpoint_whose_tokenizer_is_missing_is_refused(tmp_path, capsys):
    checkpoint = trained_checkpoint(tmp_path, multiple_choice_texts(), steps=0)
    (tmp_path / "tokenizer.json").unlink()
    message = one_paragraph(*run_tool(str(checkpoint), "--tasks", "stdlib_mc", capsys=capsys))
    assert (
        f"trained with the tokenizer {tmp_path / 'tokenizer.json'}, which does not exist" in message
        and "--tokenizer" in message
    )
    hf = tmp_path / "hf"
    hf.mkdir()
    save_hf(load_model(checkpoint)[0], hf)  # weights only, no tokenizer files
    message = one_paragraph(*run_tool(str(hf), "--tasks", "stdlib_mc", capsys=capsys))
    assert f"looked for {hf / 'tokenizer.json'} and {hf / 'tokenizer.model'}" in message


def test_without_lm_eval_the_extra_is_named(tmp_path, capsys, monkeypatch):
    checkpoint = trained_checkpoint(tmp_path, multiple_choice_texts(), steps=0)
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if not installed
    message = one_paragraph(*run_tool(str(checkpoint), "--tasks", "stdlib_mc", capsys=capsys))
    assert "extra `eval`" in message and 'pip install -e ".[eval]"' in message
