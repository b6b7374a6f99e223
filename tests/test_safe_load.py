"""Checkpoints a user names are read with torch.load(weights_only=True): a file whose pickle would
run code is refused at every entry point, with one paragraph naming the file, and nothing in it runs."""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import SEQ, VOCAB, recipe, save_reference, sprout

from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig

REFUSED = "holds objects a checkpoint should not"


class Payload:
    """Unpickling this writes ``marker``: the stand-in for code an attacker's checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


@pytest.fixture
def evil_ckpt(tmp_path, marker) -> Path:
    """A Sprout-looking checkpoint (real weights, metadata) with a payload beside them."""
    model = Llama(LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ))
    path = tmp_path / "evil.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "sprout": {"model_config": model.config.to_dict(), "note": Payload(marker)},
        },
        path,
    )
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.read_text() == "ran"
    marker.unlink()
    return path


@pytest.fixture
def evil_distributed(tmp_path, marker) -> Path:
    """A distributed checkpoint folder whose .metadata (read by torch with pickle.load) carries the payload."""
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "evil_dist"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"state_dict": {"model.w": torch.zeros(2)}}, checkpoint_id=folder, no_dist=True)
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    return folder


def refused(message: str, path: Path, marker: Path) -> None:
    assert str(path) in message and REFUSED in message and "nothing in it ran" in message, message
    assert not marker.exists()


def failing_fit(config: Path, *args: str) -> str:
    code, err = sprout("fit", "--config", str(config), *args)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("sprout: error: ")]
    assert not list((config.parent / "runs").rglob("*.ckpt"))
    return line


def test_ckpt_path(evil_ckpt, marker, tiny_data, tmp_path):
    refused(
        failing_fit(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs"), "--ckpt_path", str(evil_ckpt)),
        evil_ckpt,
        marker,
    )


def test_ckpt_path_distributed_folder(evil_distributed, marker, tiny_data, tmp_path):
    message = failing_fit(
        recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs"), "--ckpt_path", str(evil_distributed)
    )
    refused(message, evil_distributed / ".metadata", marker)


@pytest.mark.parametrize("where", ["init_from", "reference", "growth_source"])
def test_model_init_from_reference_and_growth_source(where, evil_ckpt, marker, tiny_data, tmp_path):
    sections = {
        "init_from": {
            "model": {
                "arch": "micro",
                "arch_overrides": {"vocab_size": VOCAB, "block_size": SEQ},
                "init_from": str(evil_ckpt),
            }
        },
        "reference": {
            "model": {
                "arch": "micro",
                "arch_overrides": {"vocab_size": VOCAB, "block_size": SEQ},
                "reference": str(evil_ckpt),
                "selector": {"class_path": "rho1"},
            }
        },
        "growth_source": {
            "growth": {
                "operator": {"class_path": "gstack"},
                "source": str(evil_ckpt),
                "target_overrides": {"n_layer": 4},
            }
        },
    }[where]
    refused(failing_fit(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", **sections)), evil_ckpt, marker)


def test_tools(evil_ckpt, evil_distributed, marker, tiny_data, tmp_path, capsys):
    from sprout.cli import main

    for args, path in [
        (["export", str(evil_ckpt), str(tmp_path / "hf")], evil_ckpt),
        (["consolidate", str(evil_distributed), str(tmp_path / "one.ckpt")], evil_distributed / ".metadata"),
        (
            [
                "score",
                "--reference",
                str(evil_ckpt),
                "--data_dir",
                str(tiny_data),
                "--seq_len",
                str(SEQ),
                "--out_dir",
                str(tmp_path / "scores"),
            ],
            evil_ckpt,
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err, err
        refused(err, path, marker)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "one.ckpt").exists()


def test_score_file_holding_python_objects(marker, tmp_path):
    from sprout.data.scores import open_scores

    np.save(tmp_path / "scores.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(SproutError) as err:
        open_scores(tmp_path)
    assert str(tmp_path / "scores.npy") in str(err.value) and "Python objects" in str(err.value)
    assert not marker.exists()


def test_sprouts_own_checkpoints_still_load(tiny_data, tmp_path):
    """The allow-list is what Sprout stores: a real run's checkpoint and a saved reference load."""
    from sprout.checkpoint.safe_load import load_file

    assert sprout("fit", "--config", str(recipe(tmp_path / "r.yaml", tiny_data, tmp_path / "runs", 2)))[0] == 0
    last = next((tmp_path / "runs").rglob("last.ckpt"))
    assert set(load_file(last)) >= {"state_dict", "optimizer_states", "callbacks", "sprout"}
    assert "state_dict" in load_file(save_reference(tiny_data, tmp_path / "ref.ckpt"))
