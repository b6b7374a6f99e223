"""Reading a run's TensorBoard scalars back: what the BiMix fit and the experiments compare."""

from __future__ import annotations

from pathlib import Path

from sprout.errors import SproutError


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag of a run, ``tag -> {step: value}``, merged over all its event files.

    A resumed run writes a new event file and may log a step again; the later write wins.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # slow import, only here

    if not run_dir.is_dir():
        raise SproutError(
            f"Run dir {run_dir} does not exist. Pass the TensorBoard log dir of each run (e.g. runs/<name>/version_0)."
        )
    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not files:
        raise SproutError(
            f"No TensorBoard event files (events.out.tfevents.*) under {run_dir}. Pass the TensorBoard log dir of each run (e.g. runs/<name>/version_0)."
        )
    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        try:
            accumulator.Reload()
        except Exception as err:  # tensorboard raises several types for truncated or foreign files
            raise SproutError(
                f"Cannot read TensorBoard event file {file}: {type(err).__name__}: {err}. Remove it or the run dir from the fit."
            ) from None
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                seen = latest.setdefault(tag, {}).get(event.step)
                if seen is None or event.wall_time >= seen[0]:
                    latest[tag][event.step] = (event.wall_time, event.value)
    return {tag: {step: value for step, (_, value) in points.items()} for tag, points in latest.items()}
