"""The training steps ``tools/bench_train.py`` compares, one per candidate: Sprout's, Hugging
Face's and LitGPT's, each as its users run it (see bench_train's docstring). Runs in the
benchmark's worker processes, possibly another venv: it imports only torch and the
candidate's framework, and those inside the functions.
"""

from __future__ import annotations


def _sprout_step(shape: dict, compile_blocks: bool):
    from sprout.loss import chunked_token_losses
    from sprout.model import Llama, LlamaConfig
    from sprout.parallel import Parallelism, parallelize

    model = parallelize(Llama(LlamaConfig(**shape)), Parallelism(compile=compile_blocks))

    def loss_fn(x, y):
        return chunked_token_losses(model.hidden_states(x), model.output.weight, y, compiled=compile_blocks).mean()

    return model, loss_fn


def _hf_step(shape: dict, compile_model: bool):
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    config = HFConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["n_embd"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["n_layer"],
        num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_kv_head"],
        max_position_embeddings=shape["block_size"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    forward = torch.compile(model) if compile_model else model

    def loss_fn(x, y):
        logits = forward(input_ids=x).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    return model, loss_fn


def _litgpt_step(shape: dict, compile_model: bool):
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    config = Config(
        n_layer=shape["n_layer"],
        n_embd=shape["n_embd"],
        n_head=shape["n_head"],
        n_query_groups=shape["n_kv_head"],
        intermediate_size=shape["intermediate_size"],
        vocab_size=shape["vocab_size"],
        padded_vocab_size=shape["vocab_size"],
        block_size=shape["block_size"],
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=1e-5,
        mlp_class_name="LLaMAMLP",
        rotary_percentage=1.0,
        rope_base=10000,
        parallel_residual=False,
    )
    model = GPT(config)
    forward = torch.compile(model) if compile_model else model  # litgpt pretrain: torch.compile(model), loss outside

    def loss_fn(x, y):
        return chunked_cross_entropy(forward(x), y)

    return model, loss_fn


def versions(candidate: str) -> dict:
    """The versions of torch and of the candidate's framework, for the table's header."""
    import importlib.metadata

    import torch

    versions = {"torch": torch.__version__}
    for package in {"hf": ["transformers"], "litgpt": ["litgpt", "transformers"]}.get(
        candidate.removesuffix("-compiled"), []
    ):
        versions[package] = importlib.metadata.version(package)
    return versions


def build_step(candidate: str, shape: dict, batch: int, seq_len: int, dtype: str):
    """The candidate's model, loss and fused AdamW on fixed random tokens, as one training-step callable."""
    import torch

    if candidate in ("sprout", "sprout-eager"):
        model, loss_fn = _sprout_step(shape, compile_blocks=candidate == "sprout")
    elif candidate.startswith("hf"):
        model, loss_fn = _hf_step(shape, compile_model=candidate == "hf-compiled")
    else:
        model, loss_fn = _litgpt_step(shape, compile_model=candidate == "litgpt-compiled")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x = torch.randint(0, shape["vocab_size"], (batch, seq_len))
    y = torch.randint(0, shape["vocab_size"], (batch, seq_len))

    def step() -> float:
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step
