"""The phi-1-style switches of model.py (parallel_block, rotary_dim, tie_embeddings): rotary properties, parity with
transformers' PhiForCausalLM, the phi-1-small size, and training the tiny phi config through train.py."""
import math

import pytest
import torch

import model as model_module
from model import GPT, GPTConfig, apply_rotary, rotary_tables


def phi_config(**overrides):
    cfg = dict(n_layer=2, n_head=4, n_embd=64, block_size=16, vocab_size=97, bias=True, parallel_block=True,
               rotary_dim=8, tie_embeddings=False)
    cfg.update(overrides)
    return GPTConfig(**cfg)


# ---------------------------------------------------------------------------------------------
# rotary embeddings


def test_rotary_scores_depend_only_on_relative_position():
    """q_s . k_t after rotation is a function of s - t: shifting both positions by c changes nothing, while the
    score itself does change with s - t (so the check is not vacuous)."""
    g = torch.Generator().manual_seed(0)
    head_dim, rotary_dim, length = 16, 8, 40
    q, k = torch.randn(head_dim, generator=g, dtype=torch.float64), torch.randn(head_dim, generator=g,
                                                                                 dtype=torch.float64)
    cos, sin = (t.double() for t in rotary_tables(rotary_dim, length))
    # the same q (and k) content at every position: (1, 1, length, head_dim)
    qs = apply_rotary(q.expand(1, 1, length, head_dim), cos, sin)[0, 0]
    ks = apply_rotary(k.expand(1, 1, length, head_dim), cos, sin)[0, 0]
    scores = qs @ ks.T                                  # scores[s, t] = rot_s(q) . rot_t(k)
    for shift in (1, 7, 23):
        for s, t in [(0, 0), (5, 2), (3, 9), (10, 0)]:
            assert scores[s + shift, t + shift] == pytest.approx(scores[s, t].item(), abs=1e-5)  # fp32 tables
    assert abs(scores[5, 2] - scores[5, 4]) > 1e-3      # a different offset gives a different score


def test_rotary_rotates_first_channels_as_rotate_half_pairs():
    """Channels j and j + r/2 (j < r/2) form a pair turned by angle t * 10000^(-2j/r); channels >= r pass through;
    norms are kept. Written out for one position, against the formula."""
    head_dim, r, t = 12, 8, 5
    x = torch.arange(1.0, head_dim + 1, dtype=torch.float64).view(1, 1, 1, head_dim).expand(1, 1, t + 1, head_dim)
    cos, sin = (a.double() for a in rotary_tables(r, t + 1))
    y = apply_rotary(x, cos, sin)[0, 0, t]
    x = x[0, 0, t]
    for j in range(r // 2):
        angle = t * 10000.0 ** (-2 * j / r)
        a, b = x[j].item(), x[j + r // 2].item()
        assert y[j].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-5)  # fp32 tables
        assert y[j + r // 2].item() == pytest.approx(b * math.cos(angle) + a * math.sin(angle), abs=1e-5)  # fp32 tables
    assert torch.equal(y[r:], x[r:])
    assert y.norm().item() == pytest.approx(x.norm().item(), rel=1e-6)


def test_phi_switches_shape_the_model():
    model = GPT(phi_config())
    names = dict(model.named_parameters())
    assert "transformer.wpe.weight" not in names                      # no learned positions
    assert not any(".ln_2." in n for n in names)                      # one LayerNorm per block
    assert "lm_head.bias" in names and model.lm_head.weight is not model.transformer.wte.weight
    assert "rope_cos" not in model.state_dict()                       # computed tables are not saved
    decayed = {id(p) for p in model.param_groups(0.1)[0]["params"]}
    assert id(model.lm_head.weight) in decayed and id(model.transformer.wte.weight) not in decayed
    assert id(model.lm_head.bias) not in decayed


@pytest.mark.parametrize("overrides", [dict(rotary_dim=3), dict(rotary_dim=18), dict(rotary_dim=True),
                                       dict(parallel_block=1), dict(tie_embeddings="no")])
def test_phi_switch_validation(overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        phi_config(**overrides)


# ---------------------------------------------------------------------------------------------
# parity with transformers' PhiForCausalLM


def hf_phi(cfg):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.PhiConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd,
                                    num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                                    max_position_embeddings=cfg.block_size, hidden_act="gelu_new",
                                    partial_rotary_factor=cfg.rotary_dim / (cfg.n_embd // cfg.n_head),
                                    resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, layer_norm_eps=1e-5,
                                    tie_word_embeddings=False)
    hf_cfg._attn_implementation = "eager"   # the plain softmax reference
    return transformers.PhiForCausalLM(hf_cfg)


def copy_phi_weights(hf, ours):
    """PhiForCausalLM's state dict in our names: q, k, v projections concatenated into c_attn."""
    src = hf.state_dict()
    out = {"transformer.wte.weight": src["model.embed_tokens.weight"],
           "transformer.ln_f.weight": src["model.final_layernorm.weight"],
           "transformer.ln_f.bias": src["model.final_layernorm.bias"],
           "lm_head.weight": src["lm_head.weight"], "lm_head.bias": src["lm_head.bias"]}
    for i in range(ours.config.n_layer):
        p, q = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            out[q + f"ln_1.{kind}"] = src[p + f"input_layernorm.{kind}"]
            out[q + f"attn.c_attn.{kind}"] = torch.cat([src[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[q + f"attn.c_proj.{kind}"] = src[p + f"self_attn.dense.{kind}"]
            out[q + f"mlp.c_fc.{kind}"] = src[p + f"mlp.fc1.{kind}"]
            out[q + f"mlp.c_proj.{kind}"] = src[p + f"mlp.fc2.{kind}"]
    ours.load_state_dict(out)    # strict: every parameter of ours is set, no name left over


def parity_pair():
    cfg = phi_config()
    torch.manual_seed(0)
    hf = hf_phi(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layernorm" in name:   # HF inits them to 0 (LayerNorm weight 1): perturb
                p.add_(torch.randn_like(p) * 0.1)
            if "q_proj.weight" in name or "k_proj.weight" in name:   # sharp attention, so that positions matter
                p.normal_(0.0, 0.2)
    ours = GPT(cfg).eval()
    copy_phi_weights(hf, ours)
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(1))
    return hf, ours, idx


def test_logits_match_transformers_phi(one_thread):
    hf, ours, idx = parity_pair()
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        logits, _ = ours(idx)
    assert (logits - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("layout", ["interleaved", "second_half"])
def test_parity_tells_rotary_layouts_apart(one_thread, monkeypatch, layout):
    """The parity check above fails for the two classic rotary mistakes: GPT-J's interleaved pairs (2j, 2j+1), and
    rotating the last rotary_dim channels of each head instead of the first."""
    def wrong(x, cos, sin):
        r = cos.size(-1)
        if layout == "second_half":
            flipped = torch.cat((x[..., -r:], x[..., :-r]), dim=-1)
            out = apply_rotary(flipped, cos, sin)
            return torch.cat((out[..., r:], out[..., :r]), dim=-1)
        pairs = x[..., :r].unflatten(-1, (r // 2, 2))
        c, s = cos[..., : r // 2].to(x.dtype)[..., None], sin[..., : r // 2].to(x.dtype)[..., None]
        turned = torch.stack((pairs[..., 0] * c[..., 0] - pairs[..., 1] * s[..., 0],
                              pairs[..., 1] * c[..., 0] + pairs[..., 0] * s[..., 0]), dim=-1).flatten(-2)
        return torch.cat((turned, x[..., r:]), dim=-1)

    hf, ours, idx = parity_pair()
    monkeypatch.setattr(model_module, "apply_rotary", wrong)
    with torch.no_grad():
        gap = (ours(idx)[0] - hf(input_ids=idx).logits).abs().max().item()
    assert gap > 1e-3


def test_phi1_small_param_count_equals_transformers_phi():
    cfg = GPTConfig(n_layer=20, n_head=16, n_embd=1024, block_size=2048, vocab_size=50304, bias=True,
                    parallel_block=True, rotary_dim=32, tie_embeddings=False)
    with torch.device("meta"):
        ours = GPT(cfg)
        hf = hf_phi(cfg)
    n_hf = sum(p.numel() for p in hf.parameters())
    assert ours.num_params(non_embedding=False) == n_hf
    assert n_hf == 20 * (4 * 1024 * 1025 + 2 * 1024 * 4096 + 4096 + 1024 + 2 * 1024) + 2 * 50304 * 1024 + 50304 \
        + 2 * 1024


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention needs a CUDA GPU")
def test_flash_attention_is_selected_at_2048_on_gpu():
    """Only the flash kernel allowed: SDPA raises if our attention call (no mask tensor, is_causal) cannot use it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cfg = GPTConfig(n_layer=2, n_head=16, n_embd=1024, block_size=2048, bias=True, parallel_block=True,
                    rotary_dim=32, tie_embeddings=False)
    model = GPT(cfg).cuda()
    idx = torch.randint(cfg.vocab_size, (1, 2048), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# through train.py (needs train.py's parallel_block / rotary_dim / tie_embeddings keys)


def test_phi1_small_configs_describe_phi1_small():
    import train
    for optimizer in ("sophiag", "adam"):
        cfg, _ = train.load_config(train.TrainConfig, [f"config/train_phi1_small_{optimizer}.py"])
        assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size) == (20, 1024, 16, 2048)
        assert (cfg.rotary_dim, cfg.parallel_block, cfg.tie_embeddings, cfg.bias) == (32, True, False, True)
        assert cfg.optimizer_name == {"sophiag": "sophiag", "adam": "adamw"}[optimizer]


def test_tiny_phi_trains_through_train_py(data_dir, tmp_path, one_thread):
    import checkpoint
    import train
    from helpers import events
    out = tmp_path / "phi"
    argv = ["config/train_phi1_tiny_sophiag.py", f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=30",
            "--lr_decay_iters=30", "--eval_interval=30", "--eval_sequences=16", "--log_interval=1"]
    train.main(argv)
    rows = events(out)
    first, last = rows[0]["train/loss"], sum(rows[i]["train/loss"] for i in range(25, 30)) / 5
    assert last < first - 0.5, (first, last)
    assert rows[29]["train/win_rate"] > 0                             # Sophia-G's Hessian was refreshed
    ckpt, _ = checkpoint.load_latest(str(out))
    assert {k: ckpt["model_args"][k] for k in ("parallel_block", "rotary_dim", "tie_embeddings")} == \
        dict(parallel_block=True, rotary_dim=16, tie_embeddings=False)
    assert "transformer.wpe.weight" not in ckpt["model"] and "lm_head.bias" in ckpt["model"]
