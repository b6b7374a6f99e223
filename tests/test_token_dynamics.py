"""Token-loss dynamics: the paper's four classes on hand-made curves, and the tool end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_VOCAB

from sprout.checkpoint.weights import save_model
from sprout.commands.dynamics import CLASSES, classify, token_dynamics
from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig


def test_classes_on_hand_made_curves():
    curves = {
        "falls": [3.0, 2.0, 1.0],  # ΔL = -2
        "rises": [1.0, 2.0, 3.0],  # ΔL = +2
        "just_falls": [2.0, 1.9, 1.79],  # ΔL = -0.21
        "flat_high": [5.0, 5.1, 5.0],  # ΔL = 0, last 5.0 above the mean last loss
        "barely_falls_low": [0.69, 0.6, 0.5],  # ΔL = -0.19: not H→L; last 0.5 below the mean
        "flat_low": [0.5, 0.5, 0.5],
    }
    classes, delta = classify(np.array(list(curves.values())).T)
    got = dict(zip(curves, (CLASSES[c] for c in classes)))
    assert got == {
        "falls": "H→L",
        "rises": "L→H",
        "just_falls": "H→L",
        "flat_high": "H→H",
        "barely_falls_low": "L→L",
        "flat_low": "L→L",
    }
    np.testing.assert_allclose(delta, [-2.0, 2.0, -0.21, 0.0, -0.19, 0.0], atol=1e-12)
    # a line fitted through all points, not last minus first (which is 0 here)
    classes, delta = classify(np.array([[1.0], [3.0], [0.0], [2.0], [1.0]]))
    assert delta[0] == pytest.approx(-0.4) and CLASSES[classes[0]] == "H→L"
    with pytest.raises(SproutError, match="at least 2"):
        classify(np.ones((1, 4)))


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """Two random checkpoints over the shared tiny data (conftest.py)."""
    root = tmp_path_factory.mktemp("dyn")
    ckpts = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = Llama(LlamaConfig.from_name("micro", vocab_size=TINY_VOCAB, block_size=32))
        model.init_weights()
        ckpts.append(str(save_model(model, root / f"m{seed}.ckpt")))
    return tiny_data, root, ckpts


def test_tool_writes_shares_curves_and_passage(run):
    data, root, (a, b) = run
    forward = token_dynamics([a, b], str(data), "code", 16, str(root / "ab"), max_blocks=6)
    backward = token_dynamics([b, a], str(data), "code", 16, str(root / "ba"), max_blocks=6)
    assert forward["tokens"] == 6 * 16
    assert sum(forward["shares"].values()) == pytest.approx(1.0)
    # reversing the checkpoints turns every falling token into a rising one
    assert (
        forward["shares"]["H→L"] == backward["shares"]["L→H"] and forward["shares"]["L→H"] == backward["shares"]["H→L"]
    )
    assert forward["shares"]["H→L"] + forward["shares"]["L→H"] > 0  # two random models disagree on some tokens
    same = token_dynamics([a, a, a], str(data), "code", 16, str(root / "aa"), max_blocks=6)
    assert same["shares"]["H→L"] == same["shares"]["L→H"] == 0
    assert json.loads((root / "ab" / "shares.json").read_text())["shares"] == forward["shares"]
    assert (root / "ab" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    passage = (root / "ab" / "passage.txt").read_text(encoding="utf-8")
    assert passage.startswith("Marks: ") and any(m in passage for m in "[{<")


def test_tool_needs_two_checkpoints(run):
    data, root, (a, _) = run
    with pytest.raises(SproutError, match="at least 2"):
        token_dynamics([a], str(data), "code", 16, str(root / "x"))
