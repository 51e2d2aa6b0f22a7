"""
Lion (EvoLved Sign Momentum), Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms".
The sign-based baseline that Sophia is compared against, run through the same training loop.

Per step, for every parameter θ with gradient g (g ← −g when maximize):
    θ ← θ·(1 − lr·wd)               decoupled weight decay, scaled by the current lr
    c ← β1·m + (1 − β1)·g           interpolation that sets the direction of this step
    θ ← θ − lr·sign(c)              every coordinate moves by exactly lr (or 0 where c = 0)
    m ← β2·m + (1 − β2)·g           momentum EMA, with the slower β2
The only state is the momentum m, stored as state["exp_avg"].

Hyperparameters: every coordinate moves by lr, so Lion wants an lr 3-10x smaller than AdamW's and a
weight decay 3-10x larger (keeping lr·wd similar). For GPT-2 the Sophia authors used lr 1e-4 (125M, 355M)
and 8e-5 (770M); if training is unstable, try betas=(0.95, 0.98).

Implementation notes:
- Two code paths share the math in lion(): a per-tensor for-loop and a torch._foreach_* path over
  tensors grouped by (device, dtype). foreach=None picks foreach when every param sits on CUDA or XPU
  and the for-loop otherwise (torch.optim's policy: on CPU foreach ops fall back to the same per-tensor
  kernels, so they are no faster). On CPU both paths give bit-identical results.
- bf16/fp16 params keep their momentum in fp32: the step is computed in fp32 and the result is written
  back in the param's dtype (an EMA with β2 = 0.99 stalls when stored in bf16). load_state_dict keeps
  that fp32 momentum instead of casting it to the param's dtype as torch.optim would.
- Complex params are optimized as their view_as_real: real and imaginary parts each get their own sign.
- lr may be a 0-d tensor; it is read as a Python float at each step, so it gives bit-identical results
  to the same float lr (on CUDA that read costs one host sync per param group per step).
"""

import torch
from torch.optim import Optimizer

LOW_PRECISION = (torch.bfloat16, torch.float16)
FOREACH_DEVICES = ("cuda", "xpu")


class Lion(Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, foreach=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError(f"lr as a Tensor must hold one element, got shape {tuple(lr.shape)}")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid lr: {float(lr)} (must be >= 0)")
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas} (must be a pair (beta1, beta2))")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid betas[{i}]: {beta} (must be in [0, 1))")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts without these options, e.g. from lion-pytorch
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)

    def load_state_dict(self, state_dict):
        # torch.optim casts floating state to the param's dtype; put the saved fp32 momentum of
        # bf16/fp16 params back so a resumed run continues exactly where it stopped.
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        for p, saved_id in zip(params, saved_ids):
            saved = state_dict["state"].get(saved_id, {})
            if p.dtype in LOW_PRECISION and "exp_avg" in saved:
                self.state[p]["exp_avg"] = saved["exp_avg"].to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if "exp_avg" not in state:
                    state_dtype = torch.float32 if p.dtype in LOW_PRECISION else p.dtype
                    state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
            if not params:
                continue

            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type in FOREACH_DEVICES for p in params)
            beta1, beta2 = group["betas"]
            lion(params, grads, exp_avgs, lr=float(group["lr"]), beta1=beta1, beta2=beta2,
                 weight_decay=group["weight_decay"], maximize=group["maximize"], foreach=foreach)
        return loss


def lion(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, maximize, foreach):
    """Functional Lion step on lists of tensors, updating params and exp_avgs in place."""
    step_fn = _foreach_lion if foreach else _single_tensor_lion
    step_fn(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, maximize=maximize)


def _single_tensor_lion(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, maximize):
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        if torch.is_complex(param):
            param, grad, exp_avg = torch.view_as_real(param), torch.view_as_real(grad), torch.view_as_real(exp_avg)
        # bf16/fp16 params: work on an fp32 copy (the momentum's dtype), write it back at the end
        work = param if param.dtype == exp_avg.dtype else param.to(exp_avg.dtype)
        grad = grad.to(exp_avg.dtype)
        if maximize:
            grad = -grad

        if weight_decay != 0:
            work.mul_(1 - lr * weight_decay)  # θ ← θ·(1 − lr·wd)
        update = torch.lerp(exp_avg, grad, 1 - beta1)  # c = β1·m + (1 − β1)·g
        work.add_(update.sign_(), alpha=-lr)  # θ ← θ − lr·sign(c)
        exp_avg.lerp_(grad, 1 - beta2)  # m ← β2·m + (1 − β2)·g
        if work is not param:
            param.copy_(work)


def _foreach_lion(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, maximize):
    groups = {}  # (device, dtype) -> ([params], [grads], [exp_avgs]); foreach ops need uniform lists
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        lists = groups.setdefault((param.device, param.dtype), ([], [], []))
        for lst, tensor in zip(lists, (param, grad, exp_avg)):
            lst.append(torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor)

    for group_params, group_grads, group_exp_avgs in groups.values():
        state_dtype = group_exp_avgs[0].dtype
        low_precision = group_params[0].dtype != state_dtype
        work = [p.to(state_dtype) for p in group_params] if low_precision else group_params
        group_grads = [g.to(state_dtype) for g in group_grads]
        if maximize:
            group_grads = torch._foreach_neg(group_grads)

        if weight_decay != 0:
            torch._foreach_mul_(work, 1 - lr * weight_decay)  # θ ← θ·(1 − lr·wd)
        updates = torch._foreach_lerp(group_exp_avgs, group_grads, 1 - beta1)  # c = β1·m + (1 − β1)·g
        torch._foreach_sign_(updates)
        torch._foreach_add_(work, updates, alpha=-lr)  # θ ← θ − lr·sign(c)
        torch._foreach_lerp_(group_exp_avgs, group_grads, 1 - beta2)  # m ← β2·m + (1 − β2)·g
        if low_precision:
            torch._foreach_copy_(group_params, work)
