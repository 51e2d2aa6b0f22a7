"""
Sophia-G in your own training loop: a complete, runnable example (CPU, ~15 s).

    python examples/custom_loop.py                  # 200 steps of a 2-block GPT on a noisy repeating token stream
    python examples/custom_loop.py --iters=20 --hess_batch_size=16

The part to copy into your own loop sits between the `# --- core: start` and `# --- core: end` lines (README.md
shows the same block, and a test keeps the two equal). It gets right what is easy to get silently wrong:
  - bs = the tokens (predictions) behind one optimizer step's gradient: batch x sequence length x
    gradient-accumulation steps (x processes under DDP), not the upstream default 5120 or a count of batches;
  - the Hessian pass draws its batch from its own stream, never next(train_batches) (that would spend 11
    steps' worth of training data every 10 steps), and backpropagates the loss against labels sampled from the
    model's own logits (gnb_loss), never the true labels;
  - a Hessian batch smaller than bs is rescaled by sqrt(hess_tokens / bs), train.py's rule, so that bs·h
    stays an unbiased curvature estimate;
  - both gradients, the training one and the Hessian pass's, are clipped to norm 1 (as upstream and train.py).
Everything outside the core (the model, the data, the settings) stands in for your own.
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repo root, where sophia.py lives

parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
parser.add_argument("--iters", type=int, default=200, help="optimizer steps (max_iters)")
parser.add_argument("--batch_size", type=int, default=8, help="sequences per micro-batch")
parser.add_argument("--grad_accum", type=int, default=2, help="micro-batches per optimizer step")
parser.add_argument("--hess_batch_size", type=int, default=4, help="sequences in each Hessian pass")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
max_iters, grad_accum, seed = args.iters, args.grad_accum, args.seed
vocab_size, block_size, lr = 64, 64, 3e-3
torch.manual_seed(seed)
torch.set_num_threads(1)   # a model this small gains nothing from more threads, and they crawl on a busy machine


class Block(nn.Module):
    """Pre-norm causal self-attention + MLP, as in GPT-2."""

    def __init__(self, d, n_head):
        super().__init__()
        self.n_head, self.ln1, self.ln2 = n_head, nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size, block_size, d=64, n_head=4, n_layer=2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, d), nn.Embedding(block_size, d)
        self.blocks = nn.Sequential(*[Block(d, n_head) for _ in range(n_layer)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab_size, bias=False)

    def forward(self, idx):                                  # (B, T) token ids -> (B, T, vocab) logits
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1), device=idx.device))
        return self.head(self.ln(self.blocks(x)))


def token_batches(seed, batch_size, noise=0.1):
    """An endless stream of (x, y) batches: windows of one fixed cycle through the vocabulary (the same for
    every stream), each token replaced by a random one with probability `noise`; y is x shifted by one."""
    cycle = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, vocab_size, (batch_size, 1), generator=gen)
        seq = cycle[(start + torch.arange(block_size + 1)) % vocab_size]
        flip = torch.rand(seq.shape, generator=gen) < noise
        seq = torch.where(flip, torch.randint(0, vocab_size, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


# What the core expects: a model returning logits, two independent batch streams, max_iters, lr and a seed.
model = TinyGPT(vocab_size, block_size)
train_batches = token_batches(seed=seed + 1, batch_size=args.batch_size)
hess_batches = token_batches(seed=seed + 2, batch_size=args.hess_batch_size)   # its own stream and seed

# --- core: start
from sophia import SophiaG, decay_groups, gnb_loss

# decoupled weight decay on the Linear (matmul) weights only; none on embeddings, LayerNorms and biases
optimizer = SophiaG(decay_groups(model, weight_decay=0.1),
                    lr=lr, betas=(0.965, 0.99), rho=0.05)
hess_interval, grad_clip = 10, 1.0
label_gen = torch.Generator().manual_seed(seed)              # draws the GNB labels
losses, clipped = [], 0                                      # logging: loss per step, steps with clipped grads

for it in range(max_iters):
    for group in optimizer.param_groups:                     # cosine decay to lr / 10
        group["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * it / max_iters))
    bs, loss_sum = 0, 0.0
    for _ in range(grad_accum):
        x, y = next(train_batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        (loss / grad_accum).backward()                       # the step's gradient: mean over micro-batches
        loss_sum += loss.item() / grad_accum
        bs += y.numel()                                      # tokens behind the gradient (x world size in DDP)
    clipped += torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip).item() > grad_clip
    optimizer.step(bs=bs)
    optimizer.zero_grad(set_to_none=True)
    losses.append(loss_sum)

    if it % hess_interval == hess_interval - 1:              # after steps 9, 19, 29, ... as upstream and train.py
        x_h, _ = next(hess_batches)                          # a fresh batch from its own stream; labels unused
        # ĝ, the gradient of a mean loss over N tokens, has E[ĝ⊙ĝ] = diag(GN)/N, and step() divides m by ρ·bs·h:
        # scaling ĝ by sqrt(N/bs) makes E[ĥ] = diag(GN)/bs, so bs·h estimates diag(GN) whatever N is (train.py's
        # rule: sqrt(hess_total_bs / total_bs) / n_micro, the 1/n_micro averaging a pass split in micro-batches)
        hess_scale = math.sqrt(x_h.numel() / bs)
        logits = model(x_h)                                  # FULL logits of every position
        (gnb_loss(logits, generator=label_gen) * hess_scale).backward()   # CE against labels drawn from logits
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)   # clipped like the training gradient
        optimizer.update_hessian()                           # h ← β2·h + (1 − β2)·ĝ⊙ĝ
        optimizer.zero_grad(set_to_none=True)
        stats = optimizer.stats(bs=bs)                       # win_rate: share of coordinates not clipped
        print(f"iter {it}: loss {loss_sum:.4f}, bs {bs}, hessian scale {hess_scale:.4f}, "
              f"win_rate {stats['win_rate']:.4f}, hessian_norm {stats['hessian_norm']:.4e}")
# --- core: end

stats = optimizer.stats(bs=bs)
print(f"final: win_rate {stats['win_rate']:.4f}, hessian_norm {stats['hessian_norm']:.4e}, "
      f"hessian_norm2 {stats['hessian_norm2']:.4e}, momentum_norm {stats['momentum_norm']:.4e}, "
      f"grad clip rate {clipped / max_iters:.3f}")
print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
