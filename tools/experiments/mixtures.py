"""Data-mixture experiment on the shared corpus: uniform, natural, entropy, BiMix and DoReMi.

Four domains (books, Shakespeare, GSM8K math, and the Python standard library as code) are
prepared with ``app/data/prepare.py``. Short proxy runs train with the ``uniform``,
``natural`` and ``entropy`` mixtures; ``tools/fit_bimix.py`` fits the BiMix law on their
validation curves and solves it for the final run length. Then every policy trains for the
same number of steps: the three proxy mixtures, ``bimix`` (the fitted law) and ``doremi``
(online, against the finished ``uniform`` run as its reference model). The table holds the
mean and per-domain validation loss at the end of each final run; the PNG their curves.

    python tools/experiments/mixtures.py --work_dir runs/mixtures

Every run is an ordinary ``sprout fit`` of a recipe written to its folder; finished runs
are reused when the command is repeated, so an interrupted experiment continues.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from app.data.corpus import build_default_corpus
from app.data.prepare import Source, prepare
from app.data.tokenizer import Tokenizer
from app.errors import SproutError
from tools import fit_bimix
from tools.cli import run_tool

ROOT = Path(__file__).resolve().parents[2]
STATIC = ("uniform", "natural", "entropy")
POLICIES = (*STATIC, "bimix", "doremi")
DONE = "result.json"


def prepare_corpus(corpus: Path, data_dir: Path, vocab_size: int, code_bytes: int, max_doc_chars: int, tokenizer_chars: int) -> None:
    """Shards for books, shakespeare, math and code under ``data_dir`` (reused when present)."""
    books, shakespeare, math = corpus / "books", corpus / "shakespeare" / "tinyshakespeare.txt", corpus / "math" / "gsm8k_train.jsonl"
    missing = [str(p) for p in (books, shakespeare, math) if not p.exists()]
    if missing:
        raise SproutError(f"The shared corpus is incomplete: {missing} not found. Pass --corpus pointing at the folder with books/, shakespeare/ and math/ (see its README.md).")
    code = build_default_corpus(data_dir / "raw", max_bytes=code_bytes)["code"]
    sources = [
        Source([str(books)], format="text", domain="books", max_doc_chars=max_doc_chars),
        Source([str(shakespeare)], format="text", domain="shakespeare", max_doc_chars=max_doc_chars),
        Source([str(math)], format="jsonl", domain="math", text_fields=["question", "answer"]),
        Source([str(p) for p in code], format="jsonl", domain="code"),
    ]
    tokenizer_path = data_dir / "tokenizer.json"
    if tokenizer_path.is_file():
        tok = Tokenizer.load(tokenizer_path)
    else:
        tok = Tokenizer.train_bpe(_tokenizer_sample(books, shakespeare, math, code, tokenizer_chars), vocab_size, tokenizer_path)
    prepare(sources, tok, data_dir, val_fraction=0.02, progress=False)


def _tokenizer_sample(books: Path, shakespeare: Path, math: Path, code: list[Path], chars: int):
    """About ``chars`` characters of every domain, so no domain's words dominate the vocabulary."""
    from app.data.corpus import corpus_texts

    def capped(texts):
        total = 0
        for text in texts:
            yield text[: chars - total]
            total += len(text)
            if total >= chars:
                return

    yield from capped(p.read_text(encoding="utf-8", errors="replace") for p in sorted(books.glob("*.txt")))
    yield from capped([shakespeare.read_text(encoding="utf-8")])
    yield from capped(" ".join(json.loads(line).values()) for line in math.open(encoding="utf-8"))
    yield from capped(corpus_texts(code))


def recipe(run_dir: Path, data_dir: Path, mixture: dict, steps: int, args: dict, reference: Path | None = None) -> dict:
    """One run's complete recipe; everything a run chooses is in here, written next to its logs."""
    model = {
        "arch": args["arch"],
        "arch_overrides": {"vocab_size": args["vocab_size"], "block_size": args["seq_len"]},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": args["lr"], "betas": [0.9, 0.95], "weight_decay": 0.1}},
        "schedule": {"warmup_steps": max(1, steps // 20), "min_lr": args["lr"] / 10},
    }
    if reference is not None:
        model["reference"] = str(reference)
    return {
        "seed_everything": args["seed"],
        "trainer": {
            "max_steps": steps,
            "val_check_interval": args["val_every"],
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 10,
            "gradient_clip_val": 1.0,
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(run_dir.parent), "name": run_dir.name, "version": "logs"}},
        },
        "model": model,
        "data": {"data_dir": str(data_dir), "seq_len": args["seq_len"], "batch_size": args["batch_size"], "val_blocks": args["val_blocks"], "seed": args["seed"], "mixture": mixture},
        "monitor": {"log_every": 10},
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
    }


def train(run_dir: Path, config: dict) -> dict:
    """``sprout fit`` the recipe in a fresh process (reused if it finished before); returns its result."""
    if (run_dir / DONE).is_file():
        print(f"  {run_dir.name}: finished before, reused")
        return json.loads((run_dir / DONE).read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    started, cpu = time.perf_counter(), _children_cpu()
    with open(run_dir / "train.log", "w") as log:
        code = subprocess.call([sys.executable, "-m", "app", "fit", "--config", str(run_dir / "recipe.yaml")], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        tail = "".join((run_dir / "train.log").read_text().splitlines(keepends=True)[-15:])
        raise SproutError(f"The run in {run_dir} failed (exit code {code}); the end of {run_dir / 'train.log'}:\n{tail}")
    result = read_result(run_dir)
    result["seconds"], result["cpu_seconds"] = time.perf_counter() - started, _children_cpu() - cpu
    (run_dir / DONE).write_text(json.dumps(result, indent=1))
    print(f"  {run_dir.name}: val/loss {result['val_loss']:.4f} after {result['steps']} steps ({result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU)")
    return result


def _children_cpu() -> float:
    """CPU seconds used by finished child processes: the cost of a run however busy the machine is."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_result(run_dir: Path) -> dict:
    """Final mean and per-domain validation loss, their curves, and the weights trained with
    (a dynamic policy's time average, as it recommends them for a fixed mixture)."""
    scalars = fit_bimix.read_scalars(run_dir / "logs")
    losses = {tag.removeprefix("val/loss/"): points for tag, points in scalars.items() if tag.startswith("val/loss/")}
    last = max(scalars["val/loss"])
    averaged = {tag.removeprefix("mixture/average/"): points for tag, points in scalars.items() if tag.startswith("mixture/average/")}
    weights = averaged or {tag.removeprefix("mixture/weight/"): points for tag, points in scalars.items() if tag.startswith("mixture/weight/")}
    return {
        "steps": last,
        "val_loss": scalars["val/loss"][last],
        "domain_loss": {d: points[last] for d, points in sorted(losses.items())},
        "weights": {d: points[max(points)] for d, points in sorted(weights.items())},
        "weights_kind": "time-averaged" if averaged else "fixed",
        "curves": {"mean": sorted(scalars["val/loss"].items()), **{d: sorted(points.items()) for d, points in sorted(losses.items())}},
    }


def table(results: dict[str, dict]) -> str:
    domains = list(next(iter(results.values()))["domain_loss"])
    head = "| policy | weights (" + ", ".join(domains) + ") | mean val loss | " + " | ".join(domains) + " | CPU s |"
    rows = [head, "|" + "---|" * (4 + len(domains))]
    best = min(r["val_loss"] for r in results.values())
    for name, r in results.items():
        weights = ", ".join(f"{r['weights'][d]:.3f}" for d in domains) + (" (time avg.)" if r["weights_kind"] == "time-averaged" else "")
        mean = f"**{r['val_loss']:.4f}**" if r["val_loss"] == best else f"{r['val_loss']:.4f}"
        rows.append(f"| {name} | {weights} | {mean} | " + " | ".join(f"{r['domain_loss'][d]:.4f}" for d in domains) + f" | {r['cpu_seconds']:.0f} |")
    return "\n".join(rows)


def plot(path: Path, results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(next(iter(results.values()))["curves"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (name, r) in enumerate(results.items()):
            steps, losses = zip(*r["curves"][panel])
            ax.plot(steps, losses, "o-", ms=3, color=f"C{i}", label=name)
        ax.set_title("mean of domains" if panel == "mean" else panel)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mixtures(
    work_dir: str = "runs/mixtures",
    corpus: str = str(ROOT.parent / "shared" / "corpus"),
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
        proxy_steps: steps of the uniform/natural/entropy proxy runs the law is fitted on;
            equal to ``steps``, the proxies double as those policies' final runs.
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
        raise SproutError(f"--proxy_steps {proxy_steps} is longer than --steps {steps}; proxy runs are the short ones the law extrapolates from.")
    if proxy_steps < 3 * val_every:
        raise SproutError(f"--proxy_steps {proxy_steps} with --val_every {val_every} gives fewer than 3 validations per proxy run; the BiMix fit needs 3. Lower --val_every.")
    work = Path(work_dir).expanduser().resolve()
    data_dir, fit_file = work / "data", work / "bimix_fit.json"
    proxies = {name: work / "proxy" / name for name in STATIC}
    finals = {name: (proxies[name] if proxy_steps == steps else work / "final" / name) for name in STATIC}
    finals.update({name: work / "final" / name for name in ("bimix", "doremi")})
    mixture = {name: {"class_path": name} for name in STATIC}
    mixture["bimix"] = {"class_path": "bimix", "init_args": {"fit_file": str(fit_file), "target_steps": steps, "r_min": r_min}}
    mixture["doremi"] = {"class_path": "doremi", "init_args": {"update_every": doremi_update_every, "eta": doremi_eta}}
    runs = {*proxies.values(), *finals.values()}
    reused = sum((d / DONE).is_file() for d in runs)
    started, cpu = time.perf_counter(), _children_cpu() + time.process_time()

    print(f"preparing {corpus} -> {data_dir}")
    prepare_corpus(Path(corpus).expanduser(), data_dir, vocab_size, code_bytes, max_doc_chars, tokenizer_chars)

    print(f"proxy runs ({proxy_steps} steps)")
    for name, run_dir in proxies.items():
        train(run_dir, recipe(run_dir, data_dir, mixture[name], proxy_steps, args))

    print(f"BiMix fit on the proxy runs, target {steps} steps")
    fit_bimix.main([str(d / "logs") for d in proxies.values()], target_steps=steps, out=str(fit_file), r_min=r_min)

    print(f"final runs ({steps} steps)")
    results = {}
    for name in POLICIES:
        reference = finals["uniform"] / "checkpoints" / "last.ckpt" if name == "doremi" else None  # DoReMi's reference: the uniform mixture
        results[name] = train(finals[name], recipe(finals[name], data_dir, mixture[name], steps, args, reference))

    report = table(results)
    wall, cpu = (time.perf_counter() - started) / 60, (_children_cpu() + time.process_time() - cpu) / 60
    cost = f"{wall:.1f} min wall, {cpu:.1f} min CPU" + (f" ({reused} of {len(runs)} runs reused from an earlier invocation)" if reused else "")
    command = "python tools/experiments/mixtures.py " + " ".join(f"--{k} {v}" for k, v in args.items() if k not in ("work_dir", "corpus"))
    (work / "mixtures.md").write_text(f"{report}\n\n{cost}. Command: `{command}`\n")
    plot(work / "mixtures.png", results)
    print(f"\n{report}\n\n{cost}\nwrote {work / 'mixtures.md'}, {work / 'mixtures.png'} and the BiMix fit {fit_file} (+ .png)")
    return results


def main(args: list[str] | None = None) -> None:
    run_tool(mixtures, args, as_positional=False)


if __name__ == "__main__":
    main()
