"""How the loop builds each optimizer and picks its code path (optimizers.py).
"""
import optimizers
import train
from model import GPT, GPTConfig


def test_compile_false_keeps_sophia_off_its_compiled_kernel(monkeypatch):
    import sophia
    monkeypatch.setattr(sophia, "FUSED_MIN_NUMEL", 1)          # the tiny model would otherwise be "small"
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64))
    for compile_, expected in [(False, "foreach"), (True, "fused")]:
        cfg = train.TrainConfig(optimizer_name="sophiag", compile=compile_, device="cpu")
        train.resolve(cfg, world_size=1)
        optimizer = optimizers.build_optimizer(cfg, model)
        assert optimizer._choose_path(optimizer.param_groups[0]) == expected


def test_hessian_bias_correction_is_a_config_key():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64))
    for name in ("sophiag", "sophiah"):
        for on in (False, True):
            cfg = train.TrainConfig(optimizer_name=name, hessian_bias_correction=on, device="cpu")
            train.resolve(cfg, world_size=1)
            optimizer = optimizers.build_optimizer(cfg, model)
            assert [g["hessian_bias_correction"] for g in optimizer.param_groups] == [on, on]
    assert train.TrainConfig().hessian_bias_correction is False       # upstream's rule by default
