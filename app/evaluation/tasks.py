"""What a task name means: one of Sprout's offline tasks, or any task the harness knows.

Sprout ships lm-evaluation-harness task YAMLs that read local files (``local_tasks/``), so
evaluation runs on a machine without network. Their relative ``data_files`` are resolved here
(the harness would resolve them against the working directory): a bare file name is a file
shipped beside the YAML, installed with the package, and any other relative path is a
checkout's (``../shared``), resolved against the project root; ``metadata.fallback_data_files``
is used when the preferred files are absent. Every other name is
looked up in the harness's index of its ~15,000 tasks, which takes seconds to build: it is built
only when a name is not a local one, and once per process.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path

import yaml

from sprout.errors import SproutError

LOCAL_DIR = Path(__file__).parent / "local_tasks"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def local_task_configs() -> dict[str, dict]:
    """Sprout's offline tasks by name, as the harness's config dicts with absolute data paths."""
    configs = {}
    for path in sorted(LOCAL_DIR.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        configs[config["task"]] = _with_local_files(config, path)
    return configs


def _with_local_files(config: dict, source: Path) -> dict:
    config = copy.deepcopy(config)
    kwargs = config["dataset_kwargs"]
    files = {split: _data_path(name, source.parent) for split, name in kwargs["data_files"].items()}
    fallback = config.get("metadata", {}).get("fallback_data_files")
    if fallback and not all(path.is_file() for path in files.values()):
        files = {split: _data_path(name, source.parent) for split, name in fallback.items()}
    missing = [path for path in files.values() if not path.is_file()]
    if missing:
        raise SproutError(
            f"Task {config['task']} ({source}) reads {missing[0]}, which does not exist; restore it from the repository (git checkout -- {missing[0]})."
        )
    kwargs["data_files"] = {split: str(path) for split, path in files.items()}
    return config


def _data_path(name: str, task_dir: Path) -> Path:
    """A bare file name ships beside the task's YAML; a path with folders is a checkout's."""
    return task_dir / name if Path(name).parent == Path(".") else PROJECT_ROOT / name


@functools.cache
def harness_tasks():
    """The harness's own task index (``lm_eval.tasks.TaskManager``), built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def resolve(names: list[str]) -> tuple[list[str | dict], object]:
    """Task specs for ``lm_eval.simple_evaluate`` and the ``TaskManager`` that loads them.

    Refuses, naming the task: a name nobody knows (with the close matches), and a harness task
    whose data cannot be had (no network, or not downloadable), offering the offline tasks.
    """
    from lm_eval.tasks import TaskManager

    if not names:
        raise SproutError(
            f"No evaluation task given; pass --tasks with one or more task names, e.g. {', '.join(local_task_configs())}."
        )
    local = local_task_configs()
    remote = [name for name in names if name not in local]
    if not remote:
        return [local[name] for name in names], TaskManager(include_defaults=False)
    manager = harness_tasks()
    for name in remote:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, [*local, *manager.all_tasks], n=5, cutoff=0.6)
            hint = f"Close matches: {', '.join(close)}." if close else f"Sprout's offline tasks: {', '.join(local)}."
            raise SproutError(
                f"Unknown evaluation task `{name}`: neither one of Sprout's offline tasks nor one of the {len(manager.all_tasks)} "
                f"tasks, groups and tags of lm-evaluation-harness. {hint} `lm-eval ls tasks` lists them all."
            )
        _check_available(name, manager, local)
    return [local.get(name, name) for name in names], manager


def _check_available(name: str, manager, local: dict) -> None:
    """Load the harness task once, so a download that cannot happen fails here, naming the task."""
    try:
        manager.load([name])
    except (
        ConnectionError,
        OSError,
    ) as error:  # datasets: ConnectionError offline, FileNotFoundError for a missing dataset
        raise SproutError(
            f"Evaluation task `{name}` needs its data set from the Hugging Face Hub, which could not be reached or read "
            f"({str(error).splitlines()[0]}). Run it on a machine with network access once (the data set is then cached "
            f"under ~/.cache/huggingface/datasets), or use Sprout's offline tasks instead: {', '.join(local)}."
        ) from None
