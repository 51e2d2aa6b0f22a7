"""
Each optimizer the training loop can run: its default hyperparameters, how it is built over the model, and which
code path its step takes. train.py, train_hf.py and the benchmarks build optimizers here, so that a comparison
differs in nothing but the optimizer.

    OPTIMIZER_DEFAULTS[name]            the hyperparameters a config leaves at None
    build_optimizer(cfg, model)         the optimizer over model.param_groups (decay on Linear weights only)
    step_kwargs(cfg, tokens_per_step)   what step() takes besides the gradients (Sophia-G: bs)
    describe_path(optimizer, model)     "fused", "foreach", ... as the run's first line reports it

Adding an optimizer: its name in TrainConfig.optimizer_name (train.py), a row in OPTIMIZER_DEFAULTS, a branch in
build_optimizer, and its grid in bench/compare_optimizers.py's STUDY (docs/configuration.md).
"""

import torch

from lion import FOREACH_DEVICES as LION_FOREACH_DEVICES, Lion
from muon import MuonAdamW
from sophia import SophiaG, SophiaH

# Each optimizer's hyperparameters, for the keys left at None: the one source of them for the training loop
# (config files set only the ones that differ, e.g. a larger model's lr). GPT-2 small values from the Sophia
# paper / upstream configs. Sophia-H's rho is the paper's γ for Hutchinson; Lion's weight decay is 10x AdamW's
# because its lr is ~6x smaller (decoupled decay scales with lr·wd), following the Lion paper's advice.
OPTIMIZER_DEFAULTS = {
    "sophiag": dict(learning_rate=6e-4, weight_decay=0.2, beta1=0.965, beta2=0.99, rho=0.05),
    "sophiah": dict(learning_rate=6e-4, weight_decay=0.2, beta1=0.965, beta2=0.99, rho=0.01),
    "adamw": dict(learning_rate=6e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, rho=0.0),
    "lion": dict(learning_rate=1e-4, weight_decay=1.0, beta1=0.9, beta2=0.99, rho=0.0),
    # Muon on the blocks' matrices, AdamW (these betas) on the rest; with muon_adjust_lr_fn="match_rms_adamw"
    # (muon.py) AdamW's lr and weight decay carry over to Muon's part
    "muon": dict(learning_rate=6e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, rho=0.0),
}
SOPHIA = ("sophiag", "sophiah")


def build_optimizer(cfg, model):
    """The optimizer over model.param_groups (weight decay on Linear weights only). optimizer_impl=auto leaves
    the code path to the optimizer, except that compile=False keeps Sophia off its compiled kernel."""
    groups = model.param_groups(cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    path = {"auto": {} if cfg.compile else dict(fused=False), "single": dict(foreach=False, fused=False),
            "foreach": dict(foreach=True), "fused": dict(fused=True)}[cfg.optimizer_impl]
    if cfg.optimizer_name in SOPHIA:
        sophia_class = SophiaG if cfg.optimizer_name == "sophiag" else SophiaH
        return sophia_class(groups, lr=cfg.learning_rate, betas=betas, rho=cfg.rho,
                            hessian_bias_correction=cfg.hessian_bias_correction, **path)
    if cfg.optimizer_name == "lion":
        return Lion(groups, lr=cfg.learning_rate, betas=betas, foreach=path.get("foreach"))
    if cfg.optimizer_impl == "auto":   # torch's fused AdamW kernel (native, not compiled) exists on CPU and CUDA
        path = dict(fused=True) if all(p.device.type in ("cpu", "cuda") for p in model.parameters()) else {}
    if cfg.optimizer_name == "muon":   # Muon: the 2-D weights inside the blocks; AdamW (on `path`): the rest
        matrices = [p for block in model.transformer.h for p in block.parameters() if p.ndim == 2]
        return MuonAdamW(groups, matrices, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                         momentum=cfg.muon_momentum, adjust_lr_fn=cfg.muon_adjust_lr_fn, betas=betas,
                         adamw_options=path)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, **path)


def step_kwargs(cfg, tokens_per_step):
    """Sophia-G's bs: the tokens behind one step's gradient, computed from the batch, never hard-coded (its
    clipping threshold is ρ·bs·h, with h estimated per token)."""
    return dict(bs=tokens_per_step) if cfg.optimizer_name == "sophiag" else {}


def describe_path(optimizer, model):
    """The optimizer's code path, as the run's first line reports it (a compiled one costs time at the first step)."""
    if isinstance(optimizer, (SophiaG, SophiaH)):
        path = optimizer._choose_path(optimizer.param_groups[0])
        return "fused (torch.compile'd at the first step, not counted in `time`)" if path == "fused" else path
    if isinstance(optimizer, MuonAdamW):
        return optimizer.describe_path()
    if isinstance(optimizer, torch.optim.AdamW):
        return "fused" if optimizer.defaults.get("fused") else "foreach"
    foreach = optimizer.defaults["foreach"]     # Lion: None picks foreach on GPUs, as torch.optim does
    if foreach is None:
        foreach = all(p.device.type in LION_FOREACH_DEVICES for p in model.parameters())
    return "foreach" if foreach else "single"
