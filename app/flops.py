"""FLOP counting for HFU (``sprout.callbacks.monitor``): the CPU attention kernels ``FlopCounterMode`` does not know."""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from sprout.compat.torch import cpu_flash_attention, cpu_flash_attention_backward


def _bmm(batch: int, m: int, k: int, n: int) -> int:
    return 2 * batch * m * k * n  # a multiply and an add per term, as FlopCounterMode counts matmuls


# FlopCounterMode counts the CUDA flash-attention kernels but not the CPU one, which takes the
# same leading arguments (query, key, value [B, H, T, D]; key and value may have fewer heads).
# The formulas are torch's for those kernels: two matmuls forward; backward recomputes the
# scores and takes four more.
@register_flop_formula(cpu_flash_attention)
def _attention_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[2], value_shape[3]
    return _bmm(b * h, s_q, d_q, s_k) + _bmm(b * h, s_q, s_k, d_v)


@register_flop_formula(cpu_flash_attention_backward)
def _attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[2], value_shape[3]
    scores = _bmm(b * h, s_q, d_q, s_k)
    return scores + _bmm(b * h, s_q, d_v, s_k) + _bmm(b * h, s_k, s_q, d_v) + _bmm(b * h, s_q, s_k, d_q) + scores


def flop_counter_mode() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that counts the CPU attention kernels too (registered above)."""
    return FlopCounterMode(display=False)
