"""The TinyLlama recipes train with TinyLlama's batch (1024 sequences x 2048 tokens per optimizer
step) and initialisation; the Gstack 1.1B recipe on the official data."""

from pathlib import Path

import pytest
import torch
import yaml

from sprout.model import Llama, LlamaConfig
from sprout.optim import build_optimizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "tinyllama-1.1b-multinode"])
def test_tinyllama_recipes_step_2m_tokens(name):
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    trainer, data = recipe["trainer"], recipe["data"]
    sequences = (
        trainer.get("num_nodes", 1) * trainer["devices"] * data["batch_size"] * trainer["accumulate_grad_batches"]
    )
    assert sequences == 1024 and data["seq_len"] == 2048
    assert trainer["max_steps"] == round(100e9 / (1024 * 2048))  # the recipes' 100B tokens
    assert "1430511" in (RECIPES / f"{name}.yaml").read_text()  # TinyLlama's 3T tokens in steps, named in the comments
    assert round(3e12 / (1024 * 2048)) == 1430511


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "tinyllama-1.1b-multinode"])
def test_tinyllama_recipes_initialise_and_decay_as_tinyllama(name):
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    assert recipe["model"]["init"] == "tinyllama"
    assert recipe["model"]["decay_norms_and_biases"] is True


def test_decay_norms_and_biases_puts_every_parameter_in_the_decayed_group():
    """TinyLlama's pretrain/tinyllama.py decays model.parameters(); Sprout's default exempts 1-D ones."""
    model = Llama(LlamaConfig.from_name("micro", vocab_size=64, block_size=16))
    factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)  # noqa: E731
    everything = build_optimizer(factory, model, decay_all=True)
    assert [g["weight_decay"] for g in everything.param_groups] == [0.1]
    assert len(everything.param_groups[0]["params"]) == len(list(model.parameters()))
    default = build_optimizer(factory, model)
    decayed, exempt = default.param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert exempt["params"] and all(p.ndim == 1 for p in exempt["params"])


def test_gstack_recipe_trains_on_slimpajama_without_github():
    """prts ``run_pretrain.py`` trains on SlimPajama alone; its ``prepare_slimpajama.py`` drops GitHub."""
    recipe = yaml.safe_load((RECIPES / "gstack-1.1b.yaml").read_text())
    assert sorted(recipe["data"]["domains"]) == ["arxiv", "book", "c4", "commoncrawl", "stackexchange", "wikipedia"]


def test_gstack_recipe_decays_over_the_official_horizons():
    """base_model.sh and g_stack.sh each pass --max_step=300000: both stages' cosines span their own 300000 steps."""
    recipe = yaml.safe_load((RECIPES / "gstack-1.1b.yaml").read_text())
    assert recipe["model"]["schedule"]["max_steps"] == 300000
    assert recipe["growth"]["stage2_max_steps"] == 300000 and recipe["growth"]["restart_schedule"] is True
