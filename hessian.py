"""
Sophia's Hessian refresh over the run's batches and ranks: every hess_interval steps, an estimate ĥ of the
diagonal Hessian on a fresh batch, then h <- β2 h + (1 - β2) ĥ (optimizer.update_hessian).

    Sophia-G (GNB, Gauss-Newton-Bartlett): backprop the loss against labels ŷ ~ softmax(logits) sampled from the
        model itself; E_ŷ[ĝ⊙ĝ] = diag(Gauss-Newton) / N for N predictions, and the optimizer squares ĝ.
    Sophia-H (Hutchinson): u⊙(∇²L u) with one Rademacher probe u per refresh.

    refresh = HessianRefresh(cfg, run, sampler, optimizer, scaler, local_model, raw_model)
    if refresh.due(iter_num): diagnostics = refresh(iter_num)      # {"train/win_rate": ..., "hessian_norm": ...}

The GNB pieces (gnb_weight, label_generators, update_from_gradient) live in sophia.py, where sophia_hf.py's
Trainer (and so train_hf.py) uses them too, so both paths refresh alike.
"""

import torch

from dataloader import HESSIAN, derive_seed
from sophia import gnb_backward, gnb_weight, hutchinson_estimate, label_generators, update_from_gradient


def diagnostics(optimizer, bs=None):
    """Sophia's diagnostics right after a refresh, as upstream computes them (held until the next one), with
    wandb's names: train/win_rate (share of coordinates not clipped), hessian_norm (‖h‖₁), hessian_norm2
    (‖h‖₂)."""
    stats = optimizer.stats(bs=bs)
    names = {"train/win_rate": "win_rate", "hessian_norm": "hessian_norm", "hessian_norm2": "hessian_norm2"}
    values = torch.stack([stats[key].float() for key in names.values()]).tolist()    # one host sync
    return dict(zip(names, values))


class HessianRefresh:
    """The refresh of train.py's loop. The Hessian batch (hess_total_bs sequences from its own data stream) is cut
    into micro-batches of hess_batch_size rows whatever the world size (a rank may get none; under FSDP it joins
    with dummy passes), labels are seeded per global row and the probe per iteration: the estimate is the same on
    1 or N processes, up to the order of float sums."""

    def __init__(self, cfg, run, sampler, optimizer, scaler, local_model, raw_model):
        self.cfg, self.run, self.sampler, self.optimizer, self.scaler = cfg, run, sampler, optimizer, scaler
        self.local_model, self.raw_model = local_model, raw_model
        self.step_kwargs = dict(bs=cfg.total_bs * cfg.block_size) if cfg.optimizer_name == "sophiag" else {}

    def due(self, iter_num):
        """After the steps at iterations ≡ hess_interval - 1 (upstream's cadence: k steps, then a refresh)."""
        return iter_num % self.cfg.hess_interval == self.cfg.hess_interval - 1

    def __call__(self, iter_num):
        """Refresh h after the step at iter_num; returns the diagnostics."""
        batches = self.sampler.micro_batches(self.cfg.seed, HESSIAN, iter_num, self.cfg.hess_total_bs,
                                             batch_size=self.cfg.hess_batch_size)
        if self.cfg.optimizer_name == "sophiag":
            self.gnb(iter_num, batches)
        else:
            self.hutchinson(iter_num, batches)
        return diagnostics(self.optimizer, **self.step_kwargs)

    def flops_share(self, refreshes, iters):
        """The Hessian passes' FLOPs over the training steps' (for mfu_with_hessian): a forward-backward per
        sequence (Sophia-H: about twice that, for the Hessian-vector product's second backward)."""
        cfg = self.cfg
        passes = 1 if cfg.optimizer_name == "sophiag" else 2
        return refreshes * passes * cfg.hess_total_bs / (iters * cfg.total_bs)

    def gnb(self, iter_num, batches):
        """Sophia-G: the GNB gradient over the Hessian batch, summed over ranks, clipped, squared into h."""
        cfg, run = self.cfg, self.run
        size = cfg.hess_batch_size
        weight = gnb_weight(cfg.hess_total_bs, cfg.total_bs, cfg.hess_total_bs // size)
        if self.scaler.is_enabled():
            weight *= self.scaler.get_scale()
        batches = run.in_lockstep(batches, cfg.hess_total_bs, size)
        for micro, batch in enumerate(batches):
            run.set_grad_sync(self.local_model, micro == len(batches) - 1)   # FSDP: it is the training module
            if batch is None:           # FSDP padding: join the collectives, add nothing
                x, scale, generators = run.dummy_batch(size, cfg.block_size), 0.0, torch.Generator(run.device)
            else:
                first_row, x, _ = batch
                seeds = [derive_seed(cfg.seed, HESSIAN, iter_num, first_row + r) for r in range(len(x))]
                scale, generators = weight, label_generators(seeds, run.device)
            with run.autocast:
                logits = self.local_model(x)[0]   # not through DDP: the sum over ranks is below (FSDP: through it)
            # = (gnb_loss(logits) * scale).backward(), in the logits' own memory and one softmax
            gnb_backward(logits, generator=generators, scale=scale)
            del logits                          # before the next micro-batch's forward
        params = [p for group in self.optimizer.param_groups for p in group["params"]]   # the optimizer's order
        grads = run.summed_grads([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        if self.scaler.is_enabled():
            torch._foreach_div_(grads, self.scaler.get_scale())
        for p, g in zip(params, grads):
            p.grad = g
        update_from_gradient(self.optimizer, params, cfg.grad_clip)

    def hutchinson(self, iter_num, batches):
        """Sophia-H: u⊙(∇²L u), averaged over micro-batches and ranks, with the same probe u everywhere."""
        cfg, run = self.cfg, self.run
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        n_micro = cfg.hess_total_bs // cfg.hess_batch_size                  # over all ranks
        generator, total = torch.Generator(device=run.device), [torch.zeros_like(p) for p in params]
        # double backward needs the uncompiled module and the math attention kernel
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            for _, x, y in batches:
                with run.autocast:
                    loss = self.raw_model(x, y)[1]
                generator.manual_seed(derive_seed(cfg.seed, HESSIAN, iter_num))   # the same u for every micro-batch
                torch._foreach_add_(total, hutchinson_estimate(loss / n_micro, params, generator=generator))
        total = run.sum_over_ranks(total)       # DDP does not reduce second-order gradients
        if all(torch.isfinite(t).all() for t in total):
            self.optimizer.update_hessian(estimates=total)
