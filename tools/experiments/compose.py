"""Growth, token selection and a data mixture, alone, in pairs and all three, at equal total FLOPs.

Eight arms, each run with several seeds:

* ``baseline``: the target shape (8 layers, 128 wide) from scratch, every token, the natural mixture;
* ``growth``: Gstack, a 2-layer model for ``grow_at`` steps stacked 4x into the target;
* ``selection``: Rho-1 keeping ``k``% of the tokens by excess loss over an online reference model;
* ``mixture``: the training-free entropy mixture (BiMix) instead of the natural one;
* every pair of these and all three.

Every arm spends the baseline's total training FLOPs (``perf/flops_seen``, which counts the small
stage and the reference model's forward): an arm whose steps are cheaper (growth's small stage)
gets more of them, one whose steps cost more (the reference's forward) fewer, rounded up so that
the last validation lies at or just past the budget; losses are read at exactly the budget,
linearly between validations. One-off costs that no ``perf/flops_seen`` holds are reported
apart: training the reference model (shared by every selection arm and seed; online scoring needs
no offline pass), and none for the entropy mixture (its entropies come from data preparation).

The report (``compose.md``) gives per arm the mean ± std over seeds of the validation loss at the
budget, averaged over domains and per domain, the difference to the baseline, which is written as
"level" unless it exceeds 2 standard deviations (the larger of the two arms'), and the FLOPs at
which each seed first reaches the loss of the baseline's run with the same seed at the budget, as
a speed-up (budget / those FLOPs - 1), without and with the one-off costs. ``compose.png`` plots mean validation loss against FLOPs, a band of ± 1 std across
seeds per arm.

    python -m tools.experiments.compose --work_dir runs/compose

Every run is an ordinary ``sprout fit`` of a recipe written to its folder. A run counts as finished
only once its ``result.json`` exists, written last and atomically after the run ended; the same
command again reuses finished runs and redoes the others from scratch, so an interrupted
experiment continues.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sprout.commands import run_function
from sprout.errors import SproutError
from sprout.model import LlamaConfig, flops_per_token, forward_flops_per_token
from tools.experiments import common

METHODS = ("growth", "selection", "mixture")
ARMS = ("baseline", *("+".join(c) for n in (1, 2, 3) for c in itertools.combinations(METHODS, n)))


# -- the arms ----------------------------------------------------------------------------------
def methods(arm: str) -> set[str]:
    return set() if arm == "baseline" else set(arm.split("+"))


def step_flops(layers: int, args: dict, forward_only: bool = False) -> float:
    """Model FLOPs of one step (one batch) of the ``arch`` with ``layers`` layers, as the monitor counts them."""
    config = LlamaConfig.from_name(
        args["arch"], n_layer=layers, vocab_size=args["vocab_size"], block_size=args["seq_len"]
    )
    per_token = (forward_flops_per_token if forward_only else flops_per_token)(config, args["seq_len"])
    return float(per_token * args["seq_len"] * args["batch_size"])


def arm_steps(arm: str, args: dict) -> int:
    """Steps that spend the baseline's FLOPs, rounded to the nearest multiple of ``validations``
    (so that the run ends on a validation and validates at even intervals): within half a
    validation interval of the budget."""
    budget = args["steps"] * step_flops(args["target_layers"], args)
    reference = step_flops(args["ref_layers"], args, forward_only=True) if "selection" in methods(arm) else 0.0
    target = step_flops(args["target_layers"], args) + reference
    if "growth" in methods(arm):
        small = step_flops(args["small_layers"], args) + reference
        steps = args["grow_at"] + (budget - args["grow_at"] * small) / target
    else:
        steps = budget / target
    n = args["validations"]
    return n * max(1, round(steps / n))


def recipe(run_dir: Path, arm: str, seed: int, reference: Path, args: dict) -> dict:
    """One run of ``arm``: the baseline's recipe with each of the arm's methods switched on."""
    steps, used = arm_steps(arm, args), methods(arm)
    layers = args["small_layers"] if "growth" in used else args["target_layers"]
    mixture = {"class_path": "entropy"} if "mixture" in used else {"class_path": "natural"}
    config = common.recipe(
        run_dir,
        args["data"],
        {**args, "seed": seed, "val_every": steps // args["validations"]},
        steps=steps,
        arch=args["arch"],
        shape={"n_layer": layers},
        warmup_steps=args["warmup_steps"],
        log_every=1,
        mixture=mixture,
    )
    if "selection" in used:
        config["model"]["selector"] = {"class_path": "rho1", "init_args": {"k": args["k"]}}
        config["model"]["reference"] = str(reference)
    if "growth" in used:
        config["growth"] = {
            "operator": {"class_path": "gstack"},
            "target_overrides": {"n_layer": args["target_layers"]},
            "at_step": args["grow_at"],
            "save_stage": False,
        }
    return config


def reference_recipe(run_dir: Path, args: dict) -> dict:
    """The Rho-1 reference: a ``ref_layers`` model trained on the natural mixture for ``ref_steps``."""
    return common.recipe(
        run_dir,
        args["data"],
        {**args, "val_every": args["ref_steps"]},
        steps=args["ref_steps"],
        arch=args["arch"],
        shape={"n_layer": args["ref_layers"]},
        warmup_steps=args["warmup_steps"],
        log_every=1,
        mixture={"class_path": "natural"},
    )


def read_run(scalars: dict, config: dict) -> dict:
    """The mean validation curve against FLOPs, and per domain, at every validation."""
    points = common.curve(scalars)
    steps, flops = sorted(scalars["val/loss"]), [f for f, _ in points]
    domains = common.tagged(scalars, "val/loss/")
    return {
        "curve": points,
        "domains": {d: [(f, points[s]) for f, s in zip(flops, steps)] for d, points in sorted(domains.items())},
        "flops": max(scalars["perf/flops_seen"].values()),
    }


# -- the report --------------------------------------------------------------------------------
def summarise(runs: dict[str, list[dict]], budget: float, one_off: float) -> dict[str, dict]:
    """Per arm, over its seeds: losses at the budget, the difference to the baseline and the speed-up."""
    targets = [common.loss_at(r["curve"], budget) for r in runs["baseline"]]  # seed i is held to the baseline's seed i
    summary = {}
    for arm, seeds in runs.items():
        reach = [common.flops_to_reach(r["curve"], target) for r, target in zip(seeds, targets)]
        extra = one_off if "selection" in methods(arm) else 0.0
        summary[arm] = {
            "steps": seeds[0]["steps"],
            "flops": [r["flops"] for r in seeds],
            "loss": [common.loss_at(r["curve"], budget) for r in seeds],
            "domains": {d: [common.loss_at(r["domains"][d], budget) for r in seeds] for d in seeds[0]["domains"]},
            "flops_to_target": reach,
            "speedup": common.speedups(reach, budget),
            "speedup_with_one_off": common.speedups(reach, budget, extra),
            "one_off": extra,
        }
    base = summary["baseline"]["loss"]
    for s in summary.values():
        s["beyond_noise"] = common.beyond_noise(s["loss"], base)
    return summary


def verdict(s: dict, base: list[float]) -> str:
    delta = statistics.fmean(s["loss"]) - statistics.fmean(base)
    if s["beyond_noise"] is None:
        return f"{delta:+.4f} (1 seed: no noise estimate)"
    return f"{delta:+.4f} (> 2 std)" if s["beyond_noise"] else f"{delta:+.4f}, level"


def table(summary: dict[str, dict]) -> str:
    domains = list(summary["baseline"]["domains"])
    head = (
        ["arm", "steps", "val loss at budget", "vs baseline"]
        + domains
        + ["FLOPs to baseline's loss", "speed-up", "speed-up incl. one-off costs"]
    )
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = summary["baseline"]["loss"]
    for arm, s in summary.items():
        reached = [f for f in s["flops_to_target"] if f]
        reach = (
            f"{statistics.fmean(reached):.3e}"
            if len(reached) == len(s["flops_to_target"])
            else f"{len(reached)} of {len(s['flops_to_target'])} seeds reach it"
        )
        speed = common.cell(s["speedup"], "+.1%") if s["speedup"] and arm != "baseline" else "–"
        with_one_off = (
            (common.cell(s["speedup_with_one_off"], "+.1%") if s["one_off"] else "no one-off cost")
            if s["speedup"] and arm != "baseline"
            else "–"
        )
        cells = [
            arm,
            str(s["steps"]),
            common.cell(s["loss"]),
            "–" if arm == "baseline" else verdict(s, base),
            *(common.cell(s["domains"][d]) for d in domains),
            reach,
            speed,
            with_one_off,
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(path: Path, runs: dict[str, list[dict]], budget: float) -> None:
    with common.figure(path, 1, (7.5, 4.5)) as (ax,):
        for i, (arm, seeds) in enumerate(runs.items()):
            flops = [f / 1e12 for f, _ in seeds[0]["curve"]]
            stats = [common.mean_std([r["curve"][j][1] for r in seeds]) for j in range(len(flops))]
            means = [m for m, _ in stats]
            color = "k" if arm == "baseline" else f"C{i}"
            ax.plot(flops, means, "o-", ms=2.5, color=color, label=arm)
            ax.fill_between(flops, [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.15, lw=0)
        ax.axvline(budget / 1e12, color="k", lw=0.6, ls="--")
        ax.set_xlabel("training TFLOPs (perf/flops_seen: small stage and reference forward included)")
        ax.set_ylabel("mean validation loss (band: ± 1 std over seeds)")
        ax.legend(fontsize=7)


@dataclass
class ComposeSettings(common.ExperimentSettings):
    work_dir: str = "runs/compose"
    threads: int | None = 1


def compose(
    data_dir: str | None = None,
    arms: list[str] = list(ARMS),
    steps: int = 200,
    validations: int = 8,
    arch: str = "tiny",
    target_layers: int = 8,
    small_layers: int = 2,
    grow_at: int = 50,
    ref_layers: int = 4,
    ref_steps: int = 200,
    k: float = 60.0,
    lr: float = 3e-3,
    warmup_steps: int = 15,
    jobs: int = 2,
    **settings: Any,
) -> dict[str, dict]:
    """Run the experiment; prints and writes ``<work_dir>/compose.md``, ``compose.json`` and ``compose.png``.
    The settings every experiment shares (``common.ExperimentSettings``) come as keywords too.

    Args:
        data_dir: an already prepared data folder to use instead (its tokenizer's size must be ``vocab_size``).
        arms: which arms to run; ``baseline`` always runs (every other arm is measured against it).
        steps: optimizer steps of the baseline; its FLOPs are every arm's budget.
        validations: validations per run, evenly spaced; every run's step count is a multiple.
        arch: model shape from ``app/model/config.py`` whose width every model shares.
        target_layers: layers of the baseline and of every grown model.
        small_layers: layers of the growth arms' first stage (Gstack stacks it to ``target_layers``).
        grow_at: steps of the small stage.
        ref_layers: layers of the Rho-1 reference model.
        ref_steps: steps the reference model trains (a one-off cost, reported apart).
        k: percent of tokens Rho-1 keeps.
        lr: peak AdamW learning rate (cosine decay to a tenth; restarted at growth).
        warmup_steps: linear warm-up of each stage.
        jobs: runs trained at the same time.
    """
    shared = ComposeSettings(**settings)
    args = {**{k: v for k, v in locals().items() if k not in ("settings", "shared")}, **dataclasses.asdict(shared)}
    seeds, seed, threads, batch_size, seq_len = (
        shared.seeds,
        shared.seed,
        shared.threads,
        shared.batch_size,
        shared.seq_len,
    )
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SproutError(f"--arms names {unknown}; the arms are {', '.join(ARMS)}.")
    if seeds < 1 or validations < 1 or steps % validations:
        raise SproutError(
            f"--steps {steps} must be a positive multiple of --validations {validations}, and --seeds at least 1 (got {seeds})."
        )
    if not 0 < grow_at < steps:
        raise SproutError(f"--grow_at {grow_at} must lie inside the baseline's {steps} steps.")
    arms = ["baseline", *(a for a in ARMS if a in arms and a != "baseline")]
    work = shared.work
    started, cpu = time.perf_counter(), common.children_cpu()
    if data_dir is None:
        args["data"] = work / "data"
        shared.prepare(args["data"])
    else:
        args["data"] = Path(data_dir).expanduser().resolve()

    reference = work / "reference"
    reference_ckpt = reference / "checkpoints" / "last.ckpt"
    if any("selection" in methods(a) for a in arms):
        print(f"reference model: {ref_layers} layers, {ref_steps} steps")
        common.train(reference, reference_recipe(reference, args), threads=threads)
    one_off = max(common.scalars(reference)["perf/flops_seen"].values()) if reference_ckpt.is_file() else 0.0
    reference_loss = json.loads((reference / common.DONE).read_text())["val_loss"] if one_off else None

    planned = [(arm, s) for arm in arms for s in range(seed, seed + seeds)]
    run_dirs = {(arm, s): work / "runs" / arm / f"seed{s}" for arm, s in planned}
    print(
        f"{len(planned)} runs ({len(arms)} arms x {seeds} seeds), {jobs} at a time; steps per arm: "
        + ", ".join(f"{a} {arm_steps(a, args)}" for a in arms)
    )

    def run(key: tuple[str, int]) -> dict:
        arm, s = key
        run_dir = run_dirs[key]
        result = common.train(run_dir, recipe(run_dir, arm, s, reference_ckpt, args), read_run, threads)
        return {**result, "steps": arm_steps(arm, args)}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip(planned, pool.map(run, planned)))
    runs = {arm: [results[(arm, s)] for s in range(seed, seed + seeds)] for arm in arms}

    budget = steps * step_flops(target_layers, args)
    summary = summarise(runs, budget, one_off)
    report = table(summary)
    wall, cpu = (time.perf_counter() - started) / 60, (common.children_cpu() - cpu) / 60
    notes = [
        f"Budget: {budget:.3e} FLOPs per run (the baseline's {steps} steps of the {target_layers}-layer `{arch}` model, {batch_size} x {seq_len} tokens per step).",
        (
            f"One-off cost of the selection arms: the reference model's training ({ref_layers} layers, {ref_steps} steps, final mean val loss "
            f"{reference_loss if reference_loss is None else round(reference_loss, 4)}), {one_off:.3e} FLOPs ({one_off / budget:.0%} of one run's budget), "
            "shared by all their runs and seeds but charged in full to each in the last column; online scoring needs no offline pass "
            "(its forward is in perf/flops_seen). The entropy mixture has none (its entropies are counted during data preparation)."
        ),
        f"{wall:.1f} min wall, {cpu:.1f} min CPU of finished training processes (runs reused from an earlier invocation are not timed again).",
        f"Command: `{common.command('compose', {k: v for k, v in args.items() if k not in ('data', 'data_dir')})}`",
    ]
    text = f"{report}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (work / "compose.md").write_text(text)
    (work / "compose.json").write_text(
        json.dumps({"budget": budget, "one_off": one_off, "summary": summary, "runs": runs}, indent=1)
    )
    plot(work / "compose.png", runs, budget)
    print(f"\n{text}\nwrote {work / 'compose.md'}, {work / 'compose.png'} and {work / 'compose.json'}")
    return summary


def main(args: list[str] | None = None) -> None:
    run_function(compose, args, as_positional=False)


if __name__ == "__main__":
    main()
