"""Muon + AdamW as one optimizer (muon.py): the parameter split, one step equal to the two torch optimizers' steps,
the schedule reaching both parts, state_dict round trips, the optimizer_impl flags, and (slow) exact resume of the
tiny Muon config through train.py."""
import copy
import io

import pytest
import torch

import metrics
import optimizers
import train
from helpers import assert_same, events, run_script
from model import GPT, GPTConfig
from muon import MuonAdamW


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=64, bias=True))


def muon_config(**overrides):
    cfg = train.TrainConfig(optimizer_name="muon", device="cpu", **overrides)
    train.resolve(cfg, world_size=1)
    return cfg


def set_grads(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def test_split_muon_on_block_matrices_adamw_on_the_rest():
    model = tiny_model()
    optimizer = optimizers.build_optimizer(muon_config(), model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]]
    assert muon == [n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.ndim == 2]
    assert len(muon) == 2 * 4                      # per block: attention qkv and projection, the MLP's two matrices
    assert "transformer.wte.weight" in adamw and "transformer.wpe.weight" in adamw   # wte is the tied head
    assert all(not n.startswith("transformer.h.") or "ln" in n or n.endswith("bias") for n in adamw)
    assert sorted(muon + adamw) == sorted(names.values())             # every parameter once
    assert [g["part"] for g in optimizer.param_groups] == ["muon", "adamw"]   # the decayed group was all block matrices
    # AdamW keeps the model's decay rule (no decay on embeddings, norms, biases); Muon decays its matrices
    assert optimizer.muon.param_groups[0]["weight_decay"] == 0.1
    assert {g["weight_decay"] for g in optimizer.adamw.param_groups} == {0.0}


def test_one_step_is_the_two_torch_optimizers_steps_and_the_schedule_reaches_both():
    model, reference = tiny_model(), tiny_model()
    optimizer = optimizers.build_optimizer(muon_config(learning_rate=1e-2), model)
    matrices = [p for b in reference.transformer.h for p in b.parameters() if p.ndim == 2]
    ids = {id(p) for p in matrices}
    muon = torch.optim.Muon(matrices, lr=1e-2, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in reference.param_groups(0.1)]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2, betas=(0.9, 0.95), fused=True)
    for step in range(3):
        lr = 1e-2 * (step + 1) / 3                 # the loop sets every group's lr: both parts must follow
        for group in optimizer.param_groups + muon.param_groups + adamw.param_groups:
            group["lr"] = lr
        set_grads(model, step)
        set_grads(reference, step)
        optimizer.step()
        muon.step()
        adamw.step()
        optimizer.zero_grad()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert len(optimizer.state) == len(list(model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_continues_exactly():
    model = tiny_model()
    cfg = muon_config(learning_rate=1e-2)
    optimizer = optimizers.build_optimizer(cfg, model)
    for step in range(2):
        set_grads(model, step)
        optimizer.step()
    saved = roundtrip(optimizer.state_dict())
    # torch's layout: indices over Muon's parameters, then AdamW's
    assert sorted(saved["state"]) == list(range(len(list(model.parameters()))))
    assert set(saved["state"][0]) == {"momentum_buffer"} and "exp_avg_sq" in saved["state"][8]
    clone = copy.deepcopy(model)
    again = optimizers.build_optimizer(cfg, clone)
    again.load_state_dict(saved)
    for step in range(2, 4):
        set_grads(model, step)
        set_grads(clone, step)
        optimizer.step()
        again.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="saved groups"):
        again.load_state_dict({**saved, "param_groups": saved["param_groups"][1:]})


def test_optimizer_impl_chooses_the_adamw_parts_path_and_the_code_hash_covers_muon():
    model = tiny_model()
    for impl, expected in [("auto", "fused"), ("single", "single"), ("foreach", "foreach"), ("fused", "fused")]:
        optimizer = optimizers.build_optimizer(muon_config(optimizer_impl=impl), model)
        assert optimizer.describe_path() == f"muon: single-tensor Newton-Schulz, adamw: {expected}"
    assert "muon.py" in metrics.code_info()["sha256"]       # the run's code fingerprint covers Muon's file too
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW(model.param_groups(0.1), [model.transformer.wpe.weight, model.transformer.h[0].ln_1.weight],
                  lr=1e-3)


@pytest.mark.slow
def test_tiny_muon_config_trains_and_resumes_exactly(data_dir, tmp_path):
    """python train.py config/train_tiny_muon.py (24 iterations): the loss falls; 12 iterations, then
    --init_from=resume to 24, logs the straight run's values bit for bit."""
    args = ["config/train_tiny_muon.py", f"--data_dir={data_dir}", "--max_iters=24", "--lr_decay_iters=100",
            "--eval_interval=12", "--eval_sequences=16", "--threads=1"]
    run_script([*args, f"--out_dir={tmp_path / 'straight'}"], script="train.py")
    run_script([*args, f"--out_dir={tmp_path / 'resumed'}", "--max_iters=12"], script="train.py")
    run_script([*args, f"--out_dir={tmp_path / 'resumed'}", "--init_from=resume"], script="train.py")
    straight, resumed = events(tmp_path / "straight"), events(tmp_path / "resumed")
    assert sum(straight[i]["train/loss"] for i in range(20, 24)) / 4 < straight[0]["train/loss"] - 1.5
    assert_same(straight, resumed, range(24), keys=("train/loss", "grad_norm", "param_norm", "momentum_norm"))
    assert events(tmp_path / "straight", "eval")[24]["val/loss"] == events(tmp_path / "resumed", "eval")[24]["val/loss"]
