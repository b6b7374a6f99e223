"""What the experiments share: corpus preparation, training runs, their logs and their figures.

Every experiment is a handful of ordinary ``sprout fit`` runs of recipes it writes; only what
the runs compare differs between experiments, so the rest lives here once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from sprout.data.corpus import build_default_corpus, corpus_texts
from sprout.data.prepare import DEFAULT_CHUNK_TOKENS, Source, prepare
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.files import write_json
from sprout.tensorboard_logs import read_scalars

ROOT = Path(__file__).resolve().parents[2]
CORPUS = str(ROOT.parent / "shared" / "corpus")
DONE = "result.json"


@dataclass
class ExperimentSettings:
    """What every experiment sets alike: where it works, the corpus and its tokenizer, the size of
    its runs' batches and validations, its seeds and threads. Each experiment subclasses it for
    its own defaults and takes these as keyword arguments (the same command-line flags).

    Args:
        work_dir: where data, runs and the report go.
        corpus: the shared corpus folder (books/, shakespeare/, math/; each experiment's docstring says what it reads).
        vocab_size: BPE vocabulary trained on the corpus (also the models').
        seq_len: tokens per training sequence.
        batch_size: sequences per step.
        val_blocks: validation sequences per domain.
        code_bytes: bytes of standard-library source in the code domain.
        max_doc_chars: books and Shakespeare are cut into documents of about this size.
        tokenizer_chars: characters of each domain the tokenizer is trained on.
        seed: the first seed; runs use seeds ``seed`` .. ``seed + seeds - 1``.
        seeds: how many times every run is repeated, each time with the next seed.
        threads: OMP_NUM_THREADS of each training process (default: torch's choice); 1 helps on a busy machine.
    """

    work_dir: str = "runs/experiment"
    corpus: str = CORPUS
    vocab_size: int = 1024
    seq_len: int = 64
    batch_size: int = 8
    val_blocks: int = 32
    code_bytes: int = 3_000_000
    max_doc_chars: int = 20_000
    tokenizer_chars: int = 1_000_000
    seed: int = 0
    seeds: int = 3
    threads: int | None = None

    @property
    def work(self) -> Path:
        return Path(self.work_dir).expanduser().resolve()

    def prepare(self, data_dir: Path) -> None:
        """The corpus's four domains under ``data_dir`` (reused when present)."""
        print(f"preparing {self.corpus} -> {data_dir}")
        prepare_corpus(
            Path(self.corpus).expanduser(),
            data_dir,
            self.vocab_size,
            self.code_bytes,
            self.max_doc_chars,
            self.tokenizer_chars,
        )


def require(paths: list[Path], layout: str) -> None:
    """Stop before anything is written when the corpus lacks a file the experiment reads."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SproutError(
            f"The shared corpus is incomplete: {missing} not found. Pass --corpus pointing at the folder with {layout} (see its README.md)."
        )


def text_files(paths: Iterable[Path]) -> Iterator[str]:
    """Each file's text, read only when the caller gets to it."""
    for path in paths:
        yield path.read_text(encoding="utf-8", errors="replace")


def jsonl_texts(path: Path) -> Iterator[str]:
    """Every record's values joined by spaces (a GSM8K record: question and answer)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield " ".join(json.loads(line).values())


def capped(texts: Iterable[str], chars: int) -> Iterator[str]:
    """The first ``chars`` characters of ``texts``, the last text cut to fit."""
    total = 0
    for text in texts:
        yield text[: chars - total]
        total += len(text)
        if total >= chars:
            return


def load_or_train_tokenizer(path: Path, vocab_size: int, domains: list[Iterable[str]], chars: int) -> Tokenizer:
    """The tokenizer at ``path`` if there is one, so a repeated experiment keeps its tokens; else
    a BPE trained on about ``chars`` characters of every domain, so no domain's words dominate
    the vocabulary."""
    if path.is_file():
        return Tokenizer.load(path)
    return Tokenizer.train_bpe((text for texts in domains for text in capped(texts, chars)), vocab_size, path)


def prepare_corpus(
    corpus: Path,
    data_dir: Path,
    vocab_size: int,
    code_bytes: int,
    max_doc_chars: int,
    tokenizer_chars: int,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> None:
    """Shards for books, shakespeare, math and code under ``data_dir`` (reused when present), in
    chunks of ``chunk_tokens``."""
    books, shakespeare, math = (
        corpus / "books",
        corpus / "shakespeare" / "tinyshakespeare.txt",
        corpus / "math" / "gsm8k_train.jsonl",
    )
    require([books, shakespeare, math], "books/, shakespeare/ and math/")
    code = build_default_corpus(data_dir / "raw", max_bytes=code_bytes)["code"]
    samples = [
        text_files(sorted(books.glob("*.txt"))),
        text_files([shakespeare]),
        jsonl_texts(math),
        corpus_texts(code),
    ]
    tok = load_or_train_tokenizer(data_dir / "tokenizer.json", vocab_size, samples, tokenizer_chars)
    sources = [
        Source([str(books)], format="text", domain="books", max_doc_chars=max_doc_chars),
        Source([str(shakespeare)], format="text", domain="shakespeare", max_doc_chars=max_doc_chars),
        Source([str(math)], format="jsonl", domain="math", text_fields=["question", "answer"]),
        Source([str(p) for p in code], format="jsonl", domain="code"),
    ]
    prepare(sources, tok, data_dir, val_fraction=0.02, chunk_tokens=chunk_tokens, progress=False)


def logger(run_dir: Path) -> dict:
    """The recipe's TensorBoard logger, writing to ``run_dir/logs`` where ``scalars`` reads."""
    return {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(run_dir.parent), "name": run_dir.name, "version": "logs"},
    }


def recipe(
    run_dir: Path,
    data_dir: Path,
    args: dict,
    *,
    steps: int,
    arch: str,
    shape: dict,
    warmup_steps: int,
    log_every: int,
    mixture: dict,
) -> dict:
    """One run's complete recipe; everything a run chooses is in here, written next to its logs.

    ``args`` holds the experiment's seed, val_every, lr, vocab_size, seq_len, batch_size and
    val_blocks; ``shape`` overrides the ``arch``'s layers and widths.
    """
    return {
        "seed_everything": args["seed"],
        "trainer": {
            "max_steps": steps,
            "val_check_interval": args["val_every"],
            "check_val_every_n_epoch": None,
            "log_every_n_steps": log_every,
            "gradient_clip_val": 1.0,
            "enable_progress_bar": False,
            "logger": logger(run_dir),
        },
        "model": {
            "arch": arch,
            "arch_overrides": {**shape, "vocab_size": args["vocab_size"], "block_size": args["seq_len"]},
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": args["lr"], "betas": [0.9, 0.95], "weight_decay": 0.1},
            },
            "schedule": {"warmup_steps": warmup_steps, "min_lr": args["lr"] / 10},
        },
        "data": {
            "data_dir": str(data_dir),
            "seq_len": args["seq_len"],
            "batch_size": args["batch_size"],
            "val_blocks": args["val_blocks"],
            "seed": args["seed"],
            "mixture": mixture,
        },
        "monitor": {"log_every": log_every},
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
    }


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar a run logged, ``tag -> {step: value}`` (see ``sprout.tensorboard_logs.read_scalars``)."""
    return read_scalars(run_dir / "logs")


def tagged(scalars: dict[str, dict[int, float]], prefix: str) -> dict[str, dict[int, float]]:
    """The scalars under ``prefix``, keyed by the rest of their tag (``val/loss/`` -> domains)."""
    return {tag.removeprefix(prefix): points for tag, points in scalars.items() if tag.startswith(prefix)}


def children_cpu() -> float:
    """CPU seconds used by finished child processes: the cost of a run however busy the machine is."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(
    run_dir: Path, config: dict, read: Callable[[dict, dict], dict] | None = None, threads: int | None = None
) -> dict:
    """``sprout fit`` ``config`` in a fresh process; returns the run's final mean validation loss
    and step, ``read(scalars, config)`` and its wall and CPU seconds.

    The result is saved as ``run_dir/result.json``, last and atomically, and a run that has one
    is reused, so a repeated command continues an interrupted experiment; a run without one is
    redone from scratch, its folder emptied first. ``threads`` sets the run's
    OMP_NUM_THREADS (one helps on a busy machine).
    """
    if (run_dir / DONE).is_file():
        print(f"  {run_dir.name}: finished before, reused")
        return json.loads((run_dir / DONE).read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started, cpu = time.perf_counter(), children_cpu()
    with open(run_dir / "train.log", "w") as log:
        code = subprocess.call(
            [sys.executable, "-m", "sprout", "fit", "--config", str(run_dir / "recipe.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    if code != 0:
        tail = "".join((run_dir / "train.log").read_text().splitlines(keepends=True)[-15:])
        raise SproutError(
            f"The run in {run_dir} failed (exit code {code}); the end of {run_dir / 'train.log'}:\n{tail}"
        )
    logged = scalars(run_dir)
    last = max(logged["val/loss"])
    result = {"steps": last, "val_loss": logged["val/loss"][last], **(read(logged, config) if read else {})}
    result["seconds"], result["cpu_seconds"] = time.perf_counter() - started, children_cpu() - cpu
    write_json(run_dir / DONE, result)  # the completion marker appears whole or not at all, after the run
    print(
        f"  {run_dir.name}: val/loss {result['val_loss']:.4f} after {result['steps']} steps ({result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU)"
    )
    return result


# -- loss against FLOPs: where runs of different cost are compared ------------------------------


def curve(scalars: dict[str, dict[int, float]], tag: str = "val/loss") -> list[tuple[float, float]]:
    """(training FLOPs, validation loss under ``tag``) at each validation of a run."""
    flops = sorted(scalars["perf/flops_seen"].items())
    points = []
    for step, loss in sorted(scalars[tag].items()):
        seen = [f for s, f in flops if s <= step]
        points.append((seen[-1] if seen else 0.0, loss))
    return points


def loss_at(points: list[tuple[float, float]], flops: float) -> float:
    """Validation loss at ``flops`` training FLOPs, linear between validations."""
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if f0 <= flops <= f1:
            return l0 + (l1 - l0) * (flops - f0) / (f1 - f0)
    return points[-1][1]


def flops_to_reach(points: list[tuple[float, float]], loss: float) -> float | None:
    """First FLOPs at which the curve is at or below ``loss``, linear between validations."""
    for (f0, l0), (f1, l1) in zip([(0.0, float("inf"))] + points, points):
        if l1 <= loss:
            return f1 if l0 == float("inf") else f0 + (f1 - f0) * (l0 - loss) / (l0 - l1)
    return None


# -- seeds: every experiment repeats its runs per seed and reports mean ± std per cell ---------


def seed_list(first: int, count: int) -> list[int]:
    """The seeds of an experiment: ``first``, ``first + 1``, ... (``count`` of them)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SproutError(
            f"--seeds must be a positive number of seeds, got {count!r}; 3 or more are needed for a mean ± std."
        )
    return list(range(first, first + count))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(values: list[float], spec: str = ".4f") -> str:
    """``mean ± std`` of ``values`` (just the value for one seed), each formatted by ``spec``."""
    mean, std = mean_std(values)
    return f"{mean:{spec}}" if len(values) < 2 else f"{mean:{spec}} ± {std:{spec.replace('+', '')}}"


def beyond_noise(values: list[float], baseline: list[float]) -> bool | None:
    """Whether two samples' means differ by 2 standard deviations (the larger of the two) or more;
    ``None`` when either has a single value, so there is no noise estimate."""
    if len(values) < 2 or len(baseline) < 2:
        return None
    (a, sa), (b, sb) = mean_std(values), mean_std(baseline)
    return abs(a - b) >= 2 * max(sa, sb)


def compare(values: list[float], baseline: list[float], lower_is_better: bool = True) -> str:
    """``better`` or ``worse`` than ``baseline``, or ``level`` when the means differ by less than
    2 standard deviations (the larger of the two); ``n/a`` with fewer than 2 seeds on either side."""
    beyond = beyond_noise(values, baseline)
    if beyond is None:
        return "n/a (1 seed)"
    if not beyond:
        return "level"
    return "better" if (mean_std(values)[0] < mean_std(baseline)[0]) == lower_is_better else "worse"


def speedups(reach: list[float | None], budget: float, one_off: float = 0.0) -> list[float] | None:
    """Per seed, how much less compute than ``budget`` reached the target (``budget / FLOPs - 1``),
    with ``one_off`` FLOPs added to each seed's; ``None`` unless every seed reached it."""
    if not all(reach):
        return None
    return [budget / (f + one_off) - 1 for f in reach]


def saving(reach: list[float | None], budget: float, one_off: float = 0.0) -> str:
    """The ``speedups`` as ``mean ± std`` percentages, or how many seeds reached the target at all."""
    values = speedups(reach, budget, one_off)
    if values is None:
        return f"{sum(map(bool, reach))} of {len(reach)} seeds reach it"
    return cell(values, "+.1%")


def command(script: str, args: dict) -> str:
    """The command line that repeats an experiment, for its report (paths and unset options left out)."""
    flags = (
        f"--{k} '[{', '.join(v)}]'" if isinstance(v, list) else f"--{k} {v}"
        for k, v in args.items()
        if k not in ("work_dir", "corpus") and v is not None
    )
    return f"python -m tools.experiments.{script} " + " ".join(flags)


@contextlib.contextmanager
def figure(path: Path, panels: int, size: tuple[float, float], **subplots) -> Iterator[list]:
    """A row of ``panels`` axes, saved to ``path`` on exit; the Agg backend needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=size, squeeze=False, **subplots)
    yield list(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
