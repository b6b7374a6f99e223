"""The memory estimator against the measured peak of a real CPU training step."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sprout.commands.memory import estimate
from sprout.loss import chunked_token_losses
from sprout.memory import estimate_memory
from sprout.model import Llama, LlamaConfig
from sprout.parallel import Parallelism, parallelize


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage while active: the least any allocator must hold.

    Every op's outputs are tracked until their storage is freed (views share a storage);
    tensors that exist before (parameters, optimizer state) are passed in.
    """

    def __init__(self, existing):
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = self.peak = 0
        for tensor in existing:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if id(storage) in self._live:
            return
        self._live[id(storage)] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, id(storage))

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


def _measured_peak(config, micro_batch, seq_len, checkpointing):
    torch.manual_seed(0)
    model = parallelize(Llama(config), Parallelism(activation_checkpointing=checkpointing))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, config.vocab_size, (micro_batch, seq_len))
    y = torch.randint(0, config.vocab_size, (micro_batch, seq_len))

    def step():  # two micro-batches of gradient accumulation, then the optimizer
        for _ in range(2):
            chunked_token_losses(model.hidden_states(x), model.output.weight, y).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # creates the optimizer state
    existing = [
        *model.parameters(),
        *model.buffers(),
        *(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)),
    ]
    with PeakTensorMemory(existing) as memory:
        step()
    return memory.peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("arch,micro_batch,seq_len", [("tiny", 4, 128), ("micro", 2, 256)])
def test_estimate_within_25_percent_of_measured(arch, micro_batch, seq_len, checkpointing):
    config = LlamaConfig.from_name(arch, vocab_size=512, block_size=256)
    measured = _measured_peak(config, micro_batch, seq_len, checkpointing)
    estimated = estimate_memory(
        config, micro_batch, seq_len, compute_bytes=4, activation_checkpointing=checkpointing
    ).total
    assert abs(estimated - measured) / measured < 0.25, (estimated / 2**20, measured / 2**20)


def test_checkpointing_and_sharding_shrink_the_estimate():
    config = LlamaConfig.from_name("tiny-llama-1.1b")
    one = estimate_memory(config, 4, 2048)
    eight = estimate_memory(config, 4, 2048, shards=8)
    assert eight.optimizer * 8 == one.optimizer and eight.parameters * 8 == one.parameters
    assert eight.gathered > 0 == one.gathered  # FSDP holds gathered blocks in flight
    checkpointed = estimate_memory(config, 4, 2048, shards=8, activation_checkpointing=True)
    assert checkpointed.activations < eight.activations / 5


def test_tool_reads_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "trainer: {devices: 4, num_nodes: 2, precision: bf16-mixed, strategy: {class_path: lightning.pytorch.strategies.ModelParallelStrategy}}\n"
        "model: {arch: tiny-llama-1.1b, parallel: {sharding: hybrid}}\n"
        "data: {batch_size: 2, seq_len: 1024}\n"
    )
    totals = estimate(recipe=recipe)
    config = LlamaConfig.from_name("tiny-llama-1.1b")
    assert (
        totals["checkpointing"]
        == estimate_memory(config, 2, 1024, shards=4, activation_checkpointing=True).total / 2**30
    )
    assert "micro-batch 2 x 1024 tokens, 4 FSDP shard(s)" in capsys.readouterr().out
