"""
GPT-2 language model, written to be read top to bottom.

Architecture as OpenAI GPT-2 / HF GPT2LMHeadModel (and nanoGPT): token + learned position
embeddings, pre-LayerNorm transformer blocks, causal self-attention, tanh-GELU MLP (4x wide),
final LayerNorm, and an output head tied to the token embedding. Parameter names follow GPT-2
(transformer.wte / wpe / h.N.ln_1 / attn.c_attn / attn.c_proj / ln_2 / mlp.c_fc / mlp.c_proj / ln_f,
lm_head) so state dicts line up name for name.

phi-1-style switches (Gunasekar et al. 2023, "Textbooks Are All You Need"; HF PhiForCausalLM), all off by
default so that GPT-2 stays exactly GPT-2 (its state dicts, init and numbers are unchanged):
  parallel_block   x + attn(ln_1(x)) + mlp(ln_1(x)): attention and MLP read the same LayerNorm, one per block
  rotary_dim > 0   no learned position embedding (no wpe); rotary embeddings on the first rotary_dim channels of
                   each head's q and k, GPT-NeoX "rotate-half" layout, base 10000
  tie_embeddings   False: lm_head is its own matrix, with a bias when bias=True (phi-1's head has one)
phi-1-small is GPTConfig(n_layer=20, n_head=16, n_embd=1024, block_size=2048, rotary_dim=32, parallel_block=True,
tie_embeddings=False, bias=True); see config/parts/phi1_small.py.

The model knows nothing about DDP, optimizers or training; it only offers the pieces a training
loop needs: forward(idx, targets) -> (logits, loss), optimizer parameter groups, parameter and
FLOP counts, MFU, and sampling.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

import devices
from sophia import decay_groups

# GPT-2 sizes as (n_layer, n_head, n_embd). Parameter counts are HF GPT-2's (vocab 50257, biases on,
# block 1024, wpe included): 124,439,808 / 354,823,168 / 774,030,080 / 1,557,611,200.
GPT_SIZES = {
    "gpt2": (12, 12, 768),  # 124M, "small"
    "gpt2-medium": (24, 16, 1024),  # 355M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1.5B
}


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum context length (number of learned positions)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64: faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # applied to embeddings, attention probabilities and residual branches
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 had them; slightly faster without)
    # HF GPT-2 option used by upstream Sophia's GPT-2 runs: attention logits of layer i (from 0)
    # are further divided by (i + 1), for training stability of deeper models.
    scale_attn_by_inverse_layer_idx: bool = False
    # phi-1-style switches (see the module docstring); the defaults are GPT-2
    parallel_block: bool = False  # x + attn(ln_1(x)) + mlp(ln_1(x)), one LayerNorm per block
    rotary_dim: int = 0  # 0: learned positions (wpe); > 0: rotary on this many channels of each head, no wpe
    tie_embeddings: bool = True  # False: an untied lm_head, with a bias when bias=True

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"each head gets n_embd // n_head channels; pick n_embd as a multiple of n_head"
            )
        is_number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        if not is_number or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("bias", "scale_attn_by_inverse_layer_idx", "parallel_block", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        head_dim = self.n_embd // self.n_head
        rotary = self.rotary_dim
        if isinstance(rotary, bool) or not isinstance(rotary, int) or not 0 <= rotary <= head_dim or rotary % 2:
            raise ValueError(f"GPTConfig.rotary_dim must be an even integer in [0, head_dim={head_dim}] "
                             f"(0: learned positions), got {rotary!r}")


ROPE_BASE = 10000.0  # rotary frequencies theta_i = ROPE_BASE^(-2i / rotary_dim), as GPT-NeoX and phi-1


def rotary_tables(rotary_dim, length):
    """cos and sin tables, (length, rotary_dim) in fp32, for positions 0..length-1 in rotate-half layout: channel j
    and j + rotary_dim/2 form one pair, both turned by the angle t * theta_(j mod rotary_dim/2)."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, rotary_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate the first cos.size(-1) channels of x (B, H, T, head_dim) by position; the rest pass through.
    With x1, x2 the two halves of the rotated part: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), so that
    q_s . k_t depends on s - t only (a rotation by angle s*theta against one by t*theta)."""
    r = cos.size(-1)
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2 :]
    rotated = torch.cat((-x2, x1), dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables are fp32 buffers; q, k may be bf16 under autocast
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key, value projections for all heads in one matmul, then the output projection
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # softmax(q k^T * scale) with scale = 1/sqrt(head_dim), divided by (layer_idx + 1) when
        # scale_attn_by_inverse_layer_idx (dividing the attention *output* instead is not equivalent).
        # q is divided by (layer_idx + 1) from a buffer: as a Python float the factor would differ per block,
        # and torch.compile of each block (FSDP) would then recompile per layer, up to its limit of 8, and run
        # the rest eagerly. A tensor is a graph input, so every block shares one graph. It holds a small integer,
        # exact in every dtype the model may be cast to; it is not saved in state dicts.
        head_dim = config.n_embd // config.n_head
        self.scale = 1.0 / math.sqrt(head_dim)
        self.scale_by_layer = config.scale_attn_by_inverse_layer_idx
        self.register_buffer("layer_number", torch.tensor(float(layer_idx + 1)), persistent=False)

    def forward(self, x, rope=None):
        B, T, C = x.size()  # batch, sequence length, embedding dim
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.scale_by_layer:
            q = q / self.layer_number
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:  # rotary_dim > 0: positions enter here, as rotations of q and k
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # fused kernel (flash / memory-efficient on GPU) for softmax(q k^T * scale + causal mask) v; with no mask
        # tensor and is_causal=True, a bf16/fp16 CUDA run at any length (2048 for phi-1) gets FlashAttention
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True, scale=self.scale
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU, not the exact erf form
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
    parallel_block (phi-1, GPT-J): x + attn(ln_1(x)) + mlp(ln_1(x)), one LayerNorm and no ln_2."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.parallel = config.parallel_block
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        if not self.parallel:
            self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None):
        if self.parallel:
            h = self.ln_1(x)
            return x + self.attn(h, rope) + self.mlp(h)
        x = x + self.attn(self.ln_1(x), rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.rotary_dim == 0:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer_idx) for layer_idx in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(modules)
        # a tied head has no bias (GPT-2); phi-1's untied head has one
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias and not config.tie_embeddings)
        if config.tie_embeddings:
            # weight tying: the output head reuses the token embedding matrix (one tensor, two roles)
            self.transformer.wte.weight = self.lm_head.weight
        if config.rotary_dim:
            # computed, not learned: kept out of state dicts (persistent=False), rebuilt from the config
            cos, sin = rotary_tables(config.rotary_dim, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

        # GPT-2 init: N(0, 0.02) for Linear and Embedding weights, zero biases, LayerNorm (1, 0);
        # residual projections get std 0.02/sqrt(2*n_layer) so the residual stream's variance does
        # not grow with depth (2 residual additions per block).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, *, last_only=False):
        """
        idx: (B, T) token ids, T <= block_size. targets: (B, T) next-token ids or None; -1 = ignore.
        Returns (logits, loss):
          targets given    -> full logits (B, T, V), mean cross-entropy (computed in fp32)
          targets None     -> full logits (B, T, V), None  (the Sophia-G Hessian pass needs all positions)
          last_only=True   -> logits of the last position only (B, 1, V), None  (for generation)
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, sequence), got shape {tuple(idx.shape)}")
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds the model's block_size {self.config.block_size}; "
                f"crop the input to the last {self.config.block_size} tokens or use a model with a larger block_size"
            )
        if targets is not None:
            if not torch.is_tensor(targets):
                raise TypeError(
                    f"targets must be a (batch, sequence) tensor of token ids or None, got {type(targets).__name__}; "
                    f"pass targets=None for full logits without a loss"
                )
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
            if last_only:
                raise ValueError("last_only=True returns no loss; call it with targets=None")

        if self.config.rotary_dim:
            x = self.transformer.drop(self.transformer.wte(idx))  # (B, T, C); positions are rotations in attention
            rope = (self.rope_cos[:T], self.rope_sin[:T])
            for block in self.transformer.h:
                x = block(x, rope)
        else:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
            for block in self.transformer.h:
                x = block(x)
        x = self.transformer.ln_f(x)

        if last_only:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, V): skip the head on the other positions
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        # cross-entropy in fp32: under bf16 autocast the log-softmax over 50k classes loses precision
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Number of parameters; the tied wte/lm_head matrix counts once. With non_embedding=True the
        position embedding is left out (as in nanoGPT); wte stays in because it is also the output layer
        (untied, as phi-1, it is left out too: it is a lookup, the head is the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return n

    def param_groups(self, weight_decay):
        """Optimizer parameter groups with upstream Sophia's decay rule (decay_groups): weight decay on nn.Linear
        weights only; none on biases, LayerNorm weights and embeddings (wte, which is also lm_head.weight, and
        wpe). An untied lm_head (phi-1) is a Linear: its weight decays, its bias does not."""
        return decay_groups(self, weight_decay)

    def flops_per_token(self):
        """Training FLOPs (forward + backward) per token, PaLM appendix B: 6N + 12*L*H*Q*T, where
        N = non-embedding params, L layers, H heads, Q head dim, T = block_size. 6N covers the matmuls
        with weights (2 forward + 4 backward per parameter); 12*L*H*Q*T covers q k^T and att v."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * L * H * Q * T

    def estimate_mfu(self, tokens_per_second, device):
        """Model FLOPs utilization: flops_per_token * tokens/s over the device's bf16 dense peak.
        Pass the tokens/s of one device (under DDP: global tokens/s / world size).
        Returns a fraction (0.4 = 40%), or None when the device's peak is unknown (CPU, unlisted GPU)."""
        peak = devices.peak_flops(device)
        if peak is None:
            return None
        return self.flops_per_token() * tokens_per_second / peak

    def crop_block_size(self, block_size):
        """Shrink the context length (e.g. to fine-tune or sample a long-context checkpoint with a
        shorter one) by keeping the first block_size position embeddings."""
        if not isinstance(block_size, int) or not 1 <= block_size <= self.config.block_size:
            raise ValueError(
                f"block_size must be an integer in [1, {self.config.block_size}] (the current one), got {block_size!r}"
            )
        self.config.block_size = block_size
        if self.config.rotary_dim:  # rotary tables cover any length: keep the first block_size rows
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]
            return
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """
        Extend idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).
        The context is cropped to the last block_size tokens. temperature scales the logits
        (0 = greedy argmax); top_k keeps only the k most likely tokens. Pass a seeded
        torch.Generator (on idx's device) for reproducible samples. Call model.eval() first.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond, last_only=True)
            logits = logits[:, -1, :].float()  # (B, V)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth_largest = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth_largest, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
