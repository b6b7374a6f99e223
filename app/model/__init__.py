"""Plain-PyTorch Llama: config table, model, attention backends, and building one from given tensors."""

from app.model.build import build_model
from app.model.config import (
    CONFIGS,
    DEPTH_FIELDS,
    SHAPE_FIELDS,
    WIDTH_FIELDS,
    LlamaConfig,
    flops_per_token,
    forward_flops_per_token,
    param_count,
)
from app.model.init import INIT_SCHEMES, init_stds
from app.model.llama import Llama, RMSNorm, TransformerBlock

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
