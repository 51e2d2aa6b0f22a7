"""The shipped configs: the GPT-2 sizes, the hyperparameter table in docs/reproduce.md, the tiny configs.
"""
import re

import pytest
import torch

import train
from configurator import load_config
from helpers import ROOT
from model import GPT, GPTConfig


def test_gpt2_configs_build_the_paper_sizes():
    sizes = {"small": 124, "medium": 355, "large": 774, "xl": 1557}   # 124.4M, 354.6M, 773.6M, 1556.8M at vocab
                                                                      # 50304, no biases
    for size, millions in sizes.items():
        for opt in ("sophiag", "adam", "lion", "sophiah", "muon"):
            cfg, _ = load_config(train.TrainConfig, [f"config/train_gpt2_{size}_{opt}.py"])
            train.resolve(cfg, world_size=8)
            assert cfg.total_bs == 480 and cfg.block_size == 1024 and cfg.grad_clip == 1.0
            assert cfg.warmup_iters == 2000 and cfg.max_iters == 100000
            assert cfg.min_lr == pytest.approx(0.05 * cfg.learning_rate)
        with torch.device("meta"):
            model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=50304))
        assert round(model.num_params(non_embedding=False) / 1e6) == millions


def test_gpt2_configs_match_the_docs_table():
    """Every row of the GPT-2 table in docs/reproduce.md is what its config file resolves to (on 8 processes), so the
    documented hyperparameters cannot drift from the ones that run."""
    rows = re.findall(r"^\| `(train_gpt2_\w+\.py)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| "
                      r"([^|]+) \| ([^|]+) \| ([^|]+) \|$", (ROOT / "docs" / "reproduce.md").read_text(), re.M)
    assert len(rows) == 20
    names = {"Sophia-G": "sophiag", "Sophia-H": "sophiah", "AdamW": "adamw", "Lion": "lion", "Muon": "muon"}
    for name, model, optimizer, lr, min_lr, wd, betas, rho, micro in rows:
        cfg, _ = load_config(train.TrainConfig, [f"config/{name}"])
        train.resolve(cfg, world_size=8)
        assert f"{cfg.n_layer}/{cfg.n_head}/{cfg.n_embd}" in model or "(" not in model, name
        assert names[optimizer.strip()] == cfg.optimizer_name, name
        assert (float(lr), float(min_lr), float(wd)) == pytest.approx((cfg.learning_rate, cfg.min_lr,
                                                                       cfg.weight_decay)), name
        assert [float(b) for b in betas.split(",")] == [cfg.beta1, cfg.beta2], name
        if cfg.optimizer_name.startswith("sophia"):
            assert float(rho) == cfg.rho, name
        assert micro.strip() == f"{cfg.batch_size} × {cfg.total_bs // (8 * cfg.batch_size)}", name


def test_tiny_configs_differ_only_in_the_optimizer():
    sophia, _ = load_config(train.TrainConfig, ["config/train_tiny_sophiag.py"])
    adam, _ = load_config(train.TrainConfig, ["config/train_tiny_adam.py"])
    own = {"optimizer_name", "learning_rate", "weight_decay", "beta1", "beta2", "rho", "hess_interval", "hess_total_bs",
           "out_dir", "wandb_run_name"}
    differ = {k for k, v in vars(sophia).items() if vars(adam)[k] != v}
    assert differ <= own and {"optimizer_name", "out_dir"} <= differ
