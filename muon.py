"""
Muon for the weight matrices of the transformer blocks, AdamW for every other parameter, driven as one
optimizer (one lr schedule, one state_dict, one checkpoint), so that the training loop treats it like the others.

Muon (MomentUm Orthogonalized by Newton-Schulz; K. Jordan et al., 2024), as torch.optim.Muon computes it, for a
matrix parameter θ of shape A x B with gradient g:
    m ← μ·m + (1 − μ)·g                  momentum EMA (μ = 0.95)
    u = (1 − μ)·g + μ·m                  Nesterov (the scale of u does not matter: NS5 normalizes it first)
    O = NS5(u) ≈ U·Vᵀ                    five Newton-Schulz iterations towards the orthogonal factor of
                                         u = U·S·Vᵀ
    θ ← θ·(1 − lr·wd)                    decoupled weight decay, with the unadjusted lr (as AdamW's)
    θ ← θ − lr'·O                        lr' = adjust_lr(lr, A, B)

The split (the standard one: modded-nanogpt, Moonshot's "Muon is scalable"): Muon on every 2-D weight inside the
transformer blocks (attention qkv and output projections, the MLP's two matrices). AdamW on the rest: the token and
position embeddings (tied to the output head here), LayerNorm weights and biases. An embedding's rows are looked up
one at a time, so orthogonalizing its update mixes unrelated tokens; 1-D tensors have no matrix to orthogonalize.

The lr scaling: adjust_lr_fn="match_rms_adamw" (Moonshot), lr' = lr·0.2·sqrt(max(A, B)). O has singular values ≈ 1,
so its RMS is ≈ 1/sqrt(max(A, B)) and the scaled update has an RMS of ≈ 0.2·lr, that of a typical AdamW update:
AdamW's lr and weight decay carry over, and one schedule drives both parts with the same lr.
("original", Keller Jordan's, lr' = lr·sqrt(max(1, A/B)), wants a Muon lr of ~0.02, separate from AdamW's.)

Code paths: torch's Muon has one implementation (a loop over matrices; Newton-Schulz is a few matmuls per matrix);
the AdamW part takes the path asked for (torch's single-tensor, foreach or fused kernel).

Distributed: under DDP every process holds the full, all-reduced gradients and takes the same step. Under FSDP a
process holds a shard of each matrix, and orthogonalizing a shard is not orthogonalizing the matrix: refused
(train.py stops with an error naming DDP).
"""

import torch

ADJUST_LR_FNS = ("match_rms_adamw", "original")


class MuonAdamW:
    """torch.optim.Muon over `muon_params`, torch.optim.AdamW over the rest of `groups`, as one optimizer.

    Args:
        groups: parameter groups (dicts with "params" and optional per-group options) covering every parameter,
            e.g. a model's param_groups(weight_decay); parameters listed in `muon_params` move to Muon.
        muon_params: the matrices for Muon (2-D tensors).
        lr, weight_decay: shared by both parts (weight_decay: Muon's; AdamW's groups keep their own).
        momentum, nesterov, ns_steps, adjust_lr_fn: Muon's (torch.optim.Muon's meaning).
        betas, eps: AdamW's.
        adamw_options: more AdamW keyword arguments, e.g. dict(fused=True) or dict(foreach=False).

    param_groups lists Muon's groups first, then AdamW's (the same dicts: setting group["lr"] sets the optimizer's
    lr); state_dict() is in torch's layout over that order, with each group tagged by its part.
    """

    def __init__(self, groups, muon_params, *, lr, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5,
                 adjust_lr_fn="match_rms_adamw", betas=(0.9, 0.95), eps=1e-8, adamw_options=None):
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Invalid adjust_lr_fn {adjust_lr_fn!r}: choose one of {ADJUST_LR_FNS}")
        muon_params = list(muon_params)
        if not muon_params:
            raise ValueError("MuonAdamW: no matrices for Muon")
        bad = [tuple(p.shape) for p in muon_params if p.ndim != 2]
        if bad:
            raise ValueError(f"MuonAdamW: Muon takes 2-D parameters only, got shapes {bad}")
        chosen = {id(p) for p in muon_params}
        adamw_groups = []
        for group in groups:
            rest = [p for p in group["params"] if id(p) not in chosen]
            if rest:
                adamw_groups.append({**group, "params": rest})
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, **(adamw_options or {}))
        for part, optimizer in (("muon", self.muon), ("adamw", self.adamw)):
            for group in optimizer.param_groups:
                group["part"] = part

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self):
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        """torch's layout over Muon's parameters, then AdamW's: AdamW's indices follow Muon's."""
        muon, adamw = self.muon.state_dict(), self.adamw.state_dict()
        offset = sum(len(g["params"]) for g in muon["param_groups"])
        state = {**muon["state"], **{i + offset: s for i, s in adamw["state"].items()}}
        groups = muon["param_groups"] + [{**g, "params": [i + offset for i in g["params"]]}
                                         for g in adamw["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        parts = [g.get("part") for g in groups]
        n_muon = len(self.muon.param_groups)
        if parts != [g["part"] for g in self.param_groups]:
            raise ValueError(f"MuonAdamW.load_state_dict: the saved groups are {parts}, this optimizer's "
                             f"{[g['part'] for g in self.param_groups]}")
        muon_groups, adamw_groups = groups[:n_muon], groups[n_muon:]
        muon_ids = {i for g in muon_groups for i in g["params"]}
        offset = len(muon_ids)
        self.muon.load_state_dict({"state": {i: s for i, s in state_dict["state"].items() if i in muon_ids},
                                   "param_groups": muon_groups})
        self.adamw.load_state_dict({"state": {i - offset: s for i, s in state_dict["state"].items()
                                              if i not in muon_ids},
                                    "param_groups": [{**g, "params": [i - offset for i in g["params"]]}
                                                     for g in adamw_groups]})

    def describe_path(self):
        """The code path of each part, as train.py's first line reports it."""
        defaults = self.adamw.defaults
        adamw = "fused" if defaults.get("fused") else "single" if defaults.get("foreach") is False else "foreach"
        return f"muon: single-tensor Newton-Schulz, adamw: {adamw}"


__all__ = ["MuonAdamW", "ADJUST_LR_FNS"]
