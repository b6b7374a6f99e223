"""When to grow: the growth-timing guideline of "Stacking Your Transformers" (Du et al. 2024).

For a target model of N parameters trained on D tokens (compute C = 6 N D FLOPs), the paper fits
the number of tokens d to train the small model before stacking it by g = 4 as

    log10(d) = 0.88 * log10(N) + 163.27 / log10(C) - 5.74

    sprout plan-growth --params 7B --tokens 2T --arch llama-7b-32l --write_recipe growth.yaml
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from sprout.errors import SproutError

GROWTH_FACTOR = 4  # the paper's recommended g
SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_count(text: str | float | int, option: str) -> float:
    """``7e9``, ``7000000000``, ``7B``, ``1.1b``, ``2T``, ``500M`` -> a float count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise SproutError(f"{option} {text!r} is not a positive count; write it as 7e9, 7000000000, 7B, 500M or 2T.")
    return float(match.group(1)) * SUFFIXES[match.group(2).upper()]


def format_count(n: float) -> str:
    for suffix, unit in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= unit:
            return f"{n / unit:.2f}{suffix}"
    return f"{n:.0f}"


def growth_tokens(params: float, tokens: float) -> float:
    """Tokens d to train the small model before growth, for a target of ``params`` trained on ``tokens``."""
    compute = 6.0 * params * tokens
    return 10 ** (0.88 * math.log10(params) + 163.27 / math.log10(compute) - 5.74)


def small_config(name: str, factor: int):
    """The target named ``name`` with ``1/factor`` of its layers, and that shape's name if the table has it."""
    from sprout.model.config import CONFIGS, LlamaConfig

    target = LlamaConfig.from_name(name)
    if target.n_layer % factor:
        divisors = [g for g in range(2, target.n_layer + 1) if target.n_layer % g == 0]
        raise SproutError(
            f"--arch {name} has {target.n_layer} layers, which growth factor {factor} does not divide, so stacking cannot reach it. "
            f"Use --factor from {divisors} or a target with a multiple of {factor} layers (e.g. llama-1.1b-24l instead of tiny-llama-1.1b)."
        )
    small = target.replace(n_layer=target.n_layer // factor)
    small_name = next((k for k, v in CONFIGS.items() if LlamaConfig.from_dict(v) == small), None)
    return target, small, small_name


def growth_stanza(at_tokens: float, factor: int, target: str | None, model: str | None = None) -> str:
    """The plan as recipe sections, in the format of the ``growth:`` section (app/callbacks/growth.py);
    ``model`` is the small model's ``model:`` mapping when the target shape is known."""
    lines = [f"model: {model}"] if model else []
    lines += ["growth:", "  operator: {class_path: gstack}"]
    if target is not None:
        lines.append(f"  target_arch: {target}")
    else:
        lines.append(
            f"  # grown shape: target_arch: <name in app/model/config.py>, or target_overrides: {{n_layer: {factor} x the model's layers}}"
        )
    lines.append(f"  at_tokens: {round(at_tokens)}")
    return "\n".join(lines) + "\n"


def plan_growth(
    tokens: str,
    params: str | None = None,
    arch: str | None = None,
    factor: int = GROWTH_FACTOR,
    write_recipe: str | None = None,
) -> float:
    """Print the tokens d to train a small model (1/g of the layers, same width) before stacking it
    g times into the target, and the recipe stanza that does it; return d.

    Args:
        tokens: tokens D the target model trains on: 2T, 15T, 3e12 ...
        params: target model parameters N: 7e9, 7B, 1.1B ... (default: counted from --arch).
        arch: target shape name from sprout.model.config.CONFIGS (e.g. llama-7b-32l); prints the small
            model's shape and writes its model: section.
        factor: growth factor g (layers of target / layers of small model).
        write_recipe: write the stanza as YAML to this path.
    """
    if factor < 2:
        raise SproutError(f"--factor must be at least 2, got {factor}.")
    shapes = small_config(arch, factor) if arch else None
    if params is not None:
        n = parse_count(params, "--params")
    elif shapes is not None:
        from sprout.model.config import param_count

        n = float(param_count(shapes[0]))
    else:
        raise SproutError("Give the target size with --params (e.g. 7B) or a model shape with --arch NAME.")
    d_total = parse_count(tokens, "--tokens")
    d = growth_tokens(n, d_total)

    print(
        f"target: N = {format_count(n)} parameters, D = {format_count(d_total)} tokens, C = 6ND = {6 * n * d_total:.3e} FLOPs"
    )
    print(f"grow after d = {format_count(d)} tokens ({d:.4g}) on the small model")
    if factor == GROWTH_FACTOR:
        print(f"growth factor g = {factor} (the paper's recommendation), operator gstack")
    else:
        print(f"growth factor g = {factor} (the paper recommends {GROWTH_FACTOR}), operator gstack")
    if d >= d_total:
        print(
            "warning: d >= D: at this scale the guideline's fit (made on runs of LLM scale) extrapolates past the whole budget; choose d from a small sweep instead."
        )
    if shapes is not None:
        target, small, small_name = shapes
        print(
            f"target shape {arch}: {target.n_layer} layers x {target.n_embd} wide, {target.n_head} heads, {target.n_kv_head} KV heads"
        )
        print(
            f"small shape {small_name or '(' + arch + ' with n_layer=' + str(small.n_layer) + ')'}: {small.n_layer} layers x {small.n_embd} wide (same width)"
        )
    model = None
    if shapes is not None:
        model = (
            f"{{arch: {shapes[2]}}}"
            if shapes[2]
            else f"{{arch: {arch}, arch_overrides: {{n_layer: {shapes[1].n_layer}}}}}"
        )
    stanza = growth_stanza(d, factor, arch, model)
    print("\n" + stanza, end="")
    if write_recipe:
        Path(write_recipe).parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# sprout plan-growth --params {format_count(n)} --tokens {format_count(d_total)}"
            + (f" --arch {arch}" if arch else "")
            + "\n"
        )
        Path(write_recipe).write_text(header + stanza)
        print(f"wrote {write_recipe}")
    return d
