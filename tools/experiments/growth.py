"""Growth-operator experiment at CPU scale (Du et al. 2024, section 3): scratch vs every operator.

The target is an 8-layer, 128-wide Llama. Depthwise operators (gstack, zero_depth,
random_depth, learn) grow a 2-layer model of the same width (g = 4); widthwise operators
(direct_width, zero_width, random_width, learn) grow a 64-wide model of the same depth
(whole heads of the same size, half as many). Every run spends the same total training
FLOPs as the scratch run, the small stage included: a grown run trains the small model for
``grow_at`` steps and the grown one for as many steps as the FLOPs left allow. The data are
the shared corpus (books, Shakespeare, GSM8K math) and the Python standard library as code,
prepared as for the mixture experiment.

The table holds each run's mean validation loss at the scratch run's total FLOPs and the
training FLOPs at which it first reaches the scratch run's final loss (both linear between
validations); the speed-up is scratch FLOPs / those FLOPs - 1, as the paper reports it. Every
run is repeated for ``--seeds`` seeds (model init and data order; each seed has its own
scratch run), and every cell is the mean ± std over them; a loss less than 2 std from
scratch's is called level. The PNG plots validation loss against training FLOPs
(``perf/flops_seen``, measured by the throughput monitor), one thin line per seed.

    python -m tools.experiments.growth --work_dir runs/growth

Every run is an ordinary ``sprout fit`` of a recipe written to its folder; finished runs are
reused when the command is repeated, so an interrupted experiment continues.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sprout.commands import run_function
from sprout.errors import SproutError
from sprout.model import LlamaConfig, flops_per_token
from tools.experiments import common

DEPTH = ("gstack", "zero_depth", "random_depth", "learn")
WIDTH = ("direct_width", "zero_width", "random_width", "learn")
TARGET = {"n_layer": 8, "n_embd": 128, "n_head": 4, "n_kv_head": 2, "intermediate_size": 352}  # `tiny`, 8 layers deep
SOURCES = {
    "depth": {**TARGET, "n_layer": 2},
    "width": {**TARGET, "n_embd": 64, "n_head": 2, "n_kv_head": 1, "intermediate_size": 176},
}


def recipe(run_dir: Path, data_dir: Path, shape: dict, steps: int, args: dict, growth: dict | None = None) -> dict:
    """One run's recipe in this ``shape`` (``growth``: the section that grows it, or none for scratch)."""
    config = common.recipe(
        run_dir,
        data_dir,
        args,
        steps=steps,
        arch="tiny",
        shape=shape,
        warmup_steps=args["warmup_steps"],
        log_every=args["log_every"],
        mixture={"class_path": "natural"},
    )
    if growth is not None:
        config["growth"] = growth
    return config


def operator_section(name: str, args: dict) -> dict:
    init = {
        "random_depth": {"ramp_steps": args["ramp_steps"]},
        "random_width": {"ramp_steps": args["ramp_steps"]},
        "learn": {"learn_steps": args["learn_steps"]},
        "direct_width": {"split_noise": args["split_noise"]},
    }.get(name)
    return {"class_path": name, **({"init_args": init} if init else {})}


def grown_run_steps(scratch_steps: int, grow_at: int, source: dict, args: dict) -> int:
    """Steps of a grown run that spend at least scratch's FLOPs: the small stage is cheaper, so
    the grown model gets the difference as extra steps (rounded up to the next validation;
    results are read at exactly scratch's FLOPs)."""

    def per_step(shape: dict) -> float:
        config = LlamaConfig.from_name("tiny", **shape, vocab_size=args["vocab_size"], block_size=args["seq_len"])
        return flops_per_token(config, args["seq_len"]) * args["seq_len"] * args["batch_size"]

    steps = grow_at + (scratch_steps * per_step(TARGET) - grow_at * per_step(source)) / per_step(TARGET)
    return math.ceil(steps / args["val_every"]) * args["val_every"]


def table(per_seed: dict[int, dict[str, dict]]) -> str:
    """One row per run: mean ± std over seeds, and how its loss compares with scratch's."""
    runs = next(iter(per_seed.values()))
    rows = [
        "| run | small stage | steps | val loss at scratch's FLOPs | vs scratch | FLOPs to scratch's final loss | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    scratch = [seed["scratch"]["val_loss"] for seed in per_seed.values()]
    for name, first in runs.items():
        losses = [seed[name]["val_loss"] for seed in per_seed.values()]
        reached = [
            seed[name]["flops_to_scratch_loss"] for seed in per_seed.values() if seed[name]["flops_to_scratch_loss"]
        ]
        speedups = [
            seed["scratch"]["curve"][-1][0] / seed[name]["flops_to_scratch_loss"] - 1
            for seed in per_seed.values()
            if seed[name]["flops_to_scratch_loss"]
        ]
        missed = len(per_seed) - len(reached)
        reach = (common.cell(reached, ".3e") if reached else "-") + (
            f" (not reached in {missed} of {len(per_seed)})" if missed else ""
        )
        speedup = (
            "-"
            if name == "scratch"
            else (common.cell([100 * v for v in speedups], "+.1f") + "%" if speedups else "not reached")
        )
        versus = "-" if name == "scratch" else common.compare(losses, scratch)
        small = "-" if name == "scratch" else f"{first['grow_at']} steps, {first['source']}"
        rows.append(f"| {name} | {small} | {first['steps']} | {common.cell(losses)} | {versus} | {reach} | {speedup} |")
    return "\n".join(rows)


def plot(path: Path, per_seed: dict[int, dict[str, dict]]) -> None:
    runs = list(next(iter(per_seed.values())))
    with common.figure(path, 2, (10, 3.8), sharey=True) as axes:
        for ax, kind in zip(axes, ("depth", "width")):
            names = ["scratch"] + [n for n in runs if n.endswith(f"({kind})")]
            for i, name in enumerate(names):
                color = "k" if name == "scratch" else f"C{i}"
                for j, results in enumerate(per_seed.values()):
                    flops, losses = zip(*results[name]["curve"])
                    ax.plot([f / 1e12 for f in flops], losses, "-", lw=0.8, color=color, label=name if j == 0 else None)
            ax.set_title(f"{kind}wise growth ({len(per_seed)} seeds)")
            ax.set_xlabel("training TFLOPs (small stage included)")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("mean validation loss")


def run_seed(
    work: Path, data_dir: Path, args: dict, depth_operators: list[str], width_operators: list[str]
) -> dict[str, dict]:
    """Scratch and every operator for one seed (``args["seed"]``), in ``work``."""
    steps, grow_at = args["steps"], args["grow_at"]
    runs = {"scratch": (TARGET, steps, None, None)}
    for kind, names in (("depth", depth_operators), ("width", width_operators)):
        total = grown_run_steps(steps, grow_at, SOURCES[kind], args)
        for name in names:
            section = {
                "operator": operator_section(name, args),
                "target_overrides": TARGET,
                "at_step": grow_at,
                "save_stage": False,
            }
            runs[f"{name} ({kind})"] = (SOURCES[kind], total, section, kind)

    results = {}
    for label, (shape, total, section, kind) in runs.items():
        run_dir = work / "runs" / label.replace(" (", "-").rstrip(")")
        print(f"seed {args['seed']}, {label}: {total} steps" + (f", grown at step {grow_at}" if section else ""))
        common.train(run_dir, recipe(run_dir, data_dir, shape, total, args, section), threads=args["threads"])
        scalars = common.scalars(run_dir)
        points, flops = common.curve(scalars), scalars["perf/flops_seen"]
        results[label] = {
            "steps": total,
            "flops": max(flops.values()),
            "curve": points,
            **(
                {
                    "grow_at": grow_at,
                    "source": "2 layers" if kind == "depth" else "64 wide",
                    "grown_flops": flops[max(s for s in flops if s < grow_at)],
                }
                if section
                else {}
            ),
        }
    budget = results["scratch"]["curve"][-1][0]
    for r in results.values():
        r["val_loss"] = common.loss_at(r["curve"], budget)
    for r in results.values():
        r["flops_to_scratch_loss"] = common.flops_to_reach(r["curve"], results["scratch"]["val_loss"])

    return results


@dataclass
class GrowthSettings(common.ExperimentSettings):
    work_dir: str = "runs/growth"


def growth(
    depth_operators: list[str] = list(DEPTH),
    width_operators: list[str] = list(WIDTH),
    steps: int = 200,
    grow_at: int = 50,
    val_every: int = 25,
    log_every: int = 5,
    lr: float = 3e-3,
    warmup_steps: int = 15,
    ramp_steps: int = 25,
    learn_steps: int = 25,
    split_noise: float = 0.0,
    **settings: Any,
) -> dict[int, dict[str, dict]]:
    """Run the experiment; prints and writes ``<work_dir>/growth.md``, ``growth.json`` and ``growth.png``.
    The settings every experiment shares (``common.ExperimentSettings``) come as keywords too.

    Args:
        depth_operators: depthwise operators to compare (from 2 to 8 layers).
        width_operators: widthwise operators to compare (from 64 to 128 wide).
        steps: optimizer steps of the scratch run; sets every run's FLOPs budget.
        grow_at: steps of the small model before growth.
        val_every: steps between validations.
        log_every: steps between logged FLOP counts (``val_every`` must be a multiple).
        lr: peak AdamW learning rate of both stages (cosine decay to a tenth; restarted at growth).
        warmup_steps: linear warm-up of each stage.
        ramp_steps: steps over which random_depth/random_width open their masks; set here because
            the operators' default (the official grow_step, 5000) is longer than the whole run.
        learn_steps: steps learn trains its growth map before it is applied (learn's default,
            100, would be most of the grown stage).
        split_noise: direct_width's noise on the 1/c shares of copied inputs (0: the exact split).
    """
    shared = GrowthSettings(**settings)
    args = {**{k: v for k, v in locals().items() if k not in ("settings", "shared")}, **dataclasses.asdict(shared)}
    seed_values = common.seed_list(shared.seed, shared.seeds)
    if val_every % log_every:
        raise SproutError(
            f"--val_every {val_every} must be a multiple of --log_every {log_every}, so each validation has its FLOP count."
        )
    if steps % val_every:
        raise SproutError(
            f"--steps {steps} must be a multiple of --val_every {val_every}, so the scratch run ends with a validation."
        )
    if not 0 < grow_at < steps:
        raise SproutError(f"--grow_at {grow_at} must lie inside the scratch run's {steps} steps.")
    unknown = sorted(set(depth_operators) - set(DEPTH) | set(width_operators) - set(WIDTH))
    if unknown:
        raise SproutError(
            f"Unknown operators {unknown}: depthwise ones are {', '.join(DEPTH)}, widthwise ones {', '.join(WIDTH)}."
        )
    work = shared.work
    data_dir = work / "data"
    started = time.perf_counter()
    shared.prepare(data_dir)

    per_seed = {
        s: run_seed(work / f"seed{s}", data_dir, {**args, "seed": s}, depth_operators, width_operators)
        for s in seed_values
    }
    report = table(per_seed)
    minutes = (time.perf_counter() - started) / 60
    command = common.command("growth", args)
    (work / "growth.md").write_text(
        f"{report}\n\nSeeds {seed_values}; {minutes:.1f} min wall (runs reused from earlier: not timed again). Command: `{command}`\n"
    )
    (work / "growth.json").write_text(json.dumps(per_seed, indent=1))
    plot(work / "growth.png", per_seed)
    print(f"\n{report}\n\nwrote {work / 'growth.md'}, {work / 'growth.png'} ({minutes:.1f} min)")
    return per_seed


if __name__ == "__main__":
    run_function(growth, as_positional=False)
