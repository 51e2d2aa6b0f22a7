"""Tests for lion.py: the update rule against a float64 reference, foreach == for-loop, state_dict
round trips, argument validation, dtypes, convergence and param-group isolation."""

import pytest
import torch

import lion as lion_module
from lion import Lion

SHAPES = [(5, 3), (7,), (2, 3, 4), (1,)]


def make_params(shapes=SHAPES, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)) for shape in shapes]


def random_grads(params, step, seed=1):
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def reference_lion(params, grads_per_step, lr, beta1, beta2, weight_decay, maximize):
    """The Lion rule written out literally, in float64; returns (params, momenta) after every step."""
    thetas = [p.detach().double().clone() for p in params]
    momenta = [torch.zeros_like(t) for t in thetas]
    trajectory = []
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = -g.double() if maximize else g.double()
            thetas[i] = thetas[i] * (1 - lr * weight_decay)
            c = beta1 * momenta[i] + (1 - beta1) * g
            thetas[i] = thetas[i] - lr * torch.sign(c)
            momenta[i] = beta2 * momenta[i] + (1 - beta2) * g
        trajectory.append(([t.clone() for t in thetas], [m.clone() for m in momenta]))
    return trajectory


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_float64_reference(foreach, weight_decay, maximize):
    lr, beta1, beta2, steps = 0.01, 0.9, 0.99, 8
    params = make_params()
    grads_per_step = [random_grads(params, step) for step in range(steps)]
    expected = reference_lion(params, grads_per_step, lr, beta1, beta2, weight_decay, maximize)

    opt = Lion(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, maximize=maximize, foreach=foreach)
    for step, grads in enumerate(grads_per_step):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        expected_params, expected_momenta = expected[step]
        for p, want_p, want_m in zip(params, expected_params, expected_momenta):
            torch.testing.assert_close(p.detach(), want_p, rtol=0, atol=1e-12)
            torch.testing.assert_close(opt.state[p]["exp_avg"], want_m, rtol=0, atol=1e-12)
    assert all(not torch.equal(p, start) for p, start in zip(params, make_params()))  # a real trajectory


def run_mixed(foreach, steps=7):
    """Several groups (different lr/wd), mixed dtypes, a zero-size param, a param frozen for some steps."""
    fp32 = make_params([(4, 3), (0, 5), (6,)], dtype=torch.float32, seed=2)
    fp64 = make_params([(3, 2)], dtype=torch.float64, seed=3)
    bf16 = make_params([(8,)], dtype=torch.bfloat16, seed=4)
    cplx = [torch.nn.Parameter(torch.randn(5, dtype=torch.complex64, generator=torch.Generator().manual_seed(5)))]
    params = fp32 + fp64 + bf16 + cplx
    opt = Lion([
        {"params": fp32 + cplx},
        {"params": fp64, "lr": 0.003, "weight_decay": 0.0},
        {"params": bf16, "lr": 0.05, "betas": (0.95, 0.98)},
    ], lr=0.01, weight_decay=0.2, foreach=foreach)
    for step in range(steps):
        for p, g in zip(params, random_grads(params, step, seed=7)):
            p.grad = g
        if step in (2, 3):
            fp32[2].grad = None  # frozen on these steps
        if step == 4:
            for p in params:
                p.grad = None  # a step with no gradients at all
        opt.step()
    return params, opt


def test_foreach_equals_for_loop():
    params_loop, opt_loop = run_mixed(foreach=False)
    params_foreach, opt_foreach = run_mixed(foreach=True)
    for p_loop, p_foreach in zip(params_loop, params_foreach):
        assert p_loop.dtype == p_foreach.dtype
        assert torch.equal(p_loop, p_foreach)
        assert torch.equal(opt_loop.state[p_loop]["exp_avg"], opt_foreach.state[p_foreach]["exp_avg"])
    assert params_loop[1].shape == (0, 5)
    assert opt_loop.state[params_loop[1]]["exp_avg"].shape == (0, 5)


def test_foreach_none_uses_for_loop_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(lion_module, "_single_tensor_lion", lambda *args, **kwargs: calls.append("for-loop"))
    monkeypatch.setattr(lion_module, "_foreach_lion", lambda *args, **kwargs: calls.append("foreach"))
    params = make_params()
    for p in params:
        p.grad = torch.ones_like(p)
    Lion(params).step()
    Lion(params, foreach=True).step()
    assert calls == ["for-loop", "foreach"]


def test_param_without_grad_is_left_alone():
    params = make_params()
    opt = Lion(params, lr=0.1, weight_decay=0.5)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert params[1] not in opt.state  # never had a grad: no state, no decay
    assert torch.equal(params[1], make_params()[1])

    frozen_param, frozen_momentum = params[0].detach().clone(), opt.state[params[0]]["exp_avg"].clone()
    params[0].grad = None
    params[1].grad = torch.ones_like(params[1])
    opt.step()
    assert torch.equal(params[0], frozen_param)
    assert torch.equal(opt.state[params[0]]["exp_avg"], frozen_momentum)
    assert not torch.equal(params[1], make_params()[1])


@pytest.mark.parametrize("foreach", [False, True])
def test_maximize_equals_minimizing_the_negated_gradient(foreach):
    params_max, params_min = make_params(), make_params()
    opt_max = Lion(params_max, lr=0.01, weight_decay=0.1, maximize=True, foreach=foreach)
    opt_min = Lion(params_min, lr=0.01, weight_decay=0.1, foreach=foreach)
    for step in range(5):
        for p_max, p_min, g in zip(params_max, params_min, random_grads(params_max, step)):
            p_max.grad, p_min.grad = g, -g
        opt_max.step()
        opt_min.step()
    for p_max, p_min in zip(params_max, params_min):
        assert torch.equal(p_max, p_min)
        assert torch.equal(opt_max.state[p_max]["exp_avg"], opt_min.state[p_min]["exp_avg"])  # both average −g


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_continues_identically(tmp_path, foreach):
    def make():
        params = make_params(dtype=torch.float32) + make_params([(6,)], dtype=torch.bfloat16, seed=9)
        opt = Lion([{"params": params[:2]}, {"params": params[2:], "lr": 0.02, "weight_decay": 0.0}],
                   lr=0.01, weight_decay=0.1, foreach=foreach)
        return params, opt

    def train(params, opt, steps):
        for step in steps:
            for p, g in zip(params, random_grads(params, step)):
                p.grad = g
            opt.step()

    params, opt = make()
    train(params, opt, range(3))
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, tmp_path / "ckpt.pt")

    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_params, resumed_opt = make()
    with torch.no_grad():
        for p, saved in zip(resumed_params, checkpoint["params"]):
            p.copy_(saved)
    resumed_opt.load_state_dict(checkpoint["opt"])
    bf16_momentum = resumed_opt.state[resumed_params[-1]]["exp_avg"]
    assert bf16_momentum.dtype == torch.float32
    assert torch.equal(bf16_momentum, opt.state[params[-1]]["exp_avg"])  # not rounded through bf16

    train(params, opt, range(3, 6))
    train(resumed_params, resumed_opt, range(3, 6))
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg"], resumed_opt.state[q]["exp_avg"])
    assert resumed_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_loads_state_dict_without_newer_group_options():
    """Groups saved without maximize/foreach (as lion-pytorch saves them) get the defaults."""
    params = make_params()
    for p in params:
        p.grad = torch.ones_like(p)
    opt = Lion(params, lr=0.01)
    opt.step()
    state_dict = opt.state_dict()
    for group in state_dict["param_groups"]:
        del group["maximize"], group["foreach"]
    resumed = Lion(params)
    resumed.load_state_dict(state_dict)
    assert resumed.param_groups[0]["maximize"] is False and resumed.param_groups[0]["foreach"] is None
    before = [p.detach().clone() for p in params]
    resumed.step()
    assert all(torch.equal(p, b - 0.01) for p, b in zip(params, before))  # momentum and grad both positive


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1e-3), "lr"),
    (dict(lr=torch.tensor([1e-3, 2e-3])), "lr"),
    (dict(betas=(1.0, 0.99)), r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (dict(betas=(0.9,)), "betas"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Lion(make_params(), **kwargs)


def test_sparse_gradient_raises():
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        Lion(embedding.parameters()).step()


@pytest.mark.parametrize("foreach", [False, True])
def test_converges_on_quadratic_and_returns_closure_loss(foreach):
    gen = torch.Generator().manual_seed(0)
    scales = torch.rand(20, generator=gen) * 10 + 0.1  # badly conditioned diagonal quadratic
    target = torch.randn(20, generator=gen)
    x = torch.nn.Parameter(torch.zeros(20))
    opt = Lion([x], lr=0.05, foreach=foreach)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (scales * (x - target) ** 2).sum()
        loss.backward()
        return loss

    first_loss = closure().item()
    for step in range(200):
        for group in opt.param_groups:
            group["lr"] = 0.05 * (1 - step / 200)  # decay so the ±lr sign steps settle instead of chattering
        loss = opt.step(closure)
    assert loss.item() < 1e-4 * first_loss


@pytest.mark.parametrize("foreach", [False, True])
def test_group_with_zero_lr_and_wd_does_not_move(foreach):
    frozen, trained = make_params(seed=0), make_params(seed=1)
    opt = Lion([{"params": frozen, "lr": 0.0, "weight_decay": 0.0}, {"params": trained}],
               lr=0.01, weight_decay=0.1, foreach=foreach)
    for step in range(4):
        for p, g in zip(frozen + trained, random_grads(frozen + trained, step)):
            p.grad = g
        opt.step()
    assert all(torch.equal(p, start) for p, start in zip(frozen, make_params(seed=0)))
    assert all((p != start).all() for p, start in zip(trained, make_params(seed=1)))


@pytest.mark.parametrize("foreach", [False, True])
def test_bf16_param_keeps_fp32_momentum(foreach):
    """bf16 params: momentum in fp32 (a bf16 EMA with β2 = 0.99 stalls); each step is the fp32 step rounded to bf16."""
    lr, beta1, beta2, weight_decay = 2.0 ** -5, 0.9, 0.99, 0.5
    param = torch.nn.Parameter(torch.randn(64, generator=torch.Generator().manual_seed(0)).bfloat16())
    opt = Lion([param], lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, foreach=foreach)
    theta, momentum = param.detach().float(), torch.zeros(64)
    for _ in range(400):
        grad = torch.ones(64, dtype=torch.bfloat16)
        param.grad = grad
        opt.step()
        # fp32 reference, with the param rounded to bf16 after every step
        theta = theta * (1 - lr * weight_decay)
        theta = (theta - lr * torch.sign(torch.lerp(momentum, grad.float(), 1 - beta1))).bfloat16().float()
        momentum = torch.lerp(momentum, grad.float(), 1 - beta2)
    assert param.dtype == torch.bfloat16
    assert opt.state[param]["exp_avg"].dtype == torch.float32
    assert torch.equal(param.float(), theta)
    torch.testing.assert_close(opt.state[param]["exp_avg"], momentum, rtol=0, atol=1e-6)
    assert (opt.state[param]["exp_avg"] > 0.98).all()  # 1 − 0.99^400 ≈ 0.982; a bf16 EMA would stop near 0.5


@pytest.mark.parametrize("foreach", [False, True])
def test_complex_param_follows_its_view_as_real(foreach):
    gen = torch.Generator().manual_seed(0)
    complex_param = torch.nn.Parameter(torch.randn(6, dtype=torch.complex64, generator=gen))
    real_param = torch.nn.Parameter(torch.view_as_real(complex_param.detach()).clone())
    opt_complex = Lion([complex_param], lr=0.01, weight_decay=0.1, foreach=foreach)
    opt_real = Lion([real_param], lr=0.01, weight_decay=0.1, foreach=foreach)
    for _ in range(5):
        grad = torch.randn(6, dtype=torch.complex64, generator=gen)
        complex_param.grad, real_param.grad = grad, torch.view_as_real(grad).clone()
        opt_complex.step()
        opt_real.step()
        assert torch.equal(torch.view_as_real(complex_param.detach()), real_param.detach())
        assert torch.equal(torch.view_as_real(opt_complex.state[complex_param]["exp_avg"]),
                           opt_real.state[real_param]["exp_avg"])


@pytest.mark.parametrize("foreach", [False, True])
def test_tensor_lr_is_bit_identical_to_float_lr(foreach):
    tensor_lr = torch.tensor(0.01)  # float32: compare against exactly the value it holds
    params_tensor, params_float = make_params(dtype=torch.float32), make_params(dtype=torch.float32)
    opt_tensor = Lion(params_tensor, lr=tensor_lr, weight_decay=0.1, foreach=foreach)
    opt_float = Lion(params_float, lr=tensor_lr.item(), weight_decay=0.1, foreach=foreach)
    for step in range(5):
        for p, q, g in zip(params_tensor, params_float, random_grads(params_tensor, step)):
            p.grad, q.grad = g, g.clone()
        opt_tensor.step()
        opt_float.step()
    assert all(torch.equal(p, q) for p, q in zip(params_tensor, params_float))
