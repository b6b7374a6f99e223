"""Data-mixture experiment on the shared corpus: uniform, natural, entropy, BiMix and DoReMi.

Four domains (books, Shakespeare, GSM8K math, and the Python standard library as code) are
prepared with ``app/data/prepare.py``. Short proxy runs train with the ``uniform``,
``natural`` and ``entropy`` mixtures and two ``SPREAD`` mixtures; ``tools/fit_bimix.py`` fits
the BiMix law on their validation curves and solves it for the final run length. Then every policy trains for the
same number of steps: the three proxy mixtures, ``bimix`` (the fitted law) and ``doremi``
(online, against the finished ``uniform`` run as its reference model). The table holds the
mean and per-domain validation loss at the end of each final run; the PNG their curves.

    python tools/experiments/mixtures.py --work_dir runs/mixtures

Every run is an ordinary ``sprout fit`` of a recipe written to its folder; finished runs
are reused when the command is repeated, so an interrupted experiment continues.
"""

from __future__ import annotations

import time
from pathlib import Path

from app.errors import SproutError
from tools import fit_bimix
from tools.cli import run_tool
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
    """Final per-domain validation loss, the curves, and the weights trained with
    (a dynamic policy's time average, as it recommends them for a fixed mixture)."""
    losses = common.tagged(scalars, "val/loss/")
    last = max(scalars["val/loss"])
    averaged = common.tagged(scalars, "mixture/average/")
    weights = averaged or common.tagged(scalars, "mixture/weight/")
    return {
        "domain_loss": {d: points[last] for d, points in sorted(losses.items())},
        "weights": {d: points[max(points)] for d, points in sorted(weights.items())},
        "weights_kind": "time-averaged" if averaged else "fixed",
        "curves": {
            "mean": sorted(scalars["val/loss"].items()),
            **{d: sorted(points.items()) for d, points in sorted(losses.items())},
        },
    }


def table(results: dict[str, dict]) -> str:
    domains = list(next(iter(results.values()))["domain_loss"])
    head = "| policy | weights (" + ", ".join(domains) + ") | mean val loss | " + " | ".join(domains) + " | CPU s |"
    rows = [head, "|" + "---|" * (4 + len(domains))]
    best = min(r["val_loss"] for r in results.values())
    for name, r in results.items():
        weights = ", ".join(f"{r['weights'][d]:.3f}" for d in domains) + (
            " (time avg.)" if r["weights_kind"] == "time-averaged" else ""
        )
        mean = f"**{r['val_loss']:.4f}**" if r["val_loss"] == best else f"{r['val_loss']:.4f}"
        rows.append(
            f"| {name} | {weights} | {mean} | "
            + " | ".join(f"{r['domain_loss'][d]:.4f}" for d in domains)
            + f" | {r['cpu_seconds']:.0f} |"
        )
    return "\n".join(rows)


def plot(path: Path, results: dict[str, dict]) -> None:
    panels = list(next(iter(results.values()))["curves"])
    with common.figure(path, len(panels), (3.6 * len(panels), 3.4)) as axes:
        for ax, panel in zip(axes, panels):
            for i, (name, r) in enumerate(results.items()):
                steps, losses = zip(*r["curves"][panel])
                ax.plot(steps, losses, "o-", ms=3, color=f"C{i}", label=name)
            ax.set_title("mean of domains" if panel == "mean" else panel)
            ax.set_xlabel("step")
            ax.set_ylabel("validation loss")
        axes[0].legend(fontsize=8)


def mixtures(
    work_dir: str = "runs/mixtures",
    corpus: str = common.CORPUS,
    steps: int = 600,
    proxy_steps: int = 300,
    val_every: int = 50,
    arch: str = "micro",
    vocab_size: int = 2048,
    seq_len: int = 128,
    batch_size: int = 16,
    val_blocks: int = 32,
    lr: float = 3e-3,
    code_bytes: int = 3_000_000,
    max_doc_chars: int = 20_000,
    tokenizer_chars: int = 1_000_000,
    r_min: float = 0.0,
    doremi_update_every: int = 10,
    doremi_eta: float = 1.0,
    seed: int = 0,
) -> dict[str, dict]:
    """Run the experiment; prints and writes ``<work_dir>/mixtures.md`` and ``mixtures.png``.

    Args:
        work_dir: where data, runs, the BiMix fit and the report go.
        corpus: the shared corpus folder (books/, shakespeare/, math/).
        steps: optimizer steps of every final run (BiMix's target step count).
        proxy_steps: steps of the proxy runs the law is fitted on (the three static mixtures and
            ``SPREAD``); equal to ``steps``, the proxies double as those policies' final runs.
        val_every: steps between validations (the law needs 3 or more per proxy run).
        arch: model configuration from ``app.model.CONFIGS``.
        vocab_size: BPE vocabulary trained on the corpus (also the model's).
        seq_len: tokens per training sequence.
        batch_size: sequences per step.
        val_blocks: validation sequences per domain.
        lr: peak AdamW learning rate (cosine decay to a tenth).
        code_bytes: bytes of standard-library source in the code domain.
        max_doc_chars: books and Shakespeare are cut into documents of about this size.
        tokenizer_chars: characters of each domain the tokenizer is trained on.
        r_min: lower bound on every domain's BiMix weight.
        doremi_update_every: steps between DoReMi weight updates.
        doremi_eta: DoReMi's step size.
        seed: seed of every run.
    """
    args = dict(locals())
    if proxy_steps > steps:
        raise SproutError(
            f"--proxy_steps {proxy_steps} is longer than --steps {steps}; proxy runs are the short ones the law extrapolates from."
        )
    if proxy_steps < 3 * val_every:
        raise SproutError(
            f"--proxy_steps {proxy_steps} with --val_every {val_every} gives fewer than 3 validations per proxy run; the BiMix fit needs 3. Lower --val_every."
        )
    work = Path(work_dir).expanduser().resolve()
    data_dir, fit_file = work / "data", work / "bimix_fit.json"
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
    mixture["doremi"] = {"class_path": "doremi", "init_args": {"update_every": doremi_update_every, "eta": doremi_eta}}
    runs = {*proxies.values(), *finals.values()}
    reused = sum((d / common.DONE).is_file() for d in runs)
    started, cpu = time.perf_counter(), common.children_cpu() + time.process_time()

    print(f"preparing {corpus} -> {data_dir}")
    common.prepare_corpus(Path(corpus).expanduser(), data_dir, vocab_size, code_bytes, max_doc_chars, tokenizer_chars)

    print(f"proxy runs ({proxy_steps} steps)")
    for name, run_dir in proxies.items():
        common.train(run_dir, recipe(run_dir, data_dir, mixture[name], proxy_steps, args), read_result)

    print(f"BiMix fit on the proxy runs, target {steps} steps")
    fit_bimix.main([str(d / "logs") for d in proxies.values()], target_steps=steps, out=str(fit_file), r_min=r_min)

    print(f"final runs ({steps} steps)")
    results = {}
    for name in POLICIES:
        reference = (
            finals["uniform"] / "checkpoints" / "last.ckpt" if name == "doremi" else None
        )  # DoReMi's reference: the uniform mixture
        results[name] = common.train(
            finals[name], recipe(finals[name], data_dir, mixture[name], steps, args, reference), read_result
        )

    report = table(results)
    wall, cpu = (time.perf_counter() - started) / 60, (common.children_cpu() + time.process_time() - cpu) / 60
    cost = f"{wall:.1f} min wall, {cpu:.1f} min CPU" + (
        f" ({reused} of {len(runs)} runs reused from an earlier invocation)" if reused else ""
    )
    command = common.command("mixtures", args)
    (work / "mixtures.md").write_text(f"{report}\n\n{cost}. Command: `{command}`\n")
    plot(work / "mixtures.png", results)
    print(
        f"\n{report}\n\n{cost}\nwrote {work / 'mixtures.md'}, {work / 'mixtures.png'} and the BiMix fit {fit_file} (+ .png)"
    )
    return results


def main(args: list[str] | None = None) -> None:
    run_tool(mixtures, args, as_positional=False)


if __name__ == "__main__":
    main()
