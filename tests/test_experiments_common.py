import importlib

import pytest

from sprout.errors import SproutError
from tools.experiments import common


def test_scalars_reads_what_the_recipe_logger_writes(tmp_path):
    """The recipes' logger and the scalar reader must agree on where a run's logs are."""
    run_dir = tmp_path / "runs" / "uniform"
    section = common.recipe(
        run_dir,
        tmp_path / "data",
        {"seed": 0, "val_every": 2, "lr": 1e-3, "vocab_size": 512, "seq_len": 32, "batch_size": 2, "val_blocks": 2},
        steps=4,
        arch="micro",
        shape={},
        warmup_steps=1,
        log_every=1,
        mixture={"class_path": "uniform"},
    )["trainer"]["logger"]
    module, name = section["class_path"].rsplit(".", 1)
    logger = getattr(importlib.import_module(module), name)(**section["init_args"])
    logger.log_metrics({"val/loss": 3.0, "val/loss/books": 3.5, "val/loss/code": 2.5}, step=2)
    logger.log_metrics({"val/loss": 2.0, "val/loss/books": 2.4, "val/loss/code": 1.6}, step=4)
    logger.finalize("success")

    scalars = common.scalars(run_dir)
    assert scalars["val/loss"] == {2: 3.0, 4: 2.0}
    assert common.tagged(scalars, "val/loss/") == {
        "books": {2: 3.5, 4: pytest.approx(2.4)},
        "code": {2: 2.5, 4: pytest.approx(1.6)},
    }


def test_capped_cuts_the_last_text_and_stops_reading():
    read = []

    def texts():
        for text in ("abcd", "efgh", "ijkl"):
            read.append(text)
            yield text

    assert list(common.capped(texts(), 6)) == ["abcd", "ef"]
    assert read == ["abcd", "efgh"]  # the third text is never read


def test_require_names_the_missing_file(tmp_path):
    (tmp_path / "books").mkdir()
    with pytest.raises(SproutError, match=r"math/gsm8k_train.jsonl.*--corpus"):
        common.require([tmp_path / "books", tmp_path / "math" / "gsm8k_train.jsonl"], "books/ and math/")


def test_command_quotes_lists_for_the_shell():
    args = {"work_dir": "runs/x", "corpus": "c", "steps": 200, "depth_operators": ["gstack", "learn"]}
    assert (
        common.command("growth", args)
        == "python -m tools.experiments.growth --steps 200 --depth_operators '[gstack, learn]'"
    )


def test_seed_aggregation_and_the_level_rule():
    assert common.seed_list(3, 3) == [3, 4, 5]
    with pytest.raises(SproutError, match="--seeds"):
        common.seed_list(0, 0)
    mean, std = common.mean_std([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert common.cell([1.0, 2.0, 3.0], ".2f") == "2.00 ± 1.00" and common.cell([1.5]) == "1.5000"
    assert common.compare([1.0, 1.1, 1.2], [1.1, 1.2, 1.3]) == "level"  # 0.1 apart, 2 std = 0.2
    assert common.compare([1.0, 1.01, 1.02], [1.2, 1.21, 1.22]) == "better"
    assert common.compare([1.2, 1.21, 1.22], [1.0, 1.01, 1.02]) == "worse"
    assert common.compare([1.2, 1.21, 1.22], [1.0, 1.01, 1.02], lower_is_better=False) == "better"
    assert common.compare([1.0], [2.0]) == "n/a (1 seed)"
    assert common.beyond_noise([1.0, 1.1, 0.9], [1.05, 1.15, 0.95]) is False
    assert common.beyond_noise([1.0, 1.01, 0.99], [1.5, 1.51, 1.49]) is True
    assert common.beyond_noise([1.0], [2.0]) is None


def test_loss_against_flops_and_speedups():
    points = [(1.0, 4.0), (2.0, 3.0), (4.0, 2.0)]
    assert common.loss_at(points, 3.0) == 2.5 and common.loss_at(points, 9.0) == 2.0
    assert common.flops_to_reach(points, 2.5) == 3.0 and common.flops_to_reach(points, 1.0) is None
    assert common.flops_to_reach(points, 5.0) == 1.0  # reached at the first validation
    assert common.speedups([2.0, 4.0], budget=4.0) == [1.0, 0.0]
    assert common.speedups([2.0, 4.0], budget=4.0, one_off=2.0) == pytest.approx([0.0, -1 / 3])
    assert common.speedups([2.0, None], budget=4.0) is None
    scalars = {"perf/flops_seen": {10: 1.0, 20: 2.0}, "val/loss": {10: 5.0, 20: 4.0}, "val/loss/math": {20: 3.0}}
    assert common.curve(scalars) == [(1.0, 5.0), (2.0, 4.0)]
    assert common.curve(scalars, "val/loss/math") == [(2.0, 3.0)]


def test_growth_and_mixture_tables_aggregate_seeds(tmp_path):
    import torch

    from tools.experiments import growth, mixtures

    def grown(loss, reach):
        return {
            "val_loss": loss,
            "flops_to_scratch_loss": reach,
            "steps": 300,
            "grow_at": 50,
            "source": "2 layers",
            "curve": [(0.0, 9.0), (2.0, loss)],
        }

    per_seed = {
        s: {
            "scratch": {**grown(5.0 + 0.01 * s, 2.0), "steps": 200},
            "gstack (depth)": grown(4.5 + 0.01 * s, 1.0 + 0.1 * s),
        }
        for s in range(3)
    }
    text = growth.table(per_seed)
    assert (
        "| gstack (depth) | 50 steps, 2 layers | 300 | 4.5100 ± 0.0100 | better | 1.100e+00 ± 1.000e-01 | +82.8 ± 16.7% |"
        in text
    )

    def final(loss, w, one_off=0.0):
        return {
            "val_loss": loss,
            "flops": 4.0,
            "flops_curve": [(2.0, loss + 0.2), (4.0, loss)],
            "domain_loss": {"books": loss + 0.1, "code": loss - 0.1},
            "weights": {"books": w, "code": 1 - w},
            "one_off": one_off,
        }

    per_seed = {
        s: {
            "uniform": final(4.3 + 0.01 * s, 0.5),
            "entropy": final(4.2, 0.6),  # reaches uniform's 4.30, 4.31, 4.32 at 3.0, 2.9, 2.8 FLOPs
            "bimix": final(4.2, 0.6, one_off=2.0),  # the same, after 2 FLOPs of proxies
            "doremi": final(4.3 + 0.02 * s, 0.4 + 0.1 * s, one_off=4.0),
        }
        for s in range(3)
    }
    text = mixtures.table(per_seed)
    assert (
        "| doremi | 0.500, 0.500 | 4.3200 ± 0.0200 | level | 4.4200 ± 0.0200 | 4.2200 ± 0.0200 | 1 of 3 seeds reach it | 4.00e+00 | 1 of 3 seeds reach it |"
        in text
    )
    assert "| **4.2000 ± 0.0000** | better | 4.3000 ± 0.0000 | 4.1000 ± 0.0000 | +38.0% ± 4.8% | none | same |" in text
    assert "| +38.0% ± 4.8% | 2.00e+00 | -18.3% ± 1.7% |" in text  # 4 / (3.0 + 2) - 1, 4 / (2.9 + 2) - 1, ...
    state = {"SproutDataModule": {"mixture": {"alpha_sum": {"code": 1.5, "books": 0.5}, "updates": 2}}}
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / "last.ckpt")
    assert mixtures.doremi_average(tmp_path) == {"books": 0.25, "code": 0.75}


def test_selection_table_aggregates_seeds():
    from tools.experiments import selection

    def run(math, excess, one_off=None):
        val = {
            "math": [(50, math + 1), (100, math + 0.5), (150, math + 0.2), (200, math)],
            "books": [(200, 4.0)],
            "code": [(200, 3.0)],
        }
        select = {
            "kept_excess": excess,
            "dropped_excess": 0.0,
            "kept_share/books": 0.2,
            "kept_share/code": 0.3,
            "kept_share/math": 0.5,
        }
        curve = val["math"]  # FLOPs are steps here
        return {"tokens_per_step": 2048, "val": val, "select": select, "flops": 200.0, "math_curve": curve} | {
            "one_off": one_off or {}
        }

    per_seed = {
        s: {"all": run(3.9 + 0.01 * s, 0.0), "rho1": run(3.7 + 0.01 * s, 2.0 + s, {"reference": 20, "scoring": 10})}
        for s in range(3)
    }
    text = selection.table(per_seed)
    assert (
        "| rho1 | 4.7100 ± 0.0100 | 4.2100 ± 0.0100 | 3.9100 ± 0.0100 | **3.7100 ± 0.0100** | better | 4.0000 ± 0.0000 | 3.0000 ± 0.0000 | 20% / 30% / 50% | +3.000 ± 1.000 |"
        in text
    )
    # all's final 3.9x is reached at step 150 of 200, and at 180 with the one-off cost
    assert "| +3.000 ± 1.000 | +33.3% ± 0.0% | 2.00e+01 + 1.00e+01 | +11.1% ± 0.0% |" in text
