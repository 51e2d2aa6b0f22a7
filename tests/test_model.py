"""The model: shapes, GPT-2 parameter counts and FLOPs, init, attention paths, generation, dropout, cropping."""
import math

import pytest
import torch
from torch.nn import functional as F

import devices
from model import GPT, GPT_SIZES, GPTConfig


def tiny_config(**overrides):
    cfg = dict(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=37, dropout=0.0, bias=True)
    cfg.update(overrides)
    return GPTConfig(**cfg)


def tiny_model(seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).to(dtype).eval()


def random_tokens(config, batch=2, length=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(config.vocab_size, (batch, length or config.block_size), generator=g)


# ---------------------------------------------------------------------------------------------
# configuration and parameter counts


@pytest.mark.parametrize(
    "size, hf_count",
    [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080)],
)
def test_param_counts_match_hf_gpt2(size, hf_count):
    n_layer, n_head, n_embd = GPT_SIZES[size]
    config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50257, bias=True, block_size=1024)
    with torch.device("meta"):  # shapes only, no memory, instant
        model = GPT(config)
    assert model.num_params(non_embedding=False) == hf_count
    assert model.num_params(non_embedding=True) == hf_count - 1024 * n_embd  # minus wpe


def test_config_defaults_are_gpt2_small_padded():
    cfg = GPTConfig()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == GPT_SIZES["gpt2"]
    assert (cfg.block_size, cfg.vocab_size, cfg.dropout, cfg.bias) == (1024, 50304, 0.0, False)
    assert cfg.vocab_size % 64 == 0 and cfg.scale_attn_by_inverse_layer_idx is False


@pytest.mark.parametrize(
    "overrides, culprit",
    [
        (dict(n_embd=10, n_head=3), "n_embd"),
        (dict(n_layer=0), "n_layer"),
        (dict(block_size=-4), "block_size"),
        (dict(vocab_size=3.5), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(bias="no"), "bias"),
    ],
)
def test_config_validation(overrides, culprit):
    with pytest.raises(ValueError, match=culprit):
        tiny_config(**overrides)


# ---------------------------------------------------------------------------------------------
# attention


def reference_attention(attn, x, scale):
    """Masked-softmax attention written out by hand: softmax(q k^T * scale + causal mask) v."""
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) * scale
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    y = y.transpose(1, 2).reshape(B, T, C)
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


@pytest.mark.parametrize("inverse_layer_scaling", [False, True])
def test_attention_matches_masked_softmax_reference(inverse_layer_scaling):
    model = tiny_model(dtype=torch.float64, scale_attn_by_inverse_layer_idx=inverse_layer_scaling)
    # larger weights make the softmax peaky, so a wrong scale cannot hide inside the tolerance
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10.0)
    head_dim = model.config.n_embd // model.config.n_head
    x = torch.randn(2, 8, model.config.n_embd, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for layer_idx, block in enumerate(model.transformer.h):
        plain_scale = 1.0 / math.sqrt(head_dim)
        layer_scale = plain_scale / (layer_idx + 1)
        scale, other_scale = (layer_scale, plain_scale) if inverse_layer_scaling else (plain_scale, layer_scale)
        torch.testing.assert_close(block.attn(x), reference_attention(block.attn, x, scale), rtol=1e-10, atol=1e-12)
        if layer_idx > 0:  # the layer factor matters: the other scale gives a clearly different answer
            assert (block.attn(x) - reference_attention(block.attn, x, other_scale)).abs().max() > 1e-3


def test_block_is_pre_ln_with_tanh_gelu_mlp():
    model = tiny_model(dtype=torch.float64)
    block = model.transformer.h[0]
    x = 3 * torch.randn(2, 8, model.config.n_embd, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def mlp_reference(h):
        hidden = h @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        # GPT-2's GELU: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
        gelu = 0.5 * hidden * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden**3)))
        return gelu @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias

    after_attn = x + block.attn(block.ln_1(x))
    expected = after_attn + mlp_reference(block.ln_2(after_attn))
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-12)


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    idx = random_tokens(model.config, batch=1)
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % model.config.vocab_size
    logits, _ = model(idx)
    logits_changed, _ = model(changed)
    torch.testing.assert_close(logits[:, :5], logits_changed[:, :5], rtol=0, atol=0)
    assert (logits[:, 5:] - logits_changed[:, 5:]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# forward contract


def test_loss_is_cross_entropy_of_returned_logits():
    model = tiny_model()
    idx = random_tokens(model.config)
    targets = random_tokens(model.config, seed=2)
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 8, model.config.vocab_size)
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert loss.dtype == torch.float32
    # an untrained model is near uniform: loss ~ log(vocab)
    assert abs(loss.item() - math.log(model.config.vocab_size)) < 0.5


def test_loss_is_computed_in_fp32_for_low_precision_logits():
    model = tiny_model(dtype=torch.bfloat16)
    idx = random_tokens(model.config)
    targets = random_tokens(model.config, seed=2)
    logits, loss = model(idx, targets)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    expected = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_ignore_index_minus_one_skips_positions():
    model = tiny_model()
    idx = random_tokens(model.config)
    targets = random_tokens(model.config, seed=2)
    masked = targets.clone()
    masked[:, :3] = -1
    logits, loss = model(idx, masked)
    expected = F.cross_entropy(logits[:, 3:].reshape(-1, logits.size(-1)), targets[:, 3:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    _, unmasked_loss = model(idx, targets)
    assert not torch.isclose(loss, unmasked_loss)


def test_without_targets_full_logits_and_last_only():
    model = tiny_model()
    idx = random_tokens(model.config, length=5)
    logits, loss = model(idx)
    assert loss is None and logits.shape == (2, 5, model.config.vocab_size)
    with_targets, _ = model(idx, idx)
    torch.testing.assert_close(logits, with_targets)
    last, loss = model(idx, last_only=True)
    assert loss is None and last.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(last, logits[:, -1:])


def test_forward_rejects_bad_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(8, dtype=torch.long))
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="targets shape"):
        model(idx, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="targets=None"):
        model(idx, 0)
    with pytest.raises(ValueError, match="last_only"):
        model(idx, idx, last_only=True)


# ---------------------------------------------------------------------------------------------
# weights: tying, init, parameter groups


def test_weight_tying_shares_one_tensor():
    model = tiny_model()
    assert model.transformer.wte.weight is model.lm_head.weight
    names = [name for name, _ in model.named_parameters()]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    n_layer = 4
    model = GPT(GPTConfig(n_layer=n_layer, n_head=4, n_embd=128, block_size=64, vocab_size=512, bias=True))
    c_proj = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
    others = torch.cat(
        [p.flatten() for n, p in model.named_parameters() if n.endswith("weight") and not ("ln" in n or "c_proj" in n)]
    )
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    assert abs(c_proj.std().item() - residual_std) < 0.05 * residual_std
    assert abs(others.std().item() - 0.02) < 0.05 * 0.02
    assert abs(c_proj.mean().item()) < 1e-3 and abs(others.mean().item()) < 1e-3
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif "ln" in name:
            assert torch.all(p == 1), name


@pytest.mark.parametrize("bias", [True, False])
def test_param_groups_decay_exactly_the_linear_weights(bias):
    model = tiny_model(bias=bias)
    decay_group, no_decay_group = model.param_groups(weight_decay=0.2)
    assert decay_group["weight_decay"] == 0.2 and no_decay_group["weight_decay"] == 0.0
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay_names = [name_of[id(p)] for p in decay_group["params"]]
    no_decay_names = [name_of[id(p)] for p in no_decay_group["params"]]
    expected_decay = [
        f"transformer.h.{i}.{layer}.weight"
        for i in range(model.config.n_layer)
        for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert decay_names == expected_decay  # also fixes the order: named_parameters() order
    assert "transformer.wte.weight" in no_decay_names and "transformer.wpe.weight" in no_decay_names
    # every parameter exactly once, and the groups work with a real optimizer
    all_params = decay_group["params"] + no_decay_group["params"]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))
    torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU


def test_flops_per_token_by_hand():
    model = tiny_model()
    # parameters without wpe: wte 37*16; per layer: ln_1 2*16, c_attn 16*48 + 48, c_proj 16*16 + 16,
    # ln_2 2*16, c_fc 16*64 + 64, mlp.c_proj 64*16 + 16; then ln_f 2*16
    per_layer = 32 + (768 + 48) + (256 + 16) + 32 + (1024 + 64) + (1024 + 16)
    n = 37 * 16 + 3 * per_layer + 32
    assert model.num_params() == n
    L, H, Q, T = 3, 2, 8, 8
    assert model.flops_per_token() == 6 * n + 12 * L * H * Q * T


def test_gpt2_small_flops_per_token():
    with torch.device("meta"):
        model = GPT(GPTConfig())
    # 6 * 123,587,328 + 12 * 12 * 12 * 64 * 1024 = 854.77 MFLOP per token (nanoGPT's figure)
    assert model.flops_per_token() == 854_770_176


def test_estimate_mfu_arithmetic(monkeypatch):
    assert tiny_model().estimate_mfu(1e6, "cpu") is None       # no peak known for a CPU: no MFU
    monkeypatch.setattr(devices, "peak_flops", lambda device: 312e12)
    with torch.device("meta"):
        model = GPT(GPTConfig())
    tokens_per_second = 100_000.0
    assert model.estimate_mfu(tokens_per_second, "cuda") == pytest.approx(854_770_176 * 1e5 / 312e12)


# ---------------------------------------------------------------------------------------------
# generation, dropout, cropping


def test_generate_shape_and_seeded_determinism():
    model = tiny_model()
    prompt = random_tokens(model.config, batch=2, length=3)
    # 12 new tokens > block_size 8: the context must be cropped to the last 8 tokens
    out1 = model.generate(prompt, 12, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    out2 = model.generate(prompt, 12, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(7))
    assert out1.shape == (2, 15)
    assert torch.equal(out1[:, :3], prompt) and torch.equal(out1, out2)
    assert out1.min() >= 0 and out1.max() < model.config.vocab_size


def test_generate_top_k_one_and_temperature_zero_are_greedy():
    model = tiny_model()
    prompt = random_tokens(model.config, batch=1, length=2)
    greedy = model.generate(prompt, 4, temperature=0.0)
    top1 = model.generate(prompt, 4, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    idx = prompt
    for _ in range(4):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, idx)


def test_dropout_active_in_train_mode_only():
    model = tiny_model(dropout=0.3)
    idx = random_tokens(model.config)
    model.train()
    a, _ = model(idx)
    b, _ = model(idx)
    assert (a - b).abs().max() > 1e-4
    model.eval()
    c, _ = model(idx)
    d, _ = model(idx)
    assert torch.equal(c, d)


@pytest.mark.parametrize("site", ["embedding", "attention_probs", "attention_out", "mlp_out"])
def test_each_dropout_site_is_wired(site):
    model = tiny_model(dropout=0.3)
    for block in model.transformer.h:  # switch every site off, then one back on
        block.attn.dropout = 0.0
        block.attn.resid_dropout.p = block.mlp.dropout.p = 0.0
    model.transformer.drop.p = 0.0
    if site == "embedding":
        model.transformer.drop.p = 0.3
    for block in model.transformer.h:
        if site == "attention_probs":
            block.attn.dropout = 0.3
        elif site == "attention_out":
            block.attn.resid_dropout.p = 0.3
        elif site == "mlp_out":
            block.mlp.dropout.p = 0.3
    model.train()
    idx = random_tokens(model.config)
    a, _ = model(idx)
    b, _ = model(idx)
    assert (a - b).abs().max() > 1e-4


def test_crop_block_size_keeps_first_positions():
    model = tiny_model()
    idx = random_tokens(model.config, length=4)
    before, _ = model(idx)
    wpe_before = model.transformer.wpe.weight[:4].clone()
    model.crop_block_size(4)
    assert model.config.block_size == 4 and model.transformer.wpe.weight.shape == (4, 16)
    torch.testing.assert_close(model.transformer.wpe.weight, wpe_before)
    after, _ = model(idx)
    torch.testing.assert_close(after, before)
    with pytest.raises(ValueError, match="block_size"):
        model(random_tokens(model.config, length=5))
    with pytest.raises(ValueError, match="block_size"):
        model.crop_block_size(8)


def test_backward_reaches_every_parameter():
    model = tiny_model()
    model.train()
    idx = random_tokens(model.config)
    _, loss = model(idx, random_tokens(model.config, seed=2))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_per_block_compile_shares_one_graph_across_layers():
    """Under FSDP each block is compiled on its own. With scale_attn_by_inverse_layer_idx the blocks differ only
    in their layer factor; were it a Python float, dynamo would guard on it and recompile per layer (and stop at
    its recompile limit of 8, running the rest eagerly). It is a buffer, so 12 blocks compile one graph forward
    (and one backward), and the model still computes what the uncompiled one does."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    config = GPTConfig(n_layer=12, n_head=2, n_embd=16, block_size=8, vocab_size=64,
                       scale_attn_by_inverse_layer_idx=True)
    torch.manual_seed(0)
    model = GPT(config)
    reference = GPT(config)
    reference.load_state_dict(model.state_dict())
    counter = CompileCounter()                 # a backend that counts the graphs it is given and runs them as is
    for block in model.transformer.h:
        block.compile(backend=counter)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        _, loss = model(idx, idx)
        loss.backward()
    assert counter.frame_count == 1            # one compiled graph for all 12 blocks: no recompiles
    _, expected = reference(idx, idx)
    torch.testing.assert_close(loss, expected)
    torch._dynamo.reset()
