"""Growth operators on tiny models: layer maps, function preservation where promised, GQA shapes,
LiGO at initialisation equal to Gstack, the G_random ramp, and that every grown model trains."""

import math

import pytest
import torch

from sprout import registry
from sprout.errors import SproutError
from sprout.model import Llama, LlamaConfig
from sprout.plugins.growth.common import layer_map, width_maps
from sprout.plugins.growth.direct import DirectWidth, Gstack
from sprout.plugins.growth.learn import BLOCK, LearnedGrowth, LigoModel, values_to_outputs
from sprout.plugins.growth.random import RandomDepth, RandomWidth
from sprout.plugins.growth.zero import ZeroDepth, ZeroWidth

VOCAB, SEQ = 96, 16
SOURCE = LlamaConfig.from_name("micro", vocab_size=VOCAB, block_size=SEQ)  # 2 layers, 64 wide, 4 heads, 2 KV heads
DEEP = SOURCE.replace(n_layer=4)
WIDE = SOURCE.replace(n_embd=128, n_head=8, n_kv_head=4, intermediate_size=352)  # x2, 2 query heads per KV head
WIDE_GROUPS = SOURCE.replace(n_embd=128, n_head=8, n_kv_head=2, intermediate_size=352)  # x2, 4 query heads per KV head
WIDE_ODD = SOURCE.replace(n_embd=96, n_head=6, n_kv_head=3, intermediate_size=264)  # x1.5


def trained_like(config: LlamaConfig, seed: int = 0) -> Llama:
    """A model with the scales of a trained one: an O(1) residual stream and gains away from one
    (at Llama's init the residual is ~0.02 and RMSNorm's epsilon would dominate comparisons)."""
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        model.tok_embeddings.weight.normal_(0, 1.0)
        for p in model.parameters():
            if p.ndim == 1:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    return model


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest logit difference relative to the logits' scale."""
    return float((a - b).abs().max() / b.abs().max().detach())


def test_every_operator_is_registered():
    for name, cls in [
        ("gstack", Gstack),
        ("direct_width", DirectWidth),
        ("zero_depth", ZeroDepth),
        ("zero_width", ZeroWidth),
        ("random_depth", RandomDepth),
        ("random_width", RandomWidth),
        ("learn", LearnedGrowth),
    ]:
        assert registry.resolve("growth", name) is cls


# -- depth ---------------------------------------------------------------------------------


def test_layer_maps():
    assert layer_map("t", 2, 8) == [0, 1, 0, 1, 0, 1, 0, 1]  # Gstack: target i = source i mod L
    assert layer_map("t", 6, 24) == [i % 6 for i in range(24)]
    assert layer_map("t", 2, 8, "interleave") == [0, 0, 0, 0, 1, 1, 1, 1]
    assert layer_map("t", 6, 10, "stack", [2, 3]) == [0, 1, 2, 3, 2, 3, 2, 3, 4, 5]
    assert layer_map("t", 6, 10, "interleave", [2, 3]) == [0, 1, 2, 2, 2, 3, 3, 3, 4, 5]
    with pytest.raises(SproutError, match="contiguous"):
        layer_map("t", 6, 10, "stack", [1, 3])
    with pytest.raises(SproutError, match="n_layer"):
        layer_map("t", 6, 9, "stack", [2, 3])
    with pytest.raises(SproutError, match="order"):
        layer_map("t", 6, 12, "zigzag")


@pytest.mark.parametrize("order, layers", [("stack", None), ("interleave", None), ("stack", [1])])
def test_gstack_copies_whole_blocks(order, layers):
    source = trained_like(SOURCE.replace(n_layer=3))
    target = SOURCE.replace(n_layer=6)
    grown = Gstack(order, layers).grow(source, target)
    mapping = layer_map("t", 3, 6, order, layers)
    for i, j in enumerate(mapping):
        for (name, a), b in zip(grown.layers[i].state_dict().items(), source.layers[j].state_dict().values()):
            assert torch.equal(a, b), (i, j, name)
    for name in ("tok_embeddings.weight", "norm.weight", "output.weight"):
        assert torch.equal(grown.state_dict()[name], source.state_dict()[name])
    assert grown.config.n_layer == 6 and isinstance(grown, Llama)


def test_official_defaults_of_zero_depth_and_the_msg_ramp():
    """prts ``G_zero_depthwise.py`` interleaves (layer i repeats i // (L_t / L_s)), zeroing each
    repeat's wo and w2; ``msg.py``'s ``grow_step`` is 5000."""
    source = trained_like(SOURCE)
    grown = ZeroDepth().grow(source, DEEP)  # 2 -> 4 layers: [0, 0, 1, 1]
    for i, (j, is_copy) in enumerate([(0, False), (0, True), (1, False), (1, True)]):
        for name, value in grown.layers[i].state_dict().items():
            zeroed = is_copy and name in ("attention.wo.weight", "feed_forward.w2.weight")
            assert torch.equal(value, torch.zeros_like(value) if zeroed else source.layers[j].state_dict()[name]), (
                i,
                name,
            )
    assert RandomDepth().ramp_steps == RandomWidth().ramp_steps == 5000


# -- function preservation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "operator, target",
    [
        (ZeroDepth(), DEEP),
        (ZeroDepth("stack"), DEEP),
        (RandomDepth(ramp_steps=10), DEEP),
        (DirectWidth(), WIDE),
        (DirectWidth(), WIDE_GROUPS),
        (DirectWidth(split_noise=0.2), WIDE),
        (RandomDepth(ramp_steps=10, variant="joint"), DEEP),
        (ZeroWidth("rescaled"), WIDE),
        (ZeroWidth("rescaled"), WIDE_GROUPS),
        (RandomWidth(ramp_steps=10, variant="joint"), WIDE),
        (RandomWidth(ramp_steps=10, variant="joint"), WIDE_GROUPS),
    ],
    ids=lambda x: (
        type(x).__name__ if not isinstance(x, LlamaConfig) else f"{x.n_layer}L{x.n_embd}h{x.n_head}kv{x.n_kv_head}"
    ),
)
def test_growth_preserves_the_function(operator, target):
    source = trained_like(SOURCE)
    idx = tokens()
    with torch.no_grad():
        grown = operator.grow(source, target)
        assert max_error(grown(idx), source(idx)) < 1e-5
    assert grown.config == target


@pytest.mark.parametrize("target", [WIDE, WIDE_GROUPS], ids=["wide", "wide-groups"])
def test_published_random_width_keeps_the_function_up_to_the_norms_epsilon(target):
    """The official MsgNorm rescales by sqrt(sum m / n) outside the epsilon, which thereby grows by n_t / n_s."""
    source, idx = trained_like(SOURCE), tokens()
    with torch.no_grad():
        assert max_error(RandomWidth(ramp_steps=10).grow(source, target)(idx), source(idx)) < 1e-4


def test_direct_width_with_tied_embeddings_preserves_the_function():
    source = trained_like(SOURCE.replace(tie_embeddings=True))
    with torch.no_grad():
        grown = DirectWidth().grow(source, WIDE.replace(tie_embeddings=True))
        assert grown.output.weight is grown.tok_embeddings.weight
        assert max_error(grown(tokens()), source(tokens())) < 1e-5


def test_direct_width_by_a_non_integer_factor_is_close_but_not_exact():
    """The documented RMSNorm tolerance: with 1.5x, half of the residual dimensions are copied
    twice, so each norm's mean square changes with the inputs and the logits move a little."""
    source = trained_like(SOURCE)
    with torch.no_grad():
        err = max_error(DirectWidth().grow(source, WIDE_ODD)(tokens()), source(tokens()))
    assert 1e-5 < err < 0.1


def test_gqa_heads_grow_whole_and_keep_their_group():
    source = trained_like(SOURCE)
    grown = DirectWidth().grow(source, WIDE_GROUPS)
    hd = SOURCE.head_dim
    assert grown.layers[0].attention.wq.weight.shape == (8 * hd, 128)
    assert grown.layers[0].attention.wk.weight.shape == (2 * hd, 128)
    # source query heads 0,1 read KV head 0 and 2,3 read KV head 1; the target has 4 query heads
    # per KV head: heads 0..3 must be copies of source heads in group 0, heads 4..7 of group 1.
    wq_s = source.layers[0].attention.wq.weight.view(4, hd, 64)
    wq_t = grown.layers[0].attention.wq.weight.view(8, hd, 128)
    for t, s in enumerate([0, 1, 0, 1, 2, 3, 2, 3]):
        assert torch.allclose(wq_t[t, :, :64] * 2, wq_s[s]), t  # input columns halved: 64 -> 128 copies each dim twice


@pytest.mark.parametrize(
    "operator, target, field",
    [
        (Gstack(), WIDE.replace(n_layer=4), "n_embd"),
        (DirectWidth(), DEEP, "n_layer"),
        (DirectWidth(), SOURCE.replace(n_embd=128), "head size"),
        (DirectWidth(), SOURCE.replace(n_embd=128, n_head=8, n_kv_head=8), "query heads per KV head"),
        (ZeroWidth(), SOURCE.replace(vocab_size=128), "vocab_size"),
        (Gstack(), SOURCE, "equals the source"),
        (LearnedGrowth(), SOURCE.replace(n_layer=1), "smaller"),
    ],
)
def test_unreachable_targets_are_clear_errors(operator, target, field):
    with pytest.raises(SproutError, match=field):
        operator.check(SOURCE, target)


# -- G_zero widthwise as published -------------------------------------------------------------


def test_zero_width_published_zeroes_what_new_units_read_from_old_ones():
    """Official zero.py: target[:out_s, :in_s] = source, target[out_s:, :in_s] = 0, the columns of
    new inputs keep the target's random init; 1-D tensors (norm gains) get zeros past the source."""
    source, idx = trained_like(SOURCE), tokens()
    torch.manual_seed(5)
    fresh = Llama(WIDE)  # what fresh_weights draws under the same seed
    torch.manual_seed(5)
    grown = ZeroWidth().grow(source, WIDE)
    n, f = SOURCE.n_embd, SOURCE.intermediate_size
    s_w1, g_w1, r_w1 = (
        source.layers[0].feed_forward.w1.weight,
        grown.layers[0].feed_forward.w1.weight,
        fresh.layers[0].feed_forward.w1.weight,
    )
    assert torch.equal(g_w1[:f, :n], s_w1)
    assert torch.equal(g_w1[f:, :n], torch.zeros_like(g_w1[f:, :n]))  # new units, old inputs
    assert torch.equal(g_w1[:, n:], r_w1[:, n:]) and g_w1[:, n:].abs().min() > 0  # new inputs: random
    s_w2, g_w2 = source.layers[1].feed_forward.w2.weight, grown.layers[1].feed_forward.w2.weight
    assert torch.equal(g_w2[:n, :f], s_w2) and not g_w2[n:, :f].any() and g_w2[:, f:].abs().min() > 0
    for name in ("layers.0.attention_norm.weight", "layers.1.ffn_norm.weight", "norm.weight"):
        gain = grown.state_dict()[name]
        assert torch.equal(gain[:n], source.state_dict()[name]) and not gain[n:].any(), name
    assert not grown.tok_embeddings.weight[:, n:].any()
    with torch.no_grad():  # old gains are left as they are: RMSNorm now averages over twice the width
        assert max_error(grown(idx), source(idx)) > 0.1


def test_zero_width_published_trains_only_new_heads_at_first():
    """A consequence of the published form with SwiGLU and zero norm gains: new residual
    dimensions and new FFN units start at a stationary point; new heads' values get gradients."""
    source, idx = trained_like(SOURCE), tokens()
    grown = ZeroWidth().grow(source, WIDE)
    logits = grown(idx[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    n, f, kv = SOURCE.n_embd, SOURCE.intermediate_size, SOURCE.n_kv_head * SOURCE.head_dim
    assert not grown.tok_embeddings.weight.grad[:, n:].any()
    assert not grown.layers[0].attention_norm.weight.grad[n:].any()
    assert (
        not grown.layers[0].feed_forward.w1.weight.grad[f:].any()
        and not grown.layers[0].feed_forward.w3.weight.grad[f:].any()
    )
    assert grown.layers[0].attention.wv.weight.grad[kv:].abs().max() > 0


# -- G_random's ramp --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operator, target, variant, opens_at",
    [
        (RandomDepth, DEEP, "published", 4),
        (RandomDepth, DEEP, "joint", 4),
        (RandomWidth, WIDE_GROUPS, "published", 12),
        (RandomWidth, WIDE_GROUPS, "joint", 4),
    ],
)
def test_random_masks_ramp_open_and_resume(operator, target, variant, opens_at):
    source, idx = trained_like(SOURCE), tokens()
    op = operator(ramp_steps=4, variant=variant)
    with torch.no_grad():
        grown = op.grow(source, target)
        at_growth = grown(idx)
        op.on_train_step(grown, 2)  # the first mask at 0.5
        half = grown(idx)
        # a resumed run: a plain model with the same weights, the operator's state, restore()
        resumed_op = operator(ramp_steps=4, variant=variant)
        resumed_op.load_state_dict(op.state_dict())
        plain = Llama(target)
        plain.load_state_dict(grown.state_dict())
        assert torch.equal(resumed_op.restore(plain)(idx), half)
        op.on_train_step(grown, opens_at - 1)
        assert op._hooks
        op.on_train_step(grown, opens_at)  # fully open: hooks gone, the plain model
        assert not op._hooks
        unmasked = Llama(target)
        unmasked.load_state_dict(grown.state_dict())
        assert torch.equal(grown(idx), unmasked(idx))
    assert max_error(at_growth, source(idx)) < 1e-4
    assert max_error(half, at_growth) > 1e-4 and max_error(grown(idx), half) > 1e-3


def test_msg_width_opens_ffn_then_residual_then_attention():
    """Official msg.py: phases of grow_step steps; in each, one kind of new unit ramps linearly."""
    source, idx = trained_like(SOURCE), tokens()
    op = RandomWidth(ramp_steps=4)
    grown = op.grow(source, WIDE_GROUPS)
    masks = []
    for step in (0, 2, 4, 6, 8, 10, 12):
        op.step = step
        masks.append(tuple(op.phase_mask(p) for p in range(3)))
    assert masks == [(0, 0, 0), (0.5, 0, 0), (1, 0, 0), (1, 0.5, 0), (1, 1, 0), (1, 1, 0.5), (1, 1, 1)]
    n, f, q = SOURCE.n_embd, SOURCE.intermediate_size, SOURCE.n_head * SOURCE.head_dim
    new_q = width_maps(SOURCE, WIDE_GROUPS, copy=False).q < 0
    x = torch.randn(2, SEQ, 128)
    with torch.no_grad():
        for step, ffn_open, residual_open, attention_open in (
            (2, True, False, False),
            (6, True, True, False),
            (10, True, True, True),
        ):
            op.on_train_step(grown, step)
            assert bool(grown.layers[0].feed_forward.w1(x)[..., f:].abs().sum() > 0) == ffn_open
            assert bool(grown.tok_embeddings(idx)[..., n:].abs().sum() > 0) == residual_open
            assert bool(grown.layers[0].attention.wq(x)[..., new_q].abs().sum() > 0) == attention_open
            assert grown.layers[0].attention.wq(x)[..., ~new_q].abs().sum() > 0 and q == (~new_q).sum()


def test_msg_depth_blends_a_new_block_with_its_input():
    """Official MsgBlock: y * m + x * (1 - m) for each new block."""
    source = trained_like(SOURCE)
    op = RandomDepth(ramp_steps=4)
    grown = op.grow(source, DEEP)
    plain = Llama(DEEP)
    plain.load_state_dict(grown.state_dict())
    x, rope = torch.randn(2, SEQ, 64), (grown.rope_cos[:SEQ], grown.rope_sin[:SEQ])
    with torch.no_grad():
        op.on_train_step(grown, 1)
        assert torch.allclose(grown.layers[2](x, rope), 0.25 * plain.layers[2](x, rope) + 0.75 * x, atol=1e-6)
        assert torch.equal(grown.layers[1](x, rope), plain.layers[1](x, rope))


# -- G_learn -----------------------------------------------------------------------------------


def test_learn_at_initialisation_is_gstack():
    source, idx = trained_like(SOURCE), tokens()
    ligo = LearnedGrowth().grow(source, DEEP)
    with torch.no_grad():
        stacked = Gstack().grow(source, DEEP)(idx)
        assert torch.allclose(ligo(idx), stacked, atol=1e-5, rtol=0)
        assert torch.allclose(ligo.materialize()(idx), stacked, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "variant, names",
    [("official", {"residual", "query", "key", "value", "ffn"}), ("heads", {"residual", "q_heads", "kv_heads", "ffn"})],
)
def test_learn_grows_depth_and_width_and_materialises_what_it_computes(variant, names):
    source, idx = trained_like(SOURCE), tokens()
    op = LearnedGrowth(learn_steps=3, variant=variant)
    target = WIDE_GROUPS.replace(n_layer=3)
    ligo = op.grow(source, target)
    assert isinstance(ligo, LigoModel)
    assert {n for n, p in ligo.named_parameters() if p.requires_grad} == names | {f"depth.{k}" for k in ligo.depth}
    with torch.no_grad():
        plain = ligo.materialize()
        assert plain.config == target
        assert torch.allclose(plain(idx), ligo(idx), atol=1e-5, rtol=0)
        assert op.on_train_step(ligo, 2) is None
        assert isinstance(op.on_train_step(ligo, 3), Llama)


def test_learn_default_is_the_official_ligo_parametrisation():
    """prts ``ligo.py``: one B_Q, B_K, B_V, B_ffn for all layers over single dimensions,
    wo's input expanded by B_V, new rows N(0, 1/target); checked with random (trained-like)
    maps against the official formulas written out here, on full multi-head attention as there."""
    mha = SOURCE.replace(n_kv_head=SOURCE.n_head)
    target = mha.replace(n_embd=128, n_head=8, n_kv_head=8, intermediate_size=352, n_layer=3)
    torch.manual_seed(0)
    source = trained_like(mha)
    ligo = LearnedGrowth().grow(source, target)
    for name, n_source, n_target in [
        ("residual", 64, 128),
        ("query", 64, 128),
        ("key", 64, 128),
        ("value", 64, 128),
        ("ffn", mha.intermediate_size, 352),
    ]:
        matrix = getattr(ligo, name)
        assert matrix.shape == (n_target, n_source)  # one per axis, no layer dimension: shared
        assert torch.equal(matrix[:n_source], torch.eye(n_source))
        assert (
            abs(float(matrix[n_source:].detach().std()) * math.sqrt(n_target) - 1) < 0.06
        )  # sqrt(1/target), not 1/sqrt(source)
    with torch.no_grad():
        for p in ligo.parameters():
            p.add_(0.1 * torch.randn_like(p))  # every map away from its initialisation, K and V apart
        grown = ligo.materialize().state_dict()
    E, Q, K, V, F = ligo.residual, ligo.query, ligo.key, ligo.value, ligo.ffn
    src = source.state_dict()
    for t in range(target.n_layer):

        def mix(name, f, t=t):
            return sum(ligo.depth[name][t, j] * f(src[f"layers.{j}.{BLOCK[name]}"]) for j in range(2))

        expected = {
            "wq": mix("wq", lambda w: Q @ w @ E.T),
            "wk": mix("wk", lambda w: K @ w @ E.T),
            "wv": mix("wv", lambda w: V @ w @ E.T),
            "wo": mix("wo", lambda w: E @ w @ V.T),
            "w1": mix("w1", lambda w: F @ w @ E.T),
            "w3": mix("w3", lambda w: F @ w @ E.T),
            "w2": mix("w2", lambda w: E @ w @ F.T),
            "attention_norm": mix("attention_norm", lambda w: w @ E.T),
        }
        for name, value in expected.items():
            assert torch.allclose(grown[f"layers.{t}.{BLOCK[name]}"], value, atol=1e-5), name


def test_learn_output_map_of_grouped_attention_reduces_to_the_value_map():
    """With one query head per KV head the output projection's map is B_V itself; with groups,
    the source's heads keep their own output columns at initialisation."""
    mha = SOURCE.replace(n_kv_head=SOURCE.n_head)
    value = torch.randn(8 * mha.head_dim, 4 * mha.head_dim)
    wide = mha.replace(n_embd=128, n_head=8, n_kv_head=8)
    assert torch.equal(values_to_outputs(value, mha, wide), value)
    ligo = LearnedGrowth().grow(trained_like(SOURCE), WIDE_GROUPS)
    rows = width_maps(SOURCE, WIDE_GROUPS, copy=False).q
    outputs = values_to_outputs(ligo.value, SOURCE, WIDE_GROUPS)
    kept = rows >= 0
    assert torch.equal(outputs[kept], torch.eye(SOURCE.n_embd)[rows[kept]])


# -- a grown model trains ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "operator, target",
    [
        (Gstack(), DEEP),
        (ZeroDepth(), DEEP),
        (RandomDepth(ramp_steps=5), DEEP),
        (DirectWidth(split_noise=0.1), WIDE),
        (ZeroWidth(), WIDE),
        (RandomWidth(ramp_steps=5), WIDE),
        (LearnedGrowth(learn_steps=100), WIDE.replace(n_layer=4)),
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, LlamaConfig) else "",
)
def test_grown_model_trains(operator, target):
    torch.manual_seed(0)
    source = Llama(SOURCE)
    idx = tokens()
    grown = operator.grow(source, target)
    params = [p for p in grown.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for step in range(1, 16):
        logits = grown(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        operator.on_train_step(grown, step)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


# -- the paper-scale recipes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, small, big, target_name, tokens",
    [
        ("1.1b", 6, 24, "llama-1.1b-24l", 100e9),
        ("3b", 8, 32, "llama-3b-32l", 300e9),
        ("7b", 8, 32, "llama-7b-32l", 300e9),
    ],
)
def test_paper_recipes_grow_the_paper_shapes_at_the_guideline_time(name, small, big, target_name, tokens):
    from pathlib import Path

    import yaml

    from sprout.callbacks.growth import Growth
    from sprout.commands.plan_growth import growth_tokens
    from sprout.model import param_count

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / f"gstack-{name}.yaml").read_text())
    source = LlamaConfig.from_name(recipe["model"]["arch"])
    section = recipe["growth"]
    assert registry.resolve("growth", section["operator"]["class_path"]) is Gstack
    target = Growth(target_arch=section["target_arch"]).target_config(source)
    assert (source.n_layer, target.n_layer) == (small, big) and target == LlamaConfig.from_name(target_name)
    Gstack().check(source, target)
    assert section["at_tokens"] == round(growth_tokens(param_count(target), tokens))
    step_tokens = (
        recipe["data"]["batch_size"]
        * recipe["trainer"]["devices"]
        * recipe["trainer"]["accumulate_grad_batches"]
        * recipe["data"]["seq_len"]
    )
    assert step_tokens == 1024 * 2048 and abs(recipe["trainer"]["max_steps"] * step_tokens - tokens) < step_tokens
    assert (
        source.n_kv_head == source.n_head and target.n_kv_head == target.n_head
    )  # full multi-head attention, as 6L2048H / 24L2048H
    # the official scripts' two schedules: small model 1e-3 -> 1e-4, grown model 3e-4 -> 3e-5 after 3000 warm-up steps
    assert (
        recipe["model"]["optimizer"]["init_args"]["lr"],
        recipe["model"]["schedule"]["min_lr"],
        recipe["model"]["schedule"]["warmup_steps"],
    ) == (1e-3, 1e-4, 3000)
    assert (section["stage2_lr"], section["stage2_min_lr"], section["stage2_warmup_steps"]) == (3e-4, 3e-5, 3000)


def test_stage_two_decays_over_its_own_horizon():
    """growth.stage2_max_steps: the grown model's cosine ends that many steps after growth (the
    official g_stack.sh's own max_step), not at the end of the run."""
    from sprout.growth.plan import GrowthPlan
    from sprout.schedule import Schedule, WarmupCosine

    plan = GrowthPlan(Gstack(), target_overrides={"n_layer": 4}, at_step=6, stage2_max_steps=10)
    first = WarmupCosine(warmup_steps=2, min_lr=1e-4)
    shape = plan.stage2_schedule(first, 6)
    assert shape == WarmupCosine(warmup_steps=2, min_lr=1e-4, max_steps=16)
    schedule = Schedule(first)
    schedule.add(6, True, shape)
    run_steps, lr = 1000, 1e-3
    assert schedule.factor(16, lr, run_steps) == pytest.approx(0.1)  # at the floor 10 steps after growth
    assert schedule.factor(12, lr, run_steps) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through its cosine
    for options, message in [
        ({"stage2_max_steps": 0}, "stage2_max_steps must be a number of steps >= 1"),
        ({"stage2_max_steps": 10, "restart_schedule": False}, "restart_schedule is false"),
    ]:
        with pytest.raises(SproutError, match=message):
            GrowthPlan(Gstack(), target_overrides={"n_layer": 4}, at_step=6, **options)


def test_unknown_variants_name_the_option():
    with pytest.raises(
        SproutError,
        match=r"zero_width variant must be one of published, rescaled, got 'paper'; fix growth.operator.init_args.variant",
    ):
        ZeroWidth("paper")
    for operator in (RandomDepth, RandomWidth):
        with pytest.raises(
            SproutError,
            match=r"G_random variant must be one of published, joint, got 'msg'; fix growth.operator.init_args.variant",
        ):
            operator(variant="msg")


def test_function_change_at_initialisation_scale_as_the_readme_states(capsys):
    """README's growth table: widening the growth experiment's 8-layer model 64 -> 128 at Llama's
    init (std 0.02), the largest logit change relative to the largest logit, over seeds 0-2."""
    source_config = LlamaConfig.from_name(
        "tiny", n_layer=8, n_embd=64, n_head=2, n_kv_head=1, intermediate_size=176, vocab_size=1024, block_size=64
    )
    target = source_config.replace(n_embd=128, n_head=4, n_kv_head=2, intermediate_size=352)
    changes = {
        "zero_width published": [],
        "zero_width rescaled": [],
        "random_width published": [],
        "random_width joint": [],
    }
    for seed in range(3):
        torch.manual_seed(seed)
        source = Llama(source_config)
        idx = torch.randint(0, 1024, (4, 64))
        with torch.no_grad():
            before = source(idx)
            for name, operator in zip(
                changes,
                (
                    ZeroWidth(),
                    ZeroWidth("rescaled"),
                    RandomWidth(ramp_steps=10),
                    RandomWidth(ramp_steps=10, variant="joint"),
                ),
            ):
                changes[name].append(max_error(operator.grow(source, target)(idx), before))
    print({name: [round(v, 4) for v in values] for name, values in changes.items()})
    assert all(0.4 < v < 0.6 for v in changes["zero_width published"])
    assert all(0.01 < v < 0.025 for v in changes["zero_width rescaled"] + changes["random_width published"])
    assert all(v < 1e-5 for v in changes["random_width joint"])
