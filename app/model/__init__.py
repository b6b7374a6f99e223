"""Plain-PyTorch Llama: config table, model, attention backends."""

from app.model.config import CONFIGS, LlamaConfig, flops_per_token, param_count
from app.model.llama import Llama, RMSNorm, TransformerBlock

__all__ = ["CONFIGS", "Llama", "LlamaConfig", "RMSNorm", "TransformerBlock", "flops_per_token", "param_count"]
