"""Rho-1 at CPU scale on the shared corpus: continued pre-training with all, rho1, loss_topk and random.

The paper's continued-pretraining setting, shrunk: a base model pre-trained on books and code;
a reference model, the base continued on half of GSM8K (``math_ref``); then continued
pre-training from the base on a uniform mix of books, code and the other half of GSM8K
(``math``) with each selector for the same steps and batch, i.e. the same tokens through the
model. The table and PNG give the held-out math loss (``math``'s validation split, which neither
the reference nor any run trained on) against tokens, plus the final books and code losses, and
each selector's saving: how much less compute than ``all`` it needs to reach ``all``'s final math
loss, without and with its one-off costs (Rho-1's: training the reference and scoring every
training token once with it; the base model is every run's starting point and counted for none).

    python -m tools.experiments.selection --work_dir runs/selection

Steps 2-5 are repeated for ``--seeds`` seeds (each seed its own base, reference, scores and
runs, under ``seed<N>/``); every cell of the table is the mean ± std over seeds, and the final
held-out math loss of each selector is compared with ``all``'s (level: less than 2 std apart).

Steps, each reused when the command is repeated (so an interrupted experiment continues):
1. ``data``: tokenizer and shards for books, code (stdlib), math and math_ref;
2. ``base``: pre-training on books + code;
3. ``reference``: ``recipes/rho1-reference-math.yaml`` from the base on math_ref;
4. ``scores``: ``sprout score`` over books, code and math;
5. one ``recipes/rho1-continued.yaml`` run per selector, offline reference scores for all of
   them (so every run logs the excess loss of what it keeps).
Every run is an ordinary ``sprout fit`` of a recipe written to its folder.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sprout.commands import run_function
from sprout.commands.score import score_reference
from sprout.data.corpus import build_default_corpus, corpus_texts
from sprout.data.prepare import Source, prepare
from sprout.errors import SproutError
from sprout.model import LlamaConfig, forward_flops_per_token
from tools.experiments import common

SELECTORS = ("all", "rho1", "loss_topk", "random")


def prepare_data(
    corpus: Path, work: Path, vocab_size: int, code_bytes: int, max_doc_chars: int, tokenizer_chars: int
) -> Path:
    """Shards of books, code, math (GSM8K even records) and math_ref (odd records) in ``work/data``."""
    books, gsm8k = corpus / "books", corpus / "math" / "gsm8k_train.jsonl"
    common.require([books, gsm8k], "books/ and math/")
    data, raw = work / "data", work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    records = gsm8k.read_text(encoding="utf-8").splitlines()
    (raw / "gsm8k_cpt.jsonl").write_text("\n".join(records[0::2]) + "\n", encoding="utf-8")
    (raw / "gsm8k_ref.jsonl").write_text("\n".join(records[1::2]) + "\n", encoding="utf-8")
    code = build_default_corpus(raw, max_bytes=code_bytes)["code"]
    samples = [common.text_files(sorted(books.glob("*.txt"))), common.jsonl_texts(gsm8k), corpus_texts(code)]
    tok = common.load_or_train_tokenizer(data / "tokenizer.json", vocab_size, samples, tokenizer_chars)
    fields = ["question", "answer"]
    prepare(
        [
            Source([str(books)], format="text", domain="books", max_doc_chars=max_doc_chars),
            Source([str(p) for p in code], format="jsonl", domain="code"),
            Source([str(raw / "gsm8k_ref.jsonl")], format="jsonl", domain="math_ref", text_fields=fields),
        ],
        tok,
        data,
        val_fraction=0.02,
        progress=False,
    )
    # more held-out math: the curve the experiment is about
    prepare(
        [Source([str(raw / "gsm8k_cpt.jsonl")], format="jsonl", domain="math", text_fields=fields)],
        tok,
        data,
        val_fraction=0.06,
        progress=False,
    )
    return data


def recipe(template: str, run_dir: Path, args: dict, **changes) -> dict:
    """``recipes/<template>`` with this experiment's paths, shape and lengths, plus ``changes``
    (dotted keys, e.g. ``model.selector``; ``None`` deletes a key)."""
    config = yaml.safe_load((common.ROOT / "recipes" / template).read_text())
    config["seed_everything"] = args["seed"]
    config["trainer"].update(
        max_steps=args["cpt_steps"],
        val_check_interval=args["val_every"],
        enable_progress_bar=False,
        logger=common.logger(run_dir),
    )
    config["model"].update(
        arch=args["arch"],
        arch_overrides={"vocab_size": args["vocab_size"], "block_size": args["seq_len"]},
        init_from=str(args["base"]),
    )
    config["data"].update(
        data_dir=str(args["data"]),
        seq_len=args["seq_len"],
        batch_size=args["batch_size"],
        val_blocks=args["val_blocks"],
        seed=args["seed"],
    )
    config["checkpoint"] = {"dirpath": str(run_dir / "checkpoints")}
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return config


def read_result(scalars: dict, config: dict) -> dict:
    """Per-domain validation curves, held-out math against training FLOPs (the base and the
    reference see no math), the FLOPs spent and the mean of every selection statistic over the run."""
    return {
        "tokens_per_step": config["data"]["batch_size"] * config["data"]["seq_len"],
        "flops": max(scalars["perf/flops_seen"].values()),
        "math_curve": common.curve(scalars, "val/loss/math") if "val/loss/math" in scalars else [],
        "val": {d: sorted(points.items()) for d, points in common.tagged(scalars, "val/loss/").items()},
        "select": {
            name: sum(points.values()) / max(len(points), 1)
            for name, points in common.tagged(scalars, "select/").items()
        },
    }


def table(per_seed: dict[int, dict[str, dict]], columns: int = 4) -> str:
    """Held-out math loss at evenly spaced token counts, then the final books and code losses;
    mean ± std over seeds."""
    first = next(iter(per_seed.values()))
    steps = [s for s, _ in next(iter(first.values()))["val"]["math"]]
    picks = (
        [steps[round(i * (len(steps) - 1) / (columns - 1))] for i in range(columns)] if len(steps) >= columns else steps
    )
    tokens = next(iter(first.values()))["tokens_per_step"]
    head = (
        "| selector | "
        + " | ".join(f"math @ {s * tokens / 1e6:.2f}M tok" for s in picks)
        + " | vs all (final math) | books (final) | code (final) | kept tokens from books / code / math"
        + " | kept excess − dropped excess | saving to all's math loss | one-off FLOPs (reference + scoring) | saving incl. one-off |"
    )
    rows = [head, "|" + "---|" * (len(picks) + 9)]
    final = {name: [dict(seed[name]["val"]["math"])[picks[-1]] for seed in per_seed.values()] for name in first}
    best = min(final, key=lambda name: sum(final[name]))
    for name in first:
        runs = [seed[name] for seed in per_seed.values()]
        cells = [common.cell([dict(r["val"]["math"])[s] for r in runs]) for s in picks]
        cells[-1] = f"**{cells[-1]}**" if name == best else cells[-1]
        versus = "-" if name == "all" or "all" not in first else common.compare(final[name], final["all"])
        sel = [r["select"] for r in runs]
        gap = (
            common.cell([x["kept_excess"] - x["dropped_excess"] for x in sel], "+.3f")
            if all("dropped_excess" in x for x in sel)
            else "n/a"
        )
        shares = " / ".join(
            f"{sum(x[f'kept_share/{d}'] for x in sel) / len(sel):.0%}"
            if all(f"kept_share/{d}" in x for x in sel)
            else "n/a"
            for d in ("books", "code", "math")
        )  # none logged in a run shorter than the logging interval
        books, code = (common.cell([r["val"][d][-1][1] for r in runs]) for d in ("books", "code"))
        if name == "all" or "all" not in first:
            savings = "- | - | -"
        else:  # compute to reach the same seed's final `all` math loss; every run has the same FLOPs
            reach = [
                common.flops_to_reach(r["math_curve"], seed["all"]["math_curve"][-1][1])
                for r, seed in zip(runs, per_seed.values())
            ]
            budget, one_off = first["all"]["flops"], first[name]["one_off"]
            costs = f"{one_off['reference']:.2e} + {one_off['scoring']:.2e}" if one_off else "none"
            with_costs = common.saving(reach, budget, sum(one_off.values())) if one_off else "same"
            savings = f"{common.saving(reach, budget)} | {costs} | {with_costs}"
        rows.append(
            f"| {name} | " + " | ".join(cells) + f" | {versus} | {books} | {code} | {shares} | {gap} | {savings} |"
        )
    return "\n".join(rows)


def plot(path: Path, per_seed: dict[int, dict[str, dict]]) -> None:
    panels = ("math", "books", "code")
    with common.figure(path, len(panels), (4.2 * len(panels), 3.5)) as axes:
        for ax, domain in zip(axes, panels):
            for j, results in enumerate(per_seed.values()):
                for i, (name, r) in enumerate(results.items()):
                    steps, losses = zip(*r["val"][domain])
                    ax.plot(
                        [s * r["tokens_per_step"] / 1e6 for s in steps],
                        losses,
                        "-",
                        lw=0.8,
                        color=f"C{i}",
                        label=name if j == 0 else None,
                    )
            ax.set_title("held-out math (GSM8K)" if domain == "math" else domain)
            ax.set_xlabel("tokens through the model (M)")
            ax.set_ylabel("validation loss")
        axes[0].legend(fontsize=8)


def run_seed(
    work: Path,
    args: dict,
    selectors: list[str],
    k: float,
    base_steps: int,
    ref_steps: int,
    base_lr: float,
    threads: int | None,
) -> dict[str, dict]:
    """Base, reference, scores and one continued-pretraining run per selector for one seed, in ``work``."""
    args = {**args, "base": work / "base" / "checkpoints" / "last.ckpt"}
    seq_len, data = args["seq_len"], args["data"]
    print(f"seed {args['seed']} [2/5] base model on books + code")
    common.train(
        work / "base",
        recipe(
            "rho1-continued.yaml",
            work / "base",
            args,
            **{
                "trainer.max_steps": base_steps,
                "model.init_from": None,
                "model.selector": {"class_path": "all"},
                "data.domains": ["books", "code"],
                "data.mixture": {"class_path": "natural"},
                "data.reference_scores": None,
                "model.optimizer.init_args.lr": base_lr,
                "model.schedule": {"warmup_steps": max(1, base_steps // 20), "min_lr": base_lr / 10},
            },
        ),
        read_result,
        threads,
    )
    print(f"seed {args['seed']} [3/5] reference model: the base continued on math_ref")
    reference_run = common.train(
        work / "reference",
        recipe("rho1-reference-math.yaml", work / "reference", args, **{"trainer.max_steps": ref_steps}),
        read_result,
        threads,
    )
    reference = work / "reference" / "checkpoints" / "last.ckpt"
    print(f"seed {args['seed']} [4/5] reference scores of books, code and math")
    scored = score_reference(
        str(reference),
        str(data),
        str(work / "scores"),
        seq_len,
        domains=["books", "code", "math"],
        batch_size=32,
        progress=False,
    )
    # Rho-1's one-off cost: training its reference and one forward of it over every scored token
    config = LlamaConfig.from_name(args["arch"], vocab_size=args["vocab_size"], block_size=seq_len)
    blocks = sum(split["blocks"] for domain in scored.values() for split in domain.values())
    one_off = {
        "reference": reference_run["flops"],
        "scoring": float(blocks * seq_len * forward_flops_per_token(config, seq_len)),
    }
    print(
        f"seed {args['seed']} [5/5] continued pre-training, {args['cpt_steps']} steps x {args['batch_size'] * seq_len} tokens each"
    )
    results = {}
    for name in selectors:
        selector = {"class_path": name} if name == "all" else {"class_path": name, "init_args": {"k": k}}
        results[name] = {"one_off": one_off if name == "rho1" else {}} | common.train(
            work / f"cpt-{name}",
            recipe(
                "rho1-continued.yaml",
                work / f"cpt-{name}",
                args,
                **{"model.selector": selector, "data.reference_scores": str(work / "scores")},
            ),
            read_result,
            threads,
        )
    return results


@dataclass
class SelectionSettings(common.ExperimentSettings):
    work_dir: str = "runs/selection"
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 16
    val_blocks: int = 48
    code_bytes: int = 2_000_000


def selection(
    selectors: list[str] = list(SELECTORS),
    k: float = 60.0,
    base_steps: int = 600,
    ref_steps: int = 300,
    cpt_steps: int = 400,
    val_every: int = 50,
    arch: str = "tiny",
    base_lr: float = 3e-3,
    **settings: Any,
) -> dict[int, dict[str, dict]]:
    """Run the experiment; prints and writes ``<work_dir>/selection.md``, ``selection.png`` and ``selection.json``.
    The settings every experiment shares (``common.ExperimentSettings``) come as keywords too;
    of the corpus it reads books/ and math/gsm8k_train.jsonl, and steps 2-5 repeat per seed.

    Args:
        selectors: the continued-pretraining runs to make.
        k: percent of tokens rho1, loss_topk and random keep.
        base_steps: steps of the base model's pre-training on books + code.
        ref_steps: steps of the reference model's training on math_ref.
        cpt_steps: steps of each continued-pretraining run (equal tokens for every selector).
        val_every: steps between validations.
        arch: model shape from app/model/config.py (all runs share it).
        base_lr: peak learning rate of the base model (the recipes' for the others).
    """
    shared = SelectionSettings(**settings)
    unknown = [s for s in selectors if s not in SELECTORS]
    if unknown:
        raise SproutError(f"--selectors names {unknown}; choose from {', '.join(SELECTORS)}.")
    seed_values = common.seed_list(shared.seed, shared.seeds)
    started = time.perf_counter()
    work = shared.work
    print(f"[1/5] data -> {work / 'data'}")
    data = prepare_data(
        Path(shared.corpus).expanduser(),
        work,
        shared.vocab_size,
        shared.code_bytes,
        shared.max_doc_chars,
        shared.tokenizer_chars,
    )
    per_seed = {}
    for value in seed_values:
        args = dict(
            seed=value,
            cpt_steps=cpt_steps,
            val_every=val_every,
            arch=arch,
            vocab_size=shared.vocab_size,
            seq_len=shared.seq_len,
            batch_size=shared.batch_size,
            val_blocks=shared.val_blocks,
            data=data,
        )
        per_seed[value] = run_seed(
            work / f"seed{value}", args, selectors, k, base_steps, ref_steps, base_lr, shared.threads
        )
    text = table(per_seed)
    costs = (
        "One-off FLOPs are Rho-1's alone: its reference's training and one reference forward over every training token of"
        " books, code and math (what sprout score scores); the other selectors read the same scores only to log"
        " the excess loss of what they keep."
    )
    (work / "selection.md").write_text(
        f"{text}\n\n{costs}\n\nSeeds {sorted(per_seed)}. Command: `{common.command('selection', {'selectors': selectors, 'k': k, 'seeds': shared.seeds, 'threads': shared.threads})}`\n"
    )
    (work / "selection.json").write_text(json.dumps(per_seed, indent=1))
    plot(work / "selection.png", per_seed)
    print(
        f"\n{text}\n\nWrote {work / 'selection.md'}, {work / 'selection.png'} and {work / 'selection.json'} ({(time.perf_counter() - started) / 60:.1f} min)."
    )
    return per_seed


def main(args: list[str] | None = None) -> None:
    run_function(selection, args, as_positional=False)


if __name__ == "__main__":
    main()
