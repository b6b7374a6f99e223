"""Plain-PyTorch Llama: config table, model, attention backends, and building one from given tensors."""

from sprout.model.build import build_model
from sprout.model.config import (
    CONFIGS,
    DEPTH_FIELDS,
    SHAPE_FIELDS,
    WIDTH_FIELDS,
    LlamaConfig,
    flops_per_token,
    forward_flops_per_token,
    param_count,
)
from sprout.model.init import INIT_SCHEMES, init_stds
from sprout.model.llama import Llama, RMSNorm, TransformerBlock

__all__ = [
    "CONFIGS",
    "DEPTH_FIELDS",
    "INIT_SCHEMES",
    "SHAPE_FIELDS",
    "WIDTH_FIELDS",
    "Llama",
    "LlamaConfig",
    "RMSNorm",
    "TransformerBlock",
    "build_model",
    "flops_per_token",
    "forward_flops_per_token",
    "init_stds",
    "param_count",
]
