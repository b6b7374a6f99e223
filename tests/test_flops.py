import torch
from torch.utils.flop_counter import FlopCounterMode

import app.flops  # noqa: F401  (registers the CPU attention formulas)
from app.model import Llama, LlamaConfig, flops_per_token


def test_counted_training_flops_include_cpu_attention():
    config = LlamaConfig.from_name("micro", block_size=64, vocab_size=512)
    model = Llama(config)
    model.init_weights()
    x = torch.randint(0, 512, (2, 64))
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    counted = counter.get_total_flops()
    closed_form = flops_per_token(config, 64) * x.numel()
    attention = counter.get_flop_counts()["Global"].get(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, 0)
    assert attention > 0
    assert abs(counted - closed_form) / closed_form < 0.05
