"""Sophia-G on an FSDP2-sharded model (DTensor parameters) must take the steps it takes on the same model
unsharded, on every code path, and stats() must cover every shard.

    torchrun --standalone --nproc_per_node=2 tests/workers/fsdp_sophia_worker.py    # tests/test_sophia.py, slow tier

check() raises AssertionError on the first mismatch; tests/test_sophia.py also calls it in its own process, as a
world of one (the fast tier). The step is elementwise, so a shard's values equal the whole tensor's up to a
few ulps: a shard's vectorized loop ends at other elements than the whole tensor's, and on some CPUs its scalar
tail rounds a multiply-add differently.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from sophia import SophiaG  # noqa: E402

PATHS = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
ULPS = dict(rtol=1e-6, atol=1e-9)    # ~8 fp32 ulps of an O(1) value after 6 steps


def model():
    torch.manual_seed(0)     # odd sizes: the shards are uneven (one rank gets fewer rows)
    return torch.nn.Sequential(torch.nn.Linear(6, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5, bias=False))


def check(paths):
    """Compare sharded and unsharded Sophia-G on each of `paths`, in the current process group."""
    rank, world = dist.get_rank(), dist.get_world_size()
    for path in paths:
        flags = PATHS[path]
        plain, sharded = model(), model()
        for layer in (sharded[0], sharded[2], sharded):
            fully_shard(layer)
        groups = lambda m: [dict(params=[m[0].weight, m[2].weight]), dict(params=[m[0].bias], weight_decay=0.0)]  # noqa: E731
        opt_plain = SophiaG(groups(plain), lr=3e-2, rho=0.05, weight_decay=0.1, **flags)
        opt_sharded = SophiaG(groups(sharded), lr=3e-2, rho=0.05, weight_decay=0.1, **flags)
        generator = torch.Generator().manual_seed(1)
        for it in range(6):
            x, y = torch.randn(8, 6, generator=generator), torch.randn(8, 5, generator=generator)
            # FSDP reduce-scatters (averages) the gradient of each rank's half batch; the unsharded model gets
            # that same gradient, gathered, so any difference comes from the optimizer
            torch.nn.functional.mse_loss(sharded(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
            for p, q in zip(plain.parameters(), sharded.parameters()):
                p.grad = q.grad.full_tensor()
            for opt in (opt_plain, opt_sharded):
                opt.step(bs=8)
                if it % 3 == 2:
                    opt.update_hessian()
                opt.zero_grad(set_to_none=True)
        for (name, p), q in zip(plain.named_parameters(), sharded.parameters()):
            state_p, state_q = opt_plain.state[p], opt_sharded.state[q]
            for a, b, what in ((p, q, "parameter"), (state_p["exp_avg"], state_q["exp_avg"], "exp_avg"),
                               (state_p["hessian"], state_q["hessian"], "hessian")):
                torch.testing.assert_close(b.full_tensor(), a.detach(), **ULPS,
                                           msg=lambda m: f"{path}: {name} {what}: {m}")
            assert float(state_p["step"]) == float(state_q["step"]) == 6
        stats_plain, stats_sharded = opt_plain.stats(8), opt_sharded.stats(8)
        for key, value in stats_plain.items():
            assert type(stats_sharded[key]) is torch.Tensor, f"{path}: stats()[{key}] is not a plain tensor"
            torch.testing.assert_close(stats_sharded[key], value, rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"{path}: stats()[{key}]: {m}")
        assert 0 < float(stats_plain["win_rate"]) < 1, f"{path}: a win rate of {float(stats_plain['win_rate'])}"


def main():
    dist.init_process_group("gloo")
    check(list(PATHS))
    if dist.get_rank() == 0:
        print("fsdp2 sophia: all paths match the unsharded model")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
