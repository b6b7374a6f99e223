"""The model swap at a growth boundary: the grown model in the run's layout, and its optimizer.

Under ``ModelParallelStrategy`` the grown model is built sharded like the run's first model
and filled with the full tensors of rank 0 (so random initialisations agree across ranks);
otherwise it gets the run's activation checkpointing and compiled blocks. Under DDP the
module is wrapped again, since the old wrapper's gradient buckets hold the old parameters.
The strategy then builds the optimizer and scheduler anew from ``configure_optimizers``.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor

from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig, build_model
from sprout.parallel import parallelize
from sprout.protocols import GrowthOperator


def swap_model(trainer: L.Trainer, module: L.LightningModule, model: nn.Module, config: LlamaConfig) -> None:
    """Train ``model`` (shaped ``config``) in ``module`` from now on, with a new optimizer over
    its parameters and a scheduler that reads the module's schedule (add its segment first)."""
    strategy = trainer.strategy
    if isinstance(strategy, ModelParallelStrategy):
        if not isinstance(model, Llama):
            raise SproutError(
                f"The grown model is a {type(model).__name__}, which FSDP2 cannot shard (G_learn trains its growth map on the whole model). "
                "Use growth.operator gstack (or another operator that returns a plain Llama) with ModelParallelStrategy, or train this stage with DDP."
            )
        sharded = module.build_model(config)  # laid out like the run's first model, then filled from rank 0
        set_model_state_dict(
            sharded, model.state_dict(), options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        model = sharded
    elif isinstance(model, Llama):
        model = parallelize(model, module.parallel)
    module.model = model
    module.config = config
    if isinstance(strategy, DDPStrategy):
        strategy.model = module
        strategy.configure_ddp()
    strategy.setup_optimizers(trainer)


def carry_optimizer_state(
    source_parameter,
    old_params: dict[str, nn.Parameter],
    old: torch.optim.Optimizer,
    grown: nn.Module,
    new: torch.optim.Optimizer,
) -> None:
    """Give each grown parameter the optimizer state of the parameter it was copied from
    (``source_parameter(name)``, the operator's map), where the shapes agree."""
    for name, param in grown.named_parameters():
        source = source_parameter(name)
        before = old_params.get(source) if source is not None else None
        if before is None or before not in old.state or before.shape != param.shape:
            continue
        new.state[param] = {k: v.clone() if torch.is_tensor(v) else v for k, v in old.state[before].items()}


def full_model(model: nn.Module) -> Llama:
    """``model`` itself, or for an FSDP2-sharded model a plain copy gathered on every rank."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return build_model(model.config, full, source="the sharded stage-1 model")


def seeded_grow(operator: GrowthOperator, small: Llama, target: LlamaConfig, seed: int) -> nn.Module:
    """``operator.grow`` on a forked torch stream seeded by ``seed`` (the run seed and the step):
    the same draws whenever this growth happens, and the global generators are left where they were."""
    cuda = torch.cuda.is_available()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # this rank's device, where a model on the GPU draws
        return operator.grow(small, target)
