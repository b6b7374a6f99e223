"""The quick-start recipe end to end, shrunk: build the embedded corpus, prepare, train, reuse."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sprout.cli import main

RECIPE = Path(__file__).parents[1] / "recipes" / "quickstart.yaml"


def run_quickstart(tmp_path: Path, capsys) -> str:
    main(
        [
            "fit",
            "--config", str(RECIPE),
            "--data.data_dir", str(tmp_path / "data"),
            "--data.prepare.init_args.max_bytes", "200000",
            "--data.prepare.init_args.vocab_size", "384",
            "--data.seq_len", "64",
            "--data.val_blocks", "16",
            "--model.arch", "micro",
            "--model.arch_overrides", "{vocab_size: 384, block_size: 64}",
            "--trainer.max_steps", "60",
            "--trainer.val_check_interval", "20",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false",
            "--monitor.peak_flops", "1e11",
        ]
    )  # fmt: skip
    return capsys.readouterr().out


def test_quickstart_trains_saves_and_reuses_data(tmp_path, capsys):
    out = run_quickstart(tmp_path, capsys)
    assert "Building the embedded quick-start corpus" in out
    assert "TensorBoard: tensorboard --logdir" in out
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "val/loss",
        "val/loss/code",
        "val/loss/text",
        "perf/tokens_per_s",
        "perf/mfu",
        "train/grad_norm",
        "mixture/weight/code",
    } <= tags
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) == 3 and val[-1] < val[0] - 0.5  # clearly falling

    meta = tmp_path / "data" / "code" / "meta.json"
    before = meta.stat().st_mtime_ns
    out = run_quickstart(tmp_path, capsys)
    assert "Building the embedded quick-start corpus" not in out
    assert meta.stat().st_mtime_ns == before


def test_domain_without_validation_data_is_a_clear_error(tiny_data, tmp_path):
    import json
    import shutil

    import pytest

    from sprout.data.datamodule import SproutDataModule
    from sprout.errors import SproutError

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    meta = json.loads((data / "text" / "meta.json").read_text())
    meta["splits"]["val"] = {"tokens": 0, "documents": 0}  # what prepare writes when no document was held out
    (data / "text" / "meta.json").write_text(json.dumps(meta))
    dm = SproutDataModule(str(data), seq_len=32)
    with pytest.raises(SproutError, match=r"'text'.*no validation sequence.*--val_fraction"):
        dm.setup("fit")
