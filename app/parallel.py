"""How the model is laid over devices: FSDP2, activation checkpointing, compiled blocks.

Applied from outside the model, in the torchtitan manner: the Llama stays plain PyTorch and
``parallelize`` wraps it in place. Lightning's ``ModelParallelStrategy`` only sets up the
processes (and runs on CPU over gloo, so all of this is testable without a GPU); the module's
``configure_model`` builds the model on the meta device, calls ``parallelize`` with the mesh
from ``data_parallel_mesh`` and then materialises the shards. DDP and a single device take the
same path without a mesh, so checkpointing and compile apply there too.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sprout.errors import SproutError

SHARDING = ("full", "hybrid")


@dataclass
class Parallelism:
    """The recipe's ``model.parallel`` section.

    Args:
        sharding: with ``ModelParallelStrategy``: ``full`` shards parameters, gradients and
            optimizer state over every rank (FSDP); ``hybrid`` shards within a node and
            replicates across nodes (HSDP), so the all-gathers stay on the fast intra-node links.
        activation_checkpointing: recompute each transformer block in backward instead of
            storing its activations (about a third more compute for a fraction of the memory).
        compile: ``torch.compile`` each transformer block (fuses norm, RoPE and SwiGLU; all
            blocks share one compiled graph). Costs compile time at the first step.
        reshard_after_forward: free each block's gathered parameters after its forward and
            gather again in backward (less memory, more communication).
    """

    sharding: str = "full"
    activation_checkpointing: bool = False
    compile: bool = False
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING:
            raise SproutError(
                f"model.parallel.sharding={self.sharding!r} is not one of {', '.join(SHARDING)}; fix it in the recipe."
            )


def _checkpointed_forward(block: nn.Module, *args, **kwargs):
    return checkpoint(type(block).forward, block, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)


def recompute_in_backward(block: nn.Module) -> None:
    """Activation checkpointing of ``block``: its forward keeps only its inputs, and backward runs
    it again (``torch.utils.checkpoint``, non-reentrant; the blocks draw no random numbers). The
    module itself stays, so parameter names and checkpoints are those of the plain model; a bound
    method, so a deep copy of the model checkpoints its own blocks."""
    block.forward = types.MethodType(_checkpointed_forward, block)


def parallelize(model: nn.Module, plan: Parallelism, mesh=None, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Checkpoint and compile each block of ``model.layers``; with a ``mesh``, shard with FSDP2.

    Sharding groups: every block, the token embeddings, and the root, which then holds only
    the final norm and the output head (kept gathered from forward to backward, as the root
    is needed again first). ``hidden_states`` is registered as a forward method, so the chunked
    loss can read the gathered head weight after it. A tied head stays with its embedding in
    the root. Parameters are kept in fp32 and computed in ``param_dtype`` (bf16 for
    ``bf16-*`` precision); gradients are reduced in fp32.
    """
    for index, block in enumerate(model.layers):
        if plan.activation_checkpointing:
            recompute_in_backward(block)
        if plan.compile:
            block.compile()  # not fullgraph: under a dispatch mode (the FLOP counter's step) it runs eagerly
        model.layers[index] = block
    if mesh is None:
        return model

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    shard = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32))
    if not model.config.tie_embeddings:
        fully_shard(model.tok_embeddings, **shard, reshard_after_forward=plan.reshard_after_forward)
    for block in model.layers:
        fully_shard(block, **shard, reshard_after_forward=plan.reshard_after_forward)
    fully_shard(model, **shard)
    register_fsdp_forward_method(model, "hidden_states")
    return model


def data_parallel_mesh(strategy, sharding: str):
    """The device mesh FSDP2 shards over: 1-D over all ranks (``full``), or 2-D
    (nodes, ranks per node) for ``hybrid``, where FSDP2 replicates over the first dim."""
    from torch.distributed.device_mesh import init_device_mesh

    world, per_node = strategy.world_size, strategy.num_processes
    if sharding == "full":
        return init_device_mesh(strategy.root_device.type, (world,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(
        strategy.root_device.type, (world // per_node, per_node), mesh_dim_names=("dp_replicate", "dp_shard")
    )


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype FSDP2 gathers parameters in for a Lightning precision flag (``None``: keep fp32)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


FUSED_DEVICES = ("cuda", "cpu")  # where torch has fused Adam/AdamW/SGD kernels


def fused_optimizer_kwargs(factory: Callable, params: list[torch.Tensor]) -> dict:
    """``{"fused": True}`` when every parameter is on CUDA or CPU, the optimizer has a fused
    kernel (``fused`` argument: Adam, AdamW, SGD) and the recipe left it unset; else nothing, so
    explicit recipe choices are untouched. The fused step is one kernel per parameter instead of
    a dozen passes over all of them: on CPU it cut AdamW's share of a step at the benchmark shape
    from about 11% to 4%."""
    if not params or not all(p.device.type in FUSED_DEVICES for p in params):
        return {}
    keywords = getattr(factory, "keywords", None)  # LightningCLI hands a partial with every argument filled
    if keywords is not None:
        return (
            {"fused": True} if "fused" in keywords and keywords["fused"] is None and not keywords.get("foreach") else {}
        )
    try:
        accepts = "fused" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {"fused": True} if accepts else {}


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm over all ``tensors``; for FSDP2's sharded DTensor gradients, of the full tensors."""
    norm = torch.nn.utils.get_total_norm(tensors)
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor with pending reduction over the shards
    return full_tensor() if full_tensor is not None else norm
