"""Growth across separate launches, through the CLI: resuming from the stage-1 checkpoint written
at the boundary replays the growth exactly, and a run started from a small checkpoint
(``growth.source``) counts the small stage's tokens and FLOPs."""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_run import recipe, scalars, sprout

from sprout.checkpoint.weights import load_model, save_model

STEPS, GROW_AT = 7, 4


def test_resume_from_the_stage1_checkpoint_is_bit_identical(tiny_data, tmp_path):
    """G_random depthwise draws its new layers at growth while a selector draws from the global
    torch generator every step: the resumed run grows at its start, where the global generator
    is elsewhere than in the uninterrupted run, yet must draw the same new layers."""
    sections = {
        "growth": {
            "operator": {"class_path": "random_depth", "init_args": {"ramp_steps": 2}},
            "at_step": GROW_AT,
            "target_overrides": {"n_layer": 4},
        },
        "model": {"selector": {"class_path": "tiny_run.GlobalRandomTokens"}},
    }
    whole = recipe(tmp_path / "whole.yaml", tiny_data, tmp_path / "whole", STEPS, **sections)
    assert sprout("fit", "--config", str(whole))[0] == 0
    expected = tmp_path / "whole" / "tiny" / "version_0"
    stage1 = expected / "checkpoints" / f"stage1-step{GROW_AT:06d}.ckpt"
    assert torch.load(stage1, weights_only=True)["global_step"] == GROW_AT

    resumed = recipe(tmp_path / "resumed.yaml", tiny_data, tmp_path / "resumed", STEPS, **sections)
    assert sprout("fit", "--config", str(resumed), "--ckpt_path", str(stage1))[0] == 0
    run = tmp_path / "resumed" / "tiny" / "version_0"
    got, want = scalars(run), scalars(expected)
    assert sorted(got) == list(range(GROW_AT, STEPS))
    assert got == {s: want[s] for s in got}  # exact float equality after growth

    a = torch.load(expected / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(".3." in k for k in a)  # the grown 4-layer model
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def growth_texts(run_dir):
    texts = []
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if "growth/text_summary" in acc.Tags()["tensors"]:
            texts += [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("growth/text_summary")]
    return texts


def test_stage_two_from_a_small_checkpoint_counts_the_small_stage(tiny_data, tmp_path):
    """growth.source: perf/tokens_seen and perf/flops_seen continue from the small run's totals,
    and the growth event says so; from a checkpoint without a monitor's state (save_model) they
    count this run only, which is also what the carried totals exceed the small run's by."""
    small_steps, steps = 3, 2
    assert (
        sprout("fit", "--config", str(recipe(tmp_path / "small.yaml", tiny_data, tmp_path / "small", small_steps)))[0]
        == 0
    )
    small_ckpt = tmp_path / "small" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    small = torch.load(small_ckpt, weights_only=True)["callbacks"]["ThroughputMonitor"]
    assert small["tokens_seen"] == small_steps * 4 * 32 and small["flops_seen"] > 0
    model, meta = load_model(small_ckpt)
    bare_ckpt = save_model(model, tmp_path / "bare.ckpt", meta)  # the same weights, no callback states

    runs = {}
    for name, source in (("carried", small_ckpt), ("bare", bare_ckpt)):
        growth = {"operator": {"class_path": "gstack"}, "target_overrides": {"n_layer": 4}, "source": str(source)}
        assert (
            sprout(
                "fit",
                "--config",
                str(recipe(tmp_path / f"{name}.yaml", tiny_data, tmp_path / name, steps, growth=growth)),
            )[0]
            == 0
        )
        run = tmp_path / name / "tiny" / "version_0"
        runs[name] = (
            run,
            torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["ThroughputMonitor"],
        )
    (carried_run, carried), (bare_run, bare) = runs["carried"], runs["bare"]
    assert bare["tokens_seen"] == steps * 4 * 32 and bare["flops_seen"] > 0  # this run's steps only
    assert carried["tokens_seen"] == small["tokens_seen"] + bare["tokens_seen"]
    assert carried["flops_seen"] == small["flops_seen"] + bare["flops_seen"]
    assert scalars(carried_run, "perf/tokens_seen")[0] == small["tokens_seen"] + 4 * 32  # logged from the first step on
    [text] = growth_texts(carried_run)
    assert f"{small['tokens_seen']:,} tokens" in text and "perf/flops_seen" in text
    [text] = growth_texts(bare_run)
    assert "count this run only" in text
