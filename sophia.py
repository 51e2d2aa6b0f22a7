"""
Sophia: a scalable stochastic second-order optimizer (Liu et al., arXiv 2305.14342).

Two optimizers share one update rule; they differ only in how the diagonal curvature estimate ĥ is made:

    SophiaG  Gauss-Newton-Bartlett (GNB): backprop the cross-entropy against labels sampled from the
             model's own softmax (see gnb_loss); ĥ = ĝ⊙ĝ is read from .grad by update_hessian().
    SophiaH  Hutchinson: ĥ = u⊙(∇²L·u) with a random probe u (see hutchinson_estimate).

Per coordinate, with g negated when maximize is set (identical to the upstream SophiaG code):

    step():            θ ← θ·(1 − lr·wd)                                   decoupled weight decay
                       m ← β1·m + (1 − β1)·g                               momentum, no bias correction
                       θ ← θ − lr·sign(m)·min(|m| / (ρ·bs·max(h, 0) + 1e-15), 1)
    update_hessian():  h ← β2·h + (1 − β2)·ĥ                               every k steps, no bias correction

hessian_bias_correction=True (an ablation; off by default, as upstream) uses ĥ_n = h / (1 − β2ⁿ) in place of h
in the step and in stats(), with n the refreshes of that parameter so far (state["hessian_step"]). Without it, h
after n refreshes is (1 − β2ⁿ)·E[ĥ]: (1 − β2)·E[ĥ] = 0.01·E[ĥ] after the first refresh with β2 = 0.99, so
the ratio m/(ρ·bs·h) is ~100x too large and nearly every coordinate clips until n ≈ 1/(1 − β2). With it, the
step after the first refresh is the step with h = ĥ. Before the first refresh (n = 0) h = 0 either way. A state
saved without the count (upstream's, or with the option off) is used as it is: its h is taken as already debiased.

`bs` is the number of predictions (tokens) behind the gradient of one optimizer step. GNB's ĝ is the
gradient of a *mean* loss over bs predictions, so E[ĝ⊙ĝ] = diag(Gauss-Newton)/bs and bs·h estimates the
curvature of the mean loss. Hutchinson already estimates the mean loss's Hessian, so SophiaH uses bs=1.
The max(h, 0) only matters for Hutchinson: a negative curvature estimate gives a denominator of 1e-15,
so the coordinate takes a clipped sign step of size lr, as the paper prescribes (clip(m / max(ρh, ε), 1)).
For GNB h ≥ 0 always, so the rule is exactly upstream's.

Three code paths compute the same step and are selected per call by keyword flags:
    single-tensor  a readable Python loop, the reference
    foreach        torch._foreach_* multi-tensor ops (fewer kernel launches; keeps one scratch buffer per
                   tensor between steps, as much memory as the parameters)
    fused          one torch.compile'd horizontal kernel over all tensors: reads p, g, m, h once, writes
                   p and m once, and allocates no temporaries
By default (foreach=None, fused=None) the fused path is used on CPU and CUDA once the parameters are large
enough to repay its one-time compilation (FUSED_MIN_NUMEL elements); otherwise foreach. If compilation
fails (e.g. no C++ compiler), the default falls back to foreach with a warning.

Distributed: under DDP every process holds the same gradients and takes the same step. DTensor parameters
(FSDP2's fully_shard, tensor parallel) are updated shard by shard, as the rule is elementwise; stats() then
sums over all shards, so every process must call it.

Mixed precision: for bf16/fp16 parameters exp_avg and hessian are kept in fp32 (fp32_state=True), because a
bf16 EMA with β2 = 0.99 stalls: (1 − β2)·ĥ falls below half an ulp of h and the update rounds away.
The step is computed in fp32 and written back to the parameter in its own dtype.

Complex parameters are optimized as pairs of real numbers (torch.view_as_real): the real and imaginary
parts each get their own momentum and curvature, ĥ = Re(g)² and Im(g)² (never upstream's g·g, whose real
part can be negative). A complex parameter follows exactly the trajectory of its view_as_real twin.
"""

import math
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.optim import Optimizer


EPS = 1e-15                  # added to the clipping denominator, as upstream (not the paper's max(·, 1e-12))
FUSED_MIN_NUMEL = 1 << 22    # ~4M parameters: below this the fused path's compile time is not repaid


class SophiaG(Optimizer):
    """Sophia with the Gauss-Newton-Bartlett estimator. Drop-in compatible with the upstream `SophiaG`.

    Args:
        params: parameters or param groups.
        lr: learning rate; the largest change of any coordinate in one step (before weight decay).
        betas: (β1, β2) for the momentum and Hessian EMAs.
        rho: clipping scale ρ. The update is m / (ρ·bs·h) clipped to [−1, 1], times lr.
        weight_decay: decoupled weight decay (θ ← θ·(1 − lr·wd)).
        maximize: maximize the objective instead of minimizing.
        capturable: keep `step` on the parameter's device and accept tensor `lr` / `bs`, so the step can be
            captured in a CUDA graph (no host sync). Works on every device.
        foreach, fused: choose the code path (None: automatic, see the module docstring).
        fp32_state: keep exp_avg and hessian in fp32 for bf16/fp16 parameters.
        hessian_bias_correction: divide h by 1 − β2ⁿ after n refreshes (see the module docstring); off as upstream.
    """

    default_bs = 5120        # step()'s default, used by stats() when no bs is given

    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=1e-1, *,
                 maximize=False, capturable=False, foreach=None, fused=None, fp32_state=True,
                 hessian_bias_correction=False):
        if isinstance(lr, torch.Tensor):
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be a single element")
        elif not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= rho:
            raise ValueError(f"Invalid rho parameter: {rho}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if foreach and fused:
            raise ValueError("foreach and fused cannot both be True")
        defaults = dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, fused=fused, fp32_state=fp32_state,
                        hessian_bias_correction=hessian_bias_correction)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        # state dicts saved by the upstream code lack our extra options, and may hold a float `step`
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("capturable", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("fp32_state", True)
            group.setdefault("hessian_bias_correction", False)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state.get("step", 0.0)):
                    p_state["step"] = torch.tensor(float(p_state.get("step", 0.0)), dtype=torch.float32)

    def load_state_dict(self, state_dict):
        # torch casts floating state to the parameter's dtype; keep fp32 state for 16-bit parameters
        super().load_state_dict(state_dict)
        self.__dict__.pop("_scratch_buffers", None)     # they belonged to the replaced state tensors
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for group in self.param_groups:
            for p in group["params"]:
                saved = state_dict["state"].get(saved_ids.pop(0))
                if saved is not None and "hessian_step" in saved:   # a count: a host-side float32, never cast
                    self.state[p]["hessian_step"] = torch.as_tensor(saved["hessian_step"], dtype=torch.float32,
                                                                    device="cpu").clone()
                dtype = _state_dtype(p, group)
                if saved is None or dtype == p.dtype:
                    continue
                for key in ("exp_avg", "hessian"):
                    if key in saved:
                        self.state[p][key] = saved[key].to(device=p.device, dtype=dtype, copy=True)

    def _init_state(self, p, group):
        state = self.state[p]
        if len(state) == 0:
            # upstream layout: a 0-d float step on the CPU, or a shape-(1,) step on the device if capturable
            state["step"] = (torch.zeros((1,), dtype=torch.float32, device=p.device)
                             if group["capturable"] else torch.tensor(0.0))
            state["exp_avg"] = torch.zeros_like(p, dtype=_state_dtype(p, group),
                                                memory_format=torch.preserve_format)
        if "hessian" not in state:
            state["hessian"] = torch.zeros_like(p, dtype=_state_dtype(p, group),
                                                memory_format=torch.preserve_format)
            if group["hessian_bias_correction"]:   # refreshes of this h so far (a host-side count: no sync)
                state["hessian_step"] = torch.tensor(0.0)
        return state

    @staticmethod
    def _hessian_scale(state, group):
        """1 / (1 − β2ⁿ) with bias correction after n ≥ 1 refreshes; 1 otherwise (h = 0 when n = 0)."""
        n = state.get("hessian_step") if group["hessian_bias_correction"] else None
        if n is None or float(n) == 0:
            return 1.0
        return 1.0 / (1.0 - group["betas"][1] ** float(n))

    @torch.no_grad()
    def step(self, closure=None, bs=default_bs):
        """One Sophia step from the gradients in .grad. `bs`: the number of predictions (tokens) behind this
        step's gradient, e.g. global batch sequences x sequence length. The default 5120 is upstream's
        placeholder: always pass the real count."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        fused = []
        for group in self.param_groups:
            batch = self._gather(group)
            if batch is None:
                continue
            batch.update(lr=group["lr"], beta1=group["betas"][0], rho=group["rho"],
                         weight_decay=group["weight_decay"], bs=bs, maximize=group["maximize"])
            if group["hessian_bias_correction"]:
                batch["hessian_scales"] = [self._hessian_scale(self.state[p], group) for p in batch["params"]]
            path = self._choose_path(group)
            if path == "foreach":
                batch["scratch"] = self._scratch(batch["exp_avgs"])
            batch = _local_shards(batch)
            if path == "fused":
                fused.append((group, batch))
            else:
                sophia_step(**batch, path=path)
        if fused:
            try:  # one horizontal kernel for all fused groups
                _fused_sophia([batch for _, batch in fused])
            except _FusedCompileError as err:
                if any(group["fused"] for group, _ in fused):
                    raise
                # automatic choice: compilation is unavailable here, so use foreach from now on
                warnings.warn(f"Sophia: fused step unavailable ({err.__cause__!r}); using foreach instead")
                for group, batch in fused:
                    group["fused"] = False
                    sophia_step(**batch, path="foreach" if group["foreach"] is not False else "single")
        return loss

    def _gather(self, group):
        params, grads, exp_avgs, hessians, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Sophia does not support sparse gradients")
            state = self._init_state(p, group)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            hessians.append(state["hessian"])
            steps.append(state["step"])
        if not params:
            return None
        return dict(params=params, grads=grads, exp_avgs=exp_avgs, hessians=hessians, steps=steps)

    def _scratch(self, exp_avgs):
        """The foreach path's temporary, one buffer per state tensor kept between steps: a fresh
        parameter-sized allocation every step costs more than the step's arithmetic on CPU."""
        buffers = self.__dict__.setdefault("_scratch_buffers", {})   # keyed by the state tensor itself
        return [buffers[m] if m in buffers else buffers.setdefault(m, torch.empty_like(m)) for m in exp_avgs]

    def _choose_path(self, group):
        """Explicit flags win; otherwise fused for large CPU/CUDA models, else foreach."""
        if group["fused"]:
            return "fused"
        if group["foreach"]:
            return "foreach"
        if group["fused"] is None and _fused_supported(group["params"]) and (
                sum(p.numel() for g in self.param_groups for p in g["params"]) >= FUSED_MIN_NUMEL):
            return "fused"
        return "foreach" if group["foreach"] is None else "single"

    @torch.no_grad()
    def update_hessian(self, estimates=None):
        """h ← β2·h + (1 − β2)·ĥ for every parameter with a gradient (or an estimate).

        Without `estimates`, ĥ = g⊙g from .grad, which must hold the gradient of the sampled-label loss
        (gnb_loss) for this to be Sophia-G. `estimates` (a list aligned with the parameters of all param
        groups in order, None entries skipped) supplies ĥ directly, e.g. from hutchinson_estimate."""
        all_params = [p for group in self.param_groups for p in group["params"]]
        if estimates is not None and len(estimates) != len(all_params):
            raise ValueError(f"update_hessian got {len(estimates)} estimates for {len(all_params)} parameters")
        index = 0
        for group in self.param_groups:
            hessians, values, counts = [], [], []
            for p in group["params"]:
                value = p.grad if estimates is None else estimates[index]
                index += 1
                if value is None:
                    continue
                state = self._init_state(p, group)
                if "hessian_step" in state:
                    counts.append(state["hessian_step"])
                hessians.append(_real(_local(state["hessian"])))
                value = _real(_local(value.detach())).to(hessians[-1].dtype)
                # a curvature estimate of the maximized objective L is one of −L, the function minimized
                values.append(-value if estimates is not None and group["maximize"] else value)
            if hessians:
                hessian_ema(hessians, values, beta2=group["betas"][1], square=estimates is None,
                            foreach=self._choose_path(group) != "single")
            if counts and group["hessian_bias_correction"]:
                torch._foreach_add_(counts, 1)

    @torch.no_grad()
    def stats(self, bs=None):
        """On-device diagnostics as 0-d tensors, computed without a host sync:
            win_rate       share of coordinates not clipped, |m| < ρ·bs·h (upstream's train/win_rate)
            hessian_norm   ‖h‖₁ over all parameters (without the bs factor, as upstream logs it)
            hessian_norm2  ‖h‖₂
            momentum_norm  ‖m‖₂
        Cheap enough for every Hessian refresh: one pass over m and h. With DTensor (e.g. FSDP2) parameters
        the sums cover every shard, so every process must call it (four small all-reduces)."""
        bs = self.default_bs if bs is None else bs
        l1, l2sq, m2sq, wins, count = [], [], [], [], 0
        for group in self.param_groups:
            rho_bs = group["rho"] * bs
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "hessian" not in state:
                    continue
                m, h = _real(state["exp_avg"]), _real(state["hessian"])
                l1.append(h.abs().sum(dtype=torch.float32))
                l2sq.append(h.square().sum(dtype=torch.float32))
                m2sq.append(m.square().sum(dtype=torch.float32))
                wins.append(torch.lt(m.abs(), h * (rho_bs * self._hessian_scale(state, group))).sum())
                count += m.numel()
        if count == 0:
            zero = torch.zeros(())
            return dict(win_rate=zero, hessian_norm=zero, hessian_norm2=zero, momentum_norm=zero)
        device = l1[0].device
        stack = lambda xs: torch.stack([x.to(device) for x in xs]).sum()  # noqa: E731
        wins, l1, l2sq, m2sq = (_full(stack(xs)) for xs in (wins, l1, l2sq, m2sq))
        return dict(win_rate=wins.float() / count, hessian_norm=l1, hessian_norm2=l2sq.sqrt(),
                    momentum_norm=m2sq.sqrt())


class SophiaH(SophiaG):
    """Sophia with the Hutchinson estimator ĥ = u⊙(∇²L·u).

    Probe distribution: Rademacher by default (each u_i = ±1 with probability 1/2), or 'gaussian'
    (u ~ N(0, I), the paper's Algorithm 1). Both are unbiased, E[u⊙Hu] = diag(H); Rademacher has the lower
    variance (Var = Σ_{j≠i} H_ij², Gaussian adds 2·H_ii²). Negative curvature estimates are allowed in h;
    the update treats a negative h like h = 0, i.e. a clipped sign step (the paper's max(ρh, ε)).
    When maximizing, the estimate is negated: the curvature of the minimized objective −L is −∇²L.

    Defaults: lr 1e-4, betas (0.965, 0.99), rho 0.01 (the paper's γ for Sophia-H), weight_decay 0.1,
    and bs = 1 in step(), because Hutchinson estimates the Hessian of the mean loss directly.

    Usage, every k steps:  optimizer.update_hessian(loss)   # loss with its graph, before .backward()
    or, to combine estimates across processes first:
        est = hutchinson_estimate(loss, params, generator=g); all-reduce est; optimizer.update_hessian(est)
    """

    default_bs = 1

    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), rho=0.01, weight_decay=1e-1, *,
                 probe="rademacher", **kwargs):
        if probe not in PROBES:
            raise ValueError(f"Invalid probe {probe!r}: choose one of {sorted(PROBES)}")
        self.probe = probe
        super().__init__(params, lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, **kwargs)

    def step(self, closure=None, bs=default_bs):
        """One Sophia-H step; bs = 1 because h estimates the Hessian of the mean loss itself."""
        return super().step(closure, bs)

    def update_hessian(self, loss=None, *, estimates=None, generator=None):
        """h ← β2·h + (1 − β2)·u⊙(∇²L·u), from `loss` (still holding its graph) or precomputed estimates."""
        if (loss is None) == (estimates is None):
            raise ValueError("SophiaH.update_hessian needs exactly one of `loss` or `estimates`")
        if loss is not None:
            params = [p for group in self.param_groups for p in group["params"]]
            trainable = [p for p in params if p.requires_grad]
            found = iter(hutchinson_estimate(loss, trainable, generator=generator, probe=self.probe))
            estimates = [next(found) if p.requires_grad else None for p in params]
        super().update_hessian(estimates)


# ----------------------------------------------------------------------------------------------------------
# Estimator helpers: the part users otherwise re-implement in their training script

GNB_CHUNK = 1 << 23          # logits entries per chunk when sampling: bounds the fp32/fp64 scratch to ~100 MB


def _row_uniforms(logits, generator):
    """One uniform in [0, 1) per position of logits[..., 0], in float64. generator: None, a torch.Generator,
    or one per row of logits (dim 0), each drawing that row's positions in order."""
    shape = logits.shape[:-1]
    if isinstance(generator, (list, tuple)):
        if len(generator) != len(logits):
            raise ValueError(f"gnb: {len(generator)} generators for {len(logits)} rows; pass one per row")
        return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64, device=logits.device)
                            for g in generator])
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=logits.device)


def _gnb_chunks(logits):
    """(start, stop) spans of the flattened positions, each holding at most GNB_CHUNK logits."""
    n, vocab = logits.numel() // logits.size(-1), logits.size(-1)
    rows = max(1, GNB_CHUNK // vocab)
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


def _draw(probs, u):
    """Inverse-CDF draw ŷ ~ probs per row: the first class whose cumulative mass exceeds u·total. The
    cumulative sum is in float64, so that a class's chance is its probability to ~1e-16, not to fp32's
    rounding of a 50k-term sum; a class of probability 0 is never drawn."""
    cdf = probs.double().cumsum_(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1).clamp_(max=cdf.size(-1) - 1)


@torch.no_grad()
def gnb_sample(logits, *, generator=None):
    """Labels ŷ ~ softmax(logits) (softmax in fp32), one per position of logits[..., 0], by inverse-CDF
    sampling with one float64 uniform per position. With one generator per row (dim 0), the labels of a row
    depend only on its generator: a batch split into micro-batches or processes draws the same labels."""
    flat, u = logits.reshape(-1, logits.size(-1)), _row_uniforms(logits, generator).reshape(-1)
    labels = torch.empty(flat.size(0), dtype=torch.long, device=logits.device)
    for a, b in _gnb_chunks(logits):
        labels[a:b] = _draw(flat[a:b].float().softmax(-1), u[a:b])
    return labels.reshape(logits.shape[:-1])


def gnb_loss(logits, *, generator=None, ignore_mask=None):
    """Sophia-G's Gauss-Newton-Bartlett loss: mean cross-entropy of `logits` (..., V) against labels
    ŷ ~ softmax(logits) sampled from the model itself (gnb_sample), computed in fp32.

    Backprop it, then call SophiaG.update_hessian(): since E_ŷ[∇ℓ(ŷ)] = 0 and E_ŷ[∇ℓ∇ℓᵀ] = Gauss-Newton
    (the Bartlett identity), bs·ĝ⊙ĝ is an unbiased estimate of the Gauss-Newton diagonal of the mean loss.
    Pass the FULL logits of every position (not just the last one) and no true labels anywhere.
    generator: a torch.Generator for the draws, or a list of them, one per row of logits (dim 0): seeded per
    sequence, the labels then do not depend on how a batch is split into micro-batches or processes.
    ignore_mask (bool, same shape as logits[..., 0]) marks positions to leave out (e.g. padding).
    gnb_backward() computes the same gradient for the same draws at about the memory of the logits alone."""
    labels = gnb_sample(logits, generator=generator)
    if ignore_mask is not None:
        labels[ignore_mask] = -1
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-1)


def gnb_backward(logits, *, generator=None, ignore_mask=None, scale=1.0):
    """gnb_loss(logits, ...).mul(scale).backward() for the same draws, without a second log-softmax: the
    gradient of mean cross-entropy against ŷ is (softmax(logits) − onehot(ŷ)) / N per position, so it is
    formed chunk by chunk from the one softmax the sampling needs and backpropagated from the logits.
    When the logits are an intermediate result (not a leaf) and contiguous, their memory is reused for their
    gradient, so the pass needs no more than the logits' own memory: they are overwritten. Autograd still
    refuses, loudly, if something saved them for its backward. Returns the GNB loss (detached, for logging)."""
    vocab = logits.size(-1)
    keep = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device) if ignore_mask is None \
        else ~ignore_mask
    keep, u = keep.reshape(-1), _row_uniforms(logits, generator).reshape(-1)
    # N: the positions not ignored, as cross_entropy's mean counts them (a tensor: no host sync)
    n_kept = keep.numel() if ignore_mask is None else keep.sum().clamp_min(1)
    with torch.no_grad():
        reuse = logits.grad_fn is not None and logits.is_contiguous()
        grad = logits.detach() if reuse else torch.empty_like(logits, memory_format=torch.contiguous_format)
        flat, out = logits.detach().reshape(-1, vocab), grad.view(-1, vocab)
        loss = torch.zeros((), dtype=torch.float64, device=logits.device)
        for a, b in _gnb_chunks(logits):
            probs = flat[a:b].float().softmax(-1)
            labels = _draw(probs, u[a:b])
            picked = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
            mask = keep[a:b]
            loss -= torch.where(mask, picked.double().log(), 0.0).sum()
            probs.scatter_add_(1, labels.unsqueeze(1), -torch.ones_like(picked).unsqueeze(1))   # p − onehot(ŷ)
            probs.mul_((mask.float() * scale / n_kept).unsqueeze(1))    # / N; ignored rows → 0
            out[a:b] = probs
    logits.backward(grad)
    return (loss / n_kept).float()


def decay_groups(module, weight_decay, linear_types=(torch.nn.Linear,)):
    """[decayed, not decayed] parameter groups of any module, by upstream Sophia's rule: weight decay on the weights
    of linear layers (linear_types: transformers' GPT-2 adds its Conv1D) and nothing else, not biases, norms or
    embeddings (a tied lm_head is the embedding). Every trainable parameter appears once, in parameters() order."""
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    linear = {id(m.weight) for m in module.modules() if isinstance(m, linear_types)} - embeddings
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if id(p) in linear else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gnb_weight(hessian_sequences, step_sequences, micro_batches):
    """Scale of each micro-batch's GNB loss. E[ĝ⊙ĝ] = diag(GN) / (tokens behind ĝ), and step() multiplies h by
    bs = tokens per step: a Hessian batch smaller than the step's is rescaled by sqrt(hessian / step sequences),
    so that bs·h stays unbiased; 1/micro_batches makes ĝ the mean over the batch's micro-batches."""
    return math.sqrt(hessian_sequences / step_sequences) / micro_batches


def label_generators(seeds, device):
    """One generator per sequence for its sampled labels, seeded per global row: the labels are the same on any
    number of processes and on resume."""
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


def update_from_gradient(optimizer, params, grad_clip):
    """The GNB gradient ĝ is in the parameters' .grad: clip it like the training gradient (as upstream), then
    h <- β2 h + (1 - β2) ĝ⊙ĝ unless it is non-finite, and clear it. Returns whether h was updated."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = (torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip > 0
            else torch.nn.utils.get_total_norm(grads))
    finite = math.isfinite(_full(norm).item())
    if finite:
        optimizer.update_hessian()
    optimizer.zero_grad(set_to_none=True)
    return finite


def hessian_vector_product(loss, params, vectors, grads=None):
    """∇²L·v for each parameter, by differentiating (∇L · v) once more. `grads` may be passed when the
    caller already has ∇L with create_graph=True. Parameters L does not depend on get zeros."""
    params = list(params)
    if grads is None:
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    hvps = [torch.zeros_like(p) for p in params]
    if used:
        found = torch.autograd.grad([grads[i] for i in used], [params[i] for i in used],
                                    grad_outputs=[vectors[i] for i in used], allow_unused=True)
        for i, hv in zip(used, found):
            if hv is not None:
                hvps[i] = hv
    return hvps


PROBES = {
    "rademacher": lambda p, g: torch.randint(0, 2, p.shape, generator=g, device=p.device).to(p.dtype) * 2 - 1,
    "gaussian": lambda p, g: torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype),
}


def hutchinson_estimate(loss, params, *, generator=None, probe="rademacher"):
    """Sophia-H's estimate ĥ = u⊙(∇²L·u) per parameter, unbiased for diag(∇²L). Uses autograd.grad, so
    .grad is left untouched. For the same estimate on every process, seed `generator` identically
    on all ranks and average the results (DDP does not all-reduce second-order gradients)."""
    params = list(params)
    if any(p.is_complex() for p in params):
        raise ValueError("hutchinson_estimate supports real parameters only")
    probes = [PROBES[probe](p, generator) for p in params]
    return [u * hv for u, hv in zip(probes, hessian_vector_product(loss, params, probes))]


# ----------------------------------------------------------------------------------------------------------
# Functional core

def sophia_step(params, grads, exp_avgs, hessians, steps, *, path, lr, beta1, rho, weight_decay, bs,
                maximize, scratch=None, hessian_scales=None):
    """One Sophia step on lists of tensors; path is 'single', 'foreach' or 'fused'. `scratch` (foreach
    only): reusable buffers shaped like exp_avgs for the temporary; None allocates it. `hessian_scales`: one
    float per tensor multiplying its h in the step (bias correction 1 / (1 − β2ⁿ)); None: h as it is."""
    batch = dict(params=params, grads=grads, exp_avgs=exp_avgs, hessians=hessians, steps=steps, lr=lr,
                 beta1=beta1, rho=rho, weight_decay=weight_decay, bs=bs, maximize=maximize,
                 hessian_scales=hessian_scales)
    if path == "fused":
        return _fused_sophia([batch])
    if path == "single":
        return _single_tensor_sophia(**_real_views(batch))
    _foreach_sophia(**_real_views(dict(batch, scratch=scratch)))


def _map_tensor_lists(batch, fn):
    return {k: [fn(t) for t in v] if k in ("params", "grads", "exp_avgs", "hessians", "scratch") and v else v
            for k, v in batch.items()}


def _real_views(batch):
    # complex tensors are updated through their real views (16-bit params are upcast inside each path)
    return _map_tensor_lists(batch, _real) if any(p.is_complex() for p in batch["params"]) else batch


def _local_shards(batch):
    # DTensor parameters (FSDP2, tensor parallel) are updated shard by shard: the step is elementwise, so each
    # process updates the shard it holds, as plain tensors, on any of the three paths
    return _map_tensor_lists(batch, _local) if any(_is_dtensor(p) for p in batch["params"]) else batch


def _single_tensor_sophia(params, grads, exp_avgs, hessians, steps, *, lr, beta1, rho, weight_decay, bs,
                          maximize, hessian_scales=None):
    scales = [None] * len(params) if hessian_scales is None else hessian_scales
    for param, grad, exp_avg, hessian, step, scale in zip(params, grads, exp_avgs, hessians, steps, scales):
        step += 1
        grad = -grad if maximize else grad
        theta = param if param.dtype == exp_avg.dtype else param.to(exp_avg.dtype)
        theta.mul_(1 - lr * weight_decay)                                      # θ ← θ·(1 − lr·wd)
        exp_avg.lerp_(grad.to(exp_avg.dtype), 1 - beta1)                       # m ← β1·m + (1 − β1)·g
        rho_bs = rho * bs if scale is None else rho * bs * scale               # ρ·bs (· 1/(1 − β2ⁿ))
        denom = (hessian * rho_bs).clamp_(min=0).add_(EPS)                     # ρ·bs·max(h, 0) + ε
        ratio = torch.div(exp_avg, denom, out=denom).clamp_(-1, 1)             # sign(m)·min(|m|/denom, 1)
        _sub_scaled(theta, ratio, lr)                                          # θ ← θ − lr·ratio
        if theta is not param:
            param.copy_(theta)
        del denom, ratio, theta    # at most one parameter-sized temporary alive at a time


def _foreach_sophia(params, grads, exp_avgs, hessians, steps, *, lr, beta1, rho, weight_decay, bs,
                    maximize, scratch=None, hessian_scales=None):
    torch._foreach_add_(steps, 1)
    for (device, dtype), idx in _group_by_device_and_dtype(params, exp_avgs).items():
        p, m, h = [params[i] for i in idx], [exp_avgs[i] for i in idx], [hessians[i] for i in idx]
        g = [grads[i] if grads[i].dtype == m[0].dtype else grads[i].to(m[0].dtype) for i in idx]
        theta = p if p[0].dtype == m[0].dtype else [t.to(m[0].dtype) for t in p]
        if maximize:
            g = torch._foreach_neg(g)
        if weight_decay != 0:
            torch._foreach_mul_(theta, 1 - lr * weight_decay)
        torch._foreach_lerp_(m, g, 1 - beta1)
        # ρ·bs, or with bias correction one ρ·bs/(1 − β2ⁿ) per tensor (n may differ: a frozen layer misses
        # refreshes)
        rho_bs = rho * bs if hessian_scales is None else [rho * bs * hessian_scales[i] for i in idx]
        if scratch is None:                                  # the step's one temporary, reused in place:
            ratio = torch._foreach_mul(h, rho_bs)
        else:
            ratio = [scratch[i] for i in idx]
            torch._foreach_copy_(ratio, h)
            torch._foreach_mul_(ratio, rho_bs)
        torch._foreach_clamp_min_(ratio, 0)                  # ρ·bs·max(h, 0)
        torch._foreach_add_(ratio, EPS)                      #   + ε
        torch._foreach_reciprocal_(ratio)                    # 1 / denom
        torch._foreach_mul_(ratio, m)                        # m / denom
        torch._foreach_clamp_min_(ratio, -1)
        torch._foreach_clamp_max_(ratio, 1)
        if torch.is_tensor(lr):
            torch._foreach_mul_(ratio, lr)
            torch._foreach_sub_(theta, ratio)
        else:
            torch._foreach_add_(theta, ratio, alpha=-lr)
        if theta is not p:
            torch._foreach_copy_(p, theta)


class _FusedCompileError(RuntimeError):
    pass


_compiled_kernel = None


def _fused_sophia_kernel(params, grads, exp_avgs, hessians, hyper, group_of, negate, scales=None):
    """One horizontal kernel: every tensor is read once, p and m are written once, no temporaries.
    hyper[k] = (lr, weight_decay, 1 − β1, ρ·bs) of group k; group_of[i] is tensor i's group; scales[i] (bias
    correction only) multiplies tensor i's ρ·bs."""
    for i, (p, g, m, h) in enumerate(zip(params, grads, exp_avgs, hessians)):
        lr, weight_decay, one_minus_beta1, rho_bs = hyper[group_of[i]].unbind()
        if scales is not None:
            rho_bs = rho_bs * scales[i]
        g = g.to(m.dtype)
        g = -g if negate[group_of[i]] else g
        m_new = m + one_minus_beta1 * (g - m)
        denom = torch.clamp_min(h * rho_bs, 0) + EPS
        theta = p.to(m.dtype) * (1 - lr * weight_decay) - lr * torch.clamp(m_new / denom, -1, 1)
        m.copy_(m_new)
        p.copy_(theta)


def _fused_sophia(batches):
    global _compiled_kernel
    if _compiled_kernel is None:
        # on CPU, one loop per tensor: inductor would otherwise pack up to 4 tensors into one loop, which
        # streams 16 arrays at once and measured ~10% slower than one tensor at a time
        _compiled_kernel = torch.compile(_fused_sophia_kernel, fullgraph=True,
                                         options={"cpp.max_horizontal_fusion_size": 1})
    batches = [_real_views(b) for b in batches]
    per_device = {}
    for k, batch in enumerate(batches):
        torch._foreach_add_(batch["steps"], 1)
        for i, p in enumerate(batch["params"]):
            if p.numel() > 0:
                per_device.setdefault(p.device, []).append((k, i))
    for device, items in per_device.items():
        # hyperparameters enter as one float64 tensor, so a changing lr does not trigger recompilation
        rows = [(b["lr"], b["weight_decay"], 1 - b["beta1"], b["rho"] * b["bs"]) for b in batches]
        if any(torch.is_tensor(x) for row in rows for x in row):   # capturable: stay on the device
            hyper = torch.stack([torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device)
                                              for x in row]) for row in rows])
        elif device.type == "cuda":   # a pinned buffer, copied without waiting: no host sync in step()
            hyper = torch.tensor(rows, dtype=torch.float64).pin_memory().to(device, non_blocking=True)
        else:
            hyper = torch.tensor(rows, dtype=torch.float64, device=device)
        lists = [[batches[k][key][i] for k, i in items] for key in ("params", "grads", "exp_avgs", "hessians")]
        scales = None
        if any(b.get("hessian_scales") is not None for b in batches):    # bias correction: one float64 per tensor
            scales = torch.tensor([1.0 if batches[k].get("hessian_scales") is None else batches[k]["hessian_scales"][i]
                                   for k, i in items], dtype=torch.float64).to(device, non_blocking=True)
        try:
            # each new set of tensors (shapes, which params have grads) compiles once; allow many such sets
            with torch._dynamo.config.patch(recompile_limit=64):
                _compiled_kernel(*lists, hyper, tuple(k for k, _ in items), tuple(b["maximize"] for b in batches),
                                 scales)
        except Exception as err:  # compilation problems surface on the first call
            if isinstance(err, torch.OutOfMemoryError):
                raise
            for b in batches:
                torch._foreach_sub_(b["steps"], 1)
            raise _FusedCompileError(str(err)) from err


def hessian_ema(hessians, values, *, beta2, square, foreach=True):
    """h ← β2·h + (1 − β2)·ĥ in place, with ĥ = v⊙v (square=True, GNB) or ĥ = v (a given estimate)."""
    if foreach:
        torch._foreach_mul_(hessians, beta2)
        if square:
            torch._foreach_addcmul_(hessians, values, values, value=1 - beta2)
        else:
            torch._foreach_add_(hessians, values, alpha=1 - beta2)
    else:
        for h, v in zip(hessians, values):
            h.mul_(beta2)
            if square:
                h.addcmul_(v, v, value=1 - beta2)
            else:
                h.add_(v, alpha=1 - beta2)


# ----------------------------------------------------------------------------------------------------------
# Small helpers

def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _is_dtensor(t):
    # a DTensor (FSDP2, tensor parallel) can only exist once torch.distributed.tensor is imported; not importing it
    # here keeps its start-up cost (over a second: DTensor's ops and sympy) out of every process that never shards
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def _local(t):
    return t.to_local() if _is_dtensor(t) else t


def _full(t):
    return t.full_tensor() if _is_dtensor(t) else t


def _state_dtype(p, group):
    if group.get("fp32_state", True) and p.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return p.dtype


def _sub_scaled(t, x, lr):
    """t ← t − lr·x, for a float or a tensor lr."""
    if torch.is_tensor(lr):
        t.sub_(x * lr)
    else:
        t.add_(x, alpha=-lr)


def _group_by_device_and_dtype(params, states):
    groups = {}
    for i, p in enumerate(params):
        key = (p.device, p.dtype if states is None else (p.dtype, states[i].dtype))
        groups.setdefault(key, []).append(i)
    return groups


def _fused_supported(params):
    # plain tensors on devices inductor compiles for (DTensor and others take the foreach path)
    return all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type in ("cpu", "cuda")
               for p in params)


__all__ = ["SophiaG", "SophiaH", "gnb_loss", "hutchinson_estimate", "hessian_vector_product", "sophia_step",
           "hessian_ema", "PROBES", "EPS", "FUSED_MIN_NUMEL"]
