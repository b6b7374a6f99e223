"""The Llama model: shapes, attention backends, causality, initialisation, config validation."""

import math

import pytest
import torch

from sprout.errors import SproutError
from sprout.model import CONFIGS, Llama, LlamaConfig, flops_per_token, param_count
from sprout.model.attention import causal_attention, eager_attention, flash_available
from sprout.model.llama import apply_rope, rope_tables

GQA = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=176, vocab_size=256, block_size=64)


def tiny_model(**changes) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(**{**GQA, **changes}))


def test_forward_shapes_and_hidden_states():
    model = tiny_model()
    idx = torch.randint(0, 256, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 256)
    hidden = model.hidden_states(idx)
    assert hidden.shape == (3, 17, 64)
    torch.testing.assert_close(model.output(hidden), logits)


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_sdpa_matches_eager(n_kv_head):
    torch.manual_seed(0)
    idx = torch.randint(0, 256, (2, 33))
    sdpa = tiny_model(n_kv_head=n_kv_head, attention="sdpa")
    eager = tiny_model(n_kv_head=n_kv_head, attention="eager")
    eager.load_state_dict(sdpa.state_dict())
    torch.testing.assert_close(sdpa(idx), eager(idx), atol=1e-5, rtol=1e-5)


def test_eager_gqa_equals_repeated_kv_heads():
    """Query head h must read KV head h // group, the grouping HF and SDPA use."""
    torch.manual_seed(0)
    q = torch.randn(1, 5, 4, 8)
    k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)
    grouped = eager_attention(q, k, v)
    for h in range(4):
        single = eager_attention(q[:, :, h : h + 1], k[:, :, h // 2 : h // 2 + 1], v[:, :, h // 2 : h // 2 + 1])
        torch.testing.assert_close(grouped[:, :, h : h + 1], single)


def test_auto_uses_sdpa_on_cpu():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 9, 4, 16), torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 16)
    torch.testing.assert_close(causal_attention(q, k, v, "auto"), causal_attention(q, k, v, "sdpa"))


def _kernels_run(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize(
    "dtype, max_scores, written_out",
    [
        (torch.bfloat16, None, True),
        (torch.bfloat16, 0, False),  # scores over the limit: the fused kernel
        (torch.float32, None, False),  # fp32 keeps the fused kernel
        (torch.float64, None, True),  # the written-out math at full precision (fp64 let in below)
    ],
    ids=["bf16", "bf16-too-long", "fp32", "fp64-exact"],
)
def test_compiled_cpu_attention_gradients_match_sdpa(monkeypatch, dtype, max_scores, written_out):
    """Compiled on CPU, attention's backward is written out (``_CPUAttention``) for bf16/fp16
    while the scores are small enough, else SDPA's fused kernel; the gradients are SDPA's."""
    import sprout.model.attention as attention

    if max_scores is not None:
        monkeypatch.setattr(attention, "CPU_MATH_BACKWARD_MAX_SCORES", max_scores)
    if dtype == torch.float64:
        monkeypatch.setattr(attention, "CPU_MATH_BACKWARD_DTYPES", (torch.float64,))
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 24, heads, 16, dtype=dtype, requires_grad=True) for heads in (6, 2, 2))
    grad_out = torch.randn(2, 24, 6, 16, dtype=dtype)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = torch.autograd.grad(causal_attention(*exact, "sdpa"), exact, grad_out.double())
    compiled = torch.compile(lambda q, k, v: causal_attention(q, k, v, "sdpa"), fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v), grad_out)  # compiles here
    tolerance = {torch.bfloat16: 3e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    for name, want, have in zip("qkv", expected, got):
        torch.testing.assert_close(have.double(), want, rtol=tolerance, atol=tolerance, msg=f"d{name}")
    kernels = _kernels_run(lambda: torch.autograd.grad(compiled(q, k, v), (q, k, v), grad_out))
    assert ("aten::_scaled_dot_product_flash_attention_for_cpu_backward" not in kernels) == written_out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_future_tokens_do_not_change_past_logits(attention):
    model = tiny_model(attention=attention)
    idx = torch.randint(0, 256, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 256, (2, 8))
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rope_makes_the_model_order_aware():
    """Without positions, causal attention is blind to the order of earlier tokens."""
    model = tiny_model()
    idx = torch.tensor([[5, 9, 11, 3]])
    swapped = torch.tensor([[9, 5, 11, 3]])
    assert not torch.allclose(model(idx)[0, -1], model(swapped)[0, -1], atol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
    config = LlamaConfig(**GQA)
    cos, sin = rope_tables(config)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        return (apply_rope(q, cos[m : m + 1], sin[m : m + 1]) * apply_rope(k, cos[n : n + 1], sin[n : n + 1])).sum()

    torch.testing.assert_close(score(7, 3), score(40, 36))
    assert not torch.allclose(score(7, 3), score(7, 4))


def test_tied_embeddings_share_one_tensor():
    model = tiny_model(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert sum(p.numel() for p in model.parameters()) == param_count(model.config)
    assert "output.weight" in model.state_dict()


def test_param_count_matches_modules():
    for name in ("micro", "tiny", "small", "bench-6l-384"):
        config = LlamaConfig.from_name(name)
        assert sum(p.numel() for p in Llama(config).parameters()) == param_count(config)


def test_param_count_of_published_shapes():
    assert param_count(LlamaConfig.from_name("tiny-llama-1.1b")) == 1_100_048_384
    assert param_count(LlamaConfig.from_name("llama-2-7b")) == 6_738_415_616
    assert param_count(LlamaConfig.from_name("llama-2-13b")) == 13_015_864_320


def test_flops_per_token_counts_matmuls_and_attention():
    config = LlamaConfig.from_name("micro")
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 176
    expected = 6 * (2 * per_layer + 4096 * 64) + 12 * 2 * 64 * 100
    assert flops_per_token(config, 100) == expected
    assert flops_per_token(config.replace(tie_embeddings=True), 100) == expected


def test_flops_per_token_agrees_with_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    # eager attention: torch's flop counter does not count the CPU SDPA kernel
    config = LlamaConfig.from_name("micro", vocab_size=512, attention="eager")
    model = Llama(config)
    idx = torch.randint(0, 512, (2, 64))
    with FlopCounterMode(display=False) as counter:
        model(idx).float().pow(2).mean().backward()
    assert counter.get_total_flops() == 2 * 64 * flops_per_token(config, 64)


def test_forward_flops_per_token_agrees_with_flop_counter():
    """A scoring-only forward (Rho-1's online reference) costs a third of a training step."""
    from torch.utils.flop_counter import FlopCounterMode

    from sprout.model import forward_flops_per_token

    config = LlamaConfig.from_name("micro", vocab_size=512, attention="eager")
    model = Llama(config)
    idx = torch.randint(0, 512, (2, 64))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx)
    assert counter.get_total_flops() == 2 * 64 * forward_flops_per_token(config, 64)


def test_init_scales_residual_projections():
    config = LlamaConfig.from_name("small", vocab_size=512)
    model = Llama(config)
    std = config.init_std
    assert model.layers[0].attention.wq.weight.std().item() == pytest.approx(std, rel=0.05)
    residual = std / math.sqrt(2 * config.n_layer)
    assert model.layers[0].feed_forward.w2.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.all(model.norm.weight == 1)


def test_tinyllama_init_follows_lit_gpt():
    """TinyLlama's ``lit_gpt/model.py`` ``_init_weights``: sqrt(2 / (5 d)) for the embedding and
    every linear layer, 1 / sqrt(d) / n_layer for the residual projections; init_std unused."""
    config = LlamaConfig.from_name("small", vocab_size=512, init="tinyllama", init_std=0.5)
    torch.manual_seed(0)
    model = Llama(config)
    d, layers = config.n_embd, config.n_layer
    std, residual = math.sqrt(2 / (5 * d)), 1 / math.sqrt(d) / layers
    block = model.layers[0]
    for weight in (
        model.tok_embeddings.weight,
        model.output.weight,
        block.attention.wq.weight,
        block.feed_forward.w3.weight,
    ):
        assert weight.std().item() == pytest.approx(std, rel=0.05)
    for weight in (block.attention.wo.weight, block.feed_forward.w2.weight):
        assert weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.all(model.norm.weight == 1)


def test_meta_build_then_materialise_equals_direct_build():
    config = LlamaConfig(**GQA, tie_embeddings=True)
    with torch.device("meta"):
        meta_model = Llama(config)
    assert meta_model.rope_cos.is_meta
    meta_model.to_empty(device="cpu")
    torch.manual_seed(1)
    meta_model.init_weights()
    direct = Llama(config)
    torch.manual_seed(1)
    direct.init_weights()
    assert meta_model.output.weight is meta_model.tok_embeddings.weight
    idx = torch.randint(0, 256, (1, 10))
    torch.testing.assert_close(meta_model(idx), direct(idx))


def test_reset_rope_restores_fp32_tables_after_cast():
    model = tiny_model().to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.bfloat16
    model.reset_rope()
    assert model.rope_cos.dtype == torch.float32
    assert model(torch.randint(0, 256, (1, 8))).dtype == torch.bfloat16


def test_bf16_autocast_runs_and_backpropagates():
    model = tiny_model()
    idx = torch.randint(0, 256, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1).float(), idx.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_input_longer_than_block_size_is_refused():
    model = tiny_model(block_size=8)
    with pytest.raises(SproutError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_named_configs():
    tiny_llama = LlamaConfig.from_name("tiny-llama-1.1b")
    assert (tiny_llama.n_layer, tiny_llama.n_embd, tiny_llama.n_head, tiny_llama.n_kv_head) == (22, 2048, 32, 4)
    assert (tiny_llama.intermediate_size, tiny_llama.vocab_size, tiny_llama.block_size) == (5632, 32000, 2048)
    assert tiny_llama.norm_eps == 1e-5
    for small, large in (
        ("llama-1.1b-6l", "llama-1.1b-24l"),
        ("llama-3b-8l", "llama-3b-32l"),
        ("llama-7b-8l", "llama-7b-32l"),
    ):
        a, b = LlamaConfig.from_name(small), LlamaConfig.from_name(large)
        assert b.n_layer == 4 * a.n_layer and a.replace(n_layer=b.n_layer) == b
    bench = LlamaConfig.from_name("bench-6l-384")
    assert (bench.n_layer, bench.n_embd, bench.n_head, bench.n_kv_head, bench.intermediate_size) == (6, 384, 6, 2, 1024)
    assert LlamaConfig.from_name("tiny", vocab_size=300).vocab_size == 300
    for name in CONFIGS:
        config = LlamaConfig.from_name(name)
        assert LlamaConfig.from_dict(config.to_dict()) == config


def test_unknown_config_name_lists_names():
    with pytest.raises(SproutError, match="tiny-llama-1.1b") as error:
        LlamaConfig.from_name("tiny-lama")
    assert "tiny-lama" in str(error.value)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(n_head=5), "n_head"),
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(n_embd=60, n_head=4, n_kv_head=4), "odd head size"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(attention="flashy"), "attention"),
        (dict(init="gpt"), "model.init"),
    ],
)
def test_config_validation_names_the_field(changes, field):
    with pytest.raises(SproutError, match=field):
        LlamaConfig(**{**GQA, **changes})


def test_replace_and_from_dict_reject_unknown_fields():
    config = LlamaConfig(**GQA)
    with pytest.raises(SproutError, match="n_layers"):
        config.replace(n_layers=4)
    with pytest.raises(SproutError, match="vocab_size"):
        LlamaConfig.from_dict({k: v for k, v in GQA.items() if k != "vocab_size"})
    with pytest.raises(SproutError, match="n_kv_head"):
        config.replace(n_kv_head=3)


@pytest.mark.skipif(flash_available(), reason="flash-attn is installed here")
def test_flash_without_package_says_how_to_install():
    with pytest.raises(SproutError, match=r"sprout\[gpu\]"):
        Llama(LlamaConfig(**GQA, attention="flash"))
