"""Data-mixture experiment on the shared corpus: uniform, natural, entropy, BiMix and DoReMi.

Four domains (books, Shakespeare, GSM8K math, and the Python standard library as code) are
prepared with ``app/data/prepare.py``. Short proxy runs train with the ``uniform``,
``natural`` and ``entropy`` mixtures and two ``SPREAD`` mixtures; ``sprout fit-bimix`` fits
the BiMix law on their validation curves and solves it for the final run length. DoReMi
(Algorithm 1) trains a proxy of the same size and length on uniformly drawn batches with the
loss weighted by its domain weights, against the ``uniform`` proxy as its reference model; its
time-averaged weights are the mixture it recommends. Then every policy trains for the same
number of steps: the three proxy mixtures, ``bimix`` (the fitted law) and ``doremi`` (a
``fixed`` run with DoReMi's averaged weights). Everything is repeated for ``--seeds`` seeds
(each seed its own proxies, fit, reference and finals); the table holds the mean ± std over
seeds of the mean and per-domain validation loss at the end of each final run, and whether
each policy's mean loss is level with uniform's (less than 2 std apart), and its saving: how much
less compute than uniform it needs to reach uniform's final loss, without and with its one-off
costs (BiMix's five proxy runs; DoReMi's reference, the uniform proxy, and its own proxy, whose
FLOPs include the reference's forward); the PNG the curves.

    python -m tools.experiments.mixtures --work_dir runs/mixtures

Every run is an ordinary ``sprout fit`` of a recipe written to its folder; finished runs
are reused when the command is repeated, so an interrupted experiment continues.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sprout.commands import run_function
from sprout.commands.fit_bimix import fit_bimix
from sprout.errors import SproutError
from tools.experiments import common

STATIC = ("uniform", "natural", "entropy")
POLICIES = (*STATIC, "bimix", "doremi")
# Proxies only the fit sees. Uniform, natural and entropy alone give math 23-28% of the tokens,
# too narrow a range to pin how its loss depends on its share: its fitted alpha came out 2e-11,
# and BiMix then gave math nothing (math loss 6.6 against 4.1). These spread every share over
# a factor of 5 or more.
SPREAD = {
    "spread-a": {"books": 0.10, "code": 0.55, "math": 0.05, "shakespeare": 0.30},
    "spread-b": {"books": 0.30, "code": 0.05, "math": 0.55, "shakespeare": 0.10},
}


def recipe(run_dir: Path, data_dir: Path, mixture: dict, steps: int, args: dict, reference: Path | None = None) -> dict:
    """One run's recipe with this mixture (and DoReMi's ``reference`` model)."""
    config = common.recipe(
        run_dir,
        data_dir,
        args,
        steps=steps,
        arch=args["arch"],
        shape={},
        warmup_steps=max(1, steps // 20),
        log_every=10,
        mixture=mixture,
    )
    if reference is not None:
        config["model"]["reference"] = str(reference)
    return config


def read_result(scalars: dict, config: dict) -> dict:
    """Final per-domain validation loss, the curves (against steps, and the mean against
    training FLOPs), the FLOPs spent and the weights trained with."""
    losses = common.tagged(scalars, "val/loss/")
    last = max(scalars["val/loss"])
    weights = common.tagged(scalars, "mixture/weight/")
    return {
        "flops": max(scalars["perf/flops_seen"].values()),
        "flops_curve": common.curve(scalars),
        "domain_loss": {d: points[last] for d, points in sorted(losses.items())},
        "weights": {d: points[max(points)] for d, points in sorted(weights.items())},
        "curves": {
            "mean": sorted(scalars["val/loss"].items()),
            **{d: sorted(points.items()) for d, points in sorted(losses.items())},
        },
    }


def doremi_average(run_dir: Path) -> dict[str, float]:
    """The time-averaged domain weights of a finished DoReMi run, from its last checkpoint."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "SproutDataModule"
    ]["mixture"]
    return {d: s / state["updates"] for d, s in sorted(state["alpha_sum"].items())}


def table(per_seed: dict[int, dict[str, dict]]) -> str:
    first = next(iter(per_seed.values()))
    domains = list(first["uniform"]["domain_loss"])
    head = (
        "| policy | weights ("
        + ", ".join(domains)
        + "), mean over seeds | mean val loss | vs uniform | "
        + " | ".join(domains)
        + " | saving to uniform's loss | one-off FLOPs | saving incl. one-off |"
    )
    rows = [head, "|" + "---|" * (7 + len(domains))]
    seeds = list(per_seed.values())
    uniform = [seed["uniform"]["val_loss"] for seed in seeds]
    means = {name: common.mean_std([seed[name]["val_loss"] for seed in per_seed.values()])[0] for name in first}
    for name in first:
        runs = [seed[name] for seed in per_seed.values()]
        weights = ", ".join(f"{sum(r['weights'][d] for r in runs) / len(runs):.3f}" for d in domains)
        mean = common.cell([r["val_loss"] for r in runs])
        mean = f"**{mean}**" if means[name] == min(means.values()) else mean
        versus = "-" if name == "uniform" else common.compare([r["val_loss"] for r in runs], uniform)
        # compute to reach the same seed's uniform final loss; every seed's runs have the same FLOPs
        reach = [common.flops_to_reach(seed[name]["flops_curve"], seed["uniform"]["val_loss"]) for seed in seeds]
        budget, one_off = first["uniform"]["flops"], first[name]["one_off"]
        savings = (
            ["-", "-", "-"]
            if name == "uniform"
            else [
                common.saving(reach, budget),
                f"{one_off:.2e}" if one_off else "none",
                common.saving(reach, budget, one_off) if one_off else "same",
            ]
        )
        rows.append(
            f"| {name} | {weights} | {mean} | {versus} | "
            + " | ".join(common.cell([r["domain_loss"][d] for r in runs]) for d in domains)
            + " | "
            + " | ".join(savings)
            + " |"
        )
    return "\n".join(rows)


def plot(path: Path, per_seed: dict[int, dict[str, dict]]) -> None:
    first = next(iter(per_seed.values()))
    panels = list(first["uniform"]["curves"])
    with common.figure(path, len(panels), (3.6 * len(panels), 3.4)) as axes:
        for ax, panel in zip(axes, panels):
            for i, name in enumerate(first):
                for j, results in enumerate(per_seed.values()):
                    steps, losses = zip(*results[name]["curves"][panel])
                    ax.plot(steps, losses, "-", lw=0.8, color=f"C{i}", label=name if j == 0 else None)
            ax.set_title("mean of domains" if panel == "mean" else panel)
            ax.set_xlabel("step")
            ax.set_ylabel("validation loss")
        axes[0].legend(fontsize=8)


def run_seed(work: Path, data_dir: Path, args: dict) -> dict[str, dict]:
    """Proxies, BiMix fit, DoReMi proxy and the final runs of one seed (``args["seed"]``), in ``work``."""
    steps, proxy_steps, r_min = args["steps"], args["proxy_steps"], args["r_min"]
    fit_file = work / "bimix_fit.json"
    proxies = {name: work / "proxy" / name for name in (*STATIC, *SPREAD)}
    finals = {name: (proxies[name] if proxy_steps == steps else work / "final" / name) for name in STATIC}
    finals.update({name: work / "final" / name for name in ("bimix", "doremi")})
    mixture = {name: {"class_path": name} for name in STATIC}
    mixture.update(
        {name: {"class_path": "fixed", "init_args": {"weights": weights}} for name, weights in SPREAD.items()}
    )
    mixture["bimix"] = {
        "class_path": "bimix",
        "init_args": {"fit_file": str(fit_file), "target_steps": steps, "r_min": r_min},
    }

    print(f"seed {args['seed']}: proxy runs ({proxy_steps} steps)")
    proxy_flops = {
        name: common.train(
            run_dir, recipe(run_dir, data_dir, mixture[name], proxy_steps, args), read_result, args["threads"]
        )["flops"]
        for name, run_dir in proxies.items()
    }

    print(f"seed {args['seed']}: BiMix fit on the proxy runs, target {steps} steps")
    fit_bimix([str(d / "logs") for d in proxies.values()], target_steps=steps, out=str(fit_file), r_min=r_min)

    print(f"seed {args['seed']}: DoReMi proxy ({proxy_steps} steps, uniform batches, reference: the uniform proxy)")
    doremi_proxy = work / "proxy" / "doremi"
    doremi = {
        "class_path": "doremi",
        "init_args": {"update_every": args["doremi_update_every"], "eta": args["doremi_eta"]},
    }
    proxy_flops["doremi"] = common.train(
        doremi_proxy,
        recipe(doremi_proxy, data_dir, doremi, proxy_steps, args, proxies["uniform"] / "checkpoints" / "last.ckpt"),
        read_result,
        args["threads"],
    )["flops"]
    mixture["doremi"] = {"class_path": "fixed", "init_args": {"weights": doremi_average(doremi_proxy)}}

    one_off = {  # the FLOPs a policy spends before its final run: BiMix's proxies, DoReMi's reference and proxy
        "bimix": sum(proxy_flops[name] for name in (*STATIC, *SPREAD)),
        "doremi": proxy_flops["uniform"] + proxy_flops["doremi"],
    }

    print(f"seed {args['seed']}: final runs ({steps} steps)")
    return {
        name: {
            **common.train(
                finals[name], recipe(finals[name], data_dir, mixture[name], steps, args), read_result, args["threads"]
            ),
            "one_off": one_off.get(name, 0.0),
        }
        for name in POLICIES
    }


@dataclass
class MixtureSettings(common.ExperimentSettings):
    work_dir: str = "runs/mixtures"
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 16


def mixtures(
    steps: int = 600,
    proxy_steps: int = 300,
    val_every: int = 50,
    arch: str = "micro",
    lr: float = 3e-3,
    r_min: float = 0.0,
    doremi_update_every: int = 1,
    doremi_eta: float = 1.0,
    **settings: Any,
) -> dict[int, dict[str, dict]]:
    """Run the experiment; prints and writes ``<work_dir>/mixtures.md`` and ``mixtures.png``.
    The settings every experiment shares (``common.ExperimentSettings``) come as keywords too.

    Args:
        steps: optimizer steps of every final run (BiMix's target step count).
        proxy_steps: steps of the proxy runs the law is fitted on (the three static mixtures and
            ``SPREAD``); equal to ``steps``, the proxies double as those policies' final runs.
        val_every: steps between validations (the law needs 3 or more per proxy run).
        arch: model configuration from ``sprout.model.CONFIGS``.
        lr: peak AdamW learning rate (cosine decay to a tenth).
        r_min: lower bound on every domain's BiMix weight.
        doremi_update_every: steps between DoReMi weight updates (the paper: every step).
        doremi_eta: DoReMi's step size.
    """
    shared = MixtureSettings(**settings)
    args = {**{k: v for k, v in locals().items() if k not in ("settings", "shared")}, **dataclasses.asdict(shared)}
    seed_values = common.seed_list(shared.seed, shared.seeds)
    if proxy_steps > steps:
        raise SproutError(
            f"--proxy_steps {proxy_steps} is longer than --steps {steps}; proxy runs are the short ones the law extrapolates from."
        )
    if proxy_steps < 3 * val_every:
        raise SproutError(
            f"--proxy_steps {proxy_steps} with --val_every {val_every} gives fewer than 3 validations per proxy run; the BiMix fit needs 3. Lower --val_every."
        )
    work = shared.work
    data_dir = work / "data"
    reused = sum(1 for _ in work.glob(f"seed*/*/*/{common.DONE}"))
    started, cpu = time.perf_counter(), common.children_cpu() + time.process_time()

    shared.prepare(data_dir)
    per_seed = {s: run_seed(work / f"seed{s}", data_dir, {**args, "seed": s}) for s in seed_values}

    report = table(per_seed)
    wall, cpu = (time.perf_counter() - started) / 60, (common.children_cpu() + time.process_time() - cpu) / 60
    cost = f"Seeds {seed_values}; {wall:.1f} min wall, {cpu:.1f} min CPU" + (
        f" ({reused} runs reused from an earlier invocation)" if reused else ""
    )
    command = common.command("mixtures", args)
    (work / "mixtures.md").write_text(f"{report}\n\n{cost}. Command: `{command}`\n")
    (work / "mixtures.json").write_text(json.dumps(per_seed, indent=1))
    plot(work / "mixtures.png", per_seed)
    print(f"\n{report}\n\n{cost}\nwrote {work / 'mixtures.md'}, {work / 'mixtures.png'} and each seed's BiMix fit")
    return per_seed


def main(args: list[str] | None = None) -> None:
    run_function(mixtures, args, as_positional=False)


if __name__ == "__main__":
    main()
