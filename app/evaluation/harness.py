"""Run lm-evaluation-harness tasks on a Sprout model in this process, and read its scores.

lm-eval is Sprout's optional extra ``eval``; this module imports it only when called, so
training without evaluation never pays for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError
from sprout.files import replacing
from sprout.model import Llama

FEWSHOT_SEED = 1234  # lm_eval.simple_evaluate's default: the same few-shot examples as its CLI


def require_harness() -> None:
    """A clear error when the optional lm-evaluation-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise SproutError(
            "Evaluation needs lm-evaluation-harness, Sprout's optional extra `eval`, which is not installed: "
            'run `pip install -e ".[eval]"` (it comes with the `dev` extra too).'
        ) from None


def evaluate(
    model: Llama,
    tokenizer: Tokenizer,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    max_gen_toks: int = 256,
) -> dict:
    """lm-eval's result document for ``tasks`` (``results``, ``n-samples``, ``configs``, ...,
    without per-sample logs). ``limit`` caps the documents per task (a fraction below 1).

    This is ``lm_eval.simple_evaluate`` less what a training run must not pay or suffer on every
    call: it reseeds the global random generators and collects environment information with
    ``pip list`` and other subprocesses (17 s on a loaded 2-core machine).
    """
    require_harness()
    from lm_eval.evaluator import evaluate as run_tasks

    from sprout.evaluation.lm import SproutLM
    from sprout.evaluation.tasks import resolve

    specs, manager = resolve(tasks)
    loaded = manager.load(specs)
    for task in loaded["tasks"].values():  # as lm_eval.simple_evaluate prepares them
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    lm = SproutLM(
        model,
        tokenizer,
        batch_size=batch_size,
        device=device,
        max_gen_toks=max_gen_toks,
    )
    results = run_tasks(lm=lm, task_dict=loaded, limit=limit, log_samples=False)
    results.pop("samples", None)
    return results


def scores(results: dict) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` from a result document; a harness filter other than
    ``none`` is appended to the metric (``gsm8k_local/exact_match_strict-match``)."""
    flat = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, kind = key.partition(",")
            if kind and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                flat[f"{task}/{metric if kind == 'none' else f'{metric}_{kind}'}"] = float(value)
    return flat


def write_results(results: dict, path: Path, **header) -> Path:
    """``results.json`` (atomically): ``header`` (checkpoint, step, ...), the flat ``scores``,
    then lm-eval's document."""
    from lm_eval.utils import handle_non_serializable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**header, "scores": scores(results), "lm_eval": results}
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2, default=handle_non_serializable) + "\n")
    return path
