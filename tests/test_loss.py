"""The chunked cross-entropy equals the plain one, in value and gradient, without full logits."""

import pytest
import torch

from sprout.loss import IGNORE_INDEX, chunked_token_losses, token_losses


def _problem(B=3, T=20, C=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(V, C, generator=g)).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :4] = IGNORE_INDEX
    upstream = torch.rand(B, T, generator=g)  # a selector's per-token weights
    return hidden, weight, targets, upstream


def _grads(loss_fn, hidden, weight, targets, upstream):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, targets)
    (loss * upstream).sum().backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 7, 60, 1000])
def test_matches_plain_cross_entropy(chunk_size, recompute):
    problem = _problem()
    ref = _grads(lambda h, w, t: token_losses(h @ w.T, t), *problem)
    out = _grads(lambda h, w, t: chunked_token_losses(h, w, t, chunk_size=chunk_size, recompute=recompute), *problem)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert out[0].shape == (3, 20) and out[0].dtype == torch.float32
    assert torch.all(out[0][0, :4] == 0)  # ignored tokens cost nothing and get no gradient
    assert torch.all(out[1][0, :4] == 0)


@pytest.mark.parametrize("recompute", [True, False])
def test_gradcheck_in_double(recompute):
    hidden, weight, targets, _ = _problem(B=2, T=5, C=4, V=7)
    hidden = hidden.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_token_losses(h, w, targets, chunk_size=3, recompute=recompute), (hidden, weight)
    )


@pytest.mark.parametrize("recompute", [True, False])
def test_autocast_bf16_computes_the_head_in_bf16(recompute):
    hidden, weight, targets, upstream = _problem(C=64, V=96)
    ref = _grads(lambda h, w, t: token_losses(h @ w.T, t), hidden, weight, targets, upstream)
    with torch.autocast("cpu", torch.bfloat16):
        loss = chunked_token_losses(hidden, weight, targets, chunk_size=16, recompute=recompute)
    assert loss.dtype == torch.float32
    hidden.grad = weight.grad = None
    (loss * upstream).sum().backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref[0], rtol=0.02, atol=0.05)  # bf16 has 8 bits of mantissa
    torch.testing.assert_close(weight.grad, ref[2], rtol=0.05, atol=0.02)
    bf16_error = (loss - ref[0]).abs().max()
    assert bf16_error > 0  # the matmul really ran in bf16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recompute_saves_no_logits_sized_tensor(dtype):
    """With ``recompute`` autograd keeps the inputs and one float per token, not [tokens, vocab]."""
    hidden, weight, targets, _ = _problem(B=2, T=64, C=8, V=4096)
    hidden, weight = (t.detach().to(dtype).requires_grad_() for t in (hidden, weight))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = chunked_token_losses(hidden, weight, targets, chunk_size=32, recompute=True)
    assert max(saved) == weight.numel() and 128 * 4096 not in saved
    loss.sum().backward()
    assert hidden.grad is not None


def test_default_keeps_grad_logits_only_under_the_budget(monkeypatch):
    """The default keeps [tokens, vocab] of d loss / d logits in the compute dtype while it fits
    ``KEEP_GRAD_LOGITS_MAX_BYTES``, recomputes above it, and keeps nothing without a gradient."""
    import sprout.loss

    hidden, weight, targets, _ = _problem(B=2, T=64, C=8, V=4096)

    def largest_saved(**kwargs):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            chunked_token_losses(hidden, weight, targets, chunk_size=32, **kwargs)
        return max(saved, default=0)

    assert largest_saved() == 128 * 4096
    with torch.autocast("cpu", torch.bfloat16):
        assert largest_saved() == 128 * 4096
    with torch.no_grad():
        assert largest_saved() == 0
    monkeypatch.setattr(sprout.loss, "KEEP_GRAD_LOGITS_MAX_BYTES", 128 * 4096 * 4 - 1)
    assert largest_saved() == weight.numel()
    with torch.autocast("cpu", torch.bfloat16):
        assert largest_saved() == 128 * 4096  # half the bytes in bf16: under the budget again


@pytest.mark.parametrize("recompute", [True, False])
def test_compiled_kernels_match_eager(recompute):
    problem = _problem(C=32, V=64)
    eager = _grads(lambda h, w, t: chunked_token_losses(h, w, t, chunk_size=16, recompute=recompute), *problem)
    compiled = _grads(
        lambda h, w, t: chunked_token_losses(h, w, t, chunk_size=16, compiled=True, recompute=recompute), *problem
    )
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
