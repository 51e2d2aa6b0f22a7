"""The training loop's main job, end to end on the tiny config: the README's run through the CLI, exact resume,
every optimizer through the same loop, the learning-rate schedule. CPU only.
"""
import json

import numpy as np
import pytest

import checkpoint
import train
from helpers import assert_same, events, recounted_win_rate, tiny, tiny_argv


def test_tiny_sophia_trains(straight_run):
    out, proc = straight_run
    train_rows, eval_rows = events(out), events(out, "eval")
    assert sorted(train_rows) == list(range(100))
    first = np.mean([train_rows[i]["train/loss"] for i in range(10)])
    last = np.mean([train_rows[i]["train/loss"] for i in range(90, 100)])
    assert last < 0.7 * first
    assert sorted(eval_rows) == [0, 50, 100] and eval_rows[100]["val/loss"] < eval_rows[0]["val/loss"] - 1.0
    for i in range(100):
        win = train_rows[i]["train/win_rate"]
        assert (win == 0.0) if i < 9 else (0.0 < win <= 1.0)
    # the Hessian EMA changes exactly after the steps at iterations 9, 19, ..., and only then
    norms = [train_rows[i]["hessian_norm"] for i in range(100)]
    changed = [i for i in range(1, 100) if norms[i] != norms[i - 1]]
    assert changed == list(range(9, 100, 10))
    assert train_rows[99]["tokens"] == 100 * 16 * 64
    ckpt = checkpoint.load(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 100 and not any(k.startswith("_orig_mod") for k in ckpt["model"])
    assert set(ckpt["optimizer"]["state"][0]) == {"step", "exp_avg", "hessian"}
    # the refresh at iteration 99 is the last change to the state: the saved m and h give the logged win rate
    assert recounted_win_rate(ckpt) == train_rows[99]["train/win_rate"]
    assert "Traceback" not in proc.stderr


def test_resume_is_exact(data_dir, straight_run, tmp_path):
    """12 iterations, then --init_from=resume to 24: iterations 12-23 equal the straight run's, bit for bit."""
    tiny(data_dir, tmp_path, "--max_iters=12")
    tiny(data_dir, tmp_path, "--max_iters=24", "--init_from=resume")
    assert_same(events(straight_run[0]), events(tmp_path), range(24))
    assert json.loads(open(tmp_path / "metrics.jsonl").readlines()[-1])["iter"] == 24


@pytest.mark.parametrize("optimizer", ["sophiah", "lion", "adamw", "muon"])
def test_other_optimizers_train_through_the_same_loop(data_dir, tmp_path, one_thread, optimizer):
    train.main(tiny_argv(data_dir, tmp_path, f"--optimizer_name={optimizer}", "--max_iters=20", "--eval_interval=20",
                         "--eval_sequences=32", "--learning_rate=1e-3", "--weight_decay=0.1", "--beta1=0.9",
                         "--beta2=0.95", "--rho=0.05"))
    rows = events(tmp_path)
    assert np.mean([rows[i]["train/loss"] for i in range(15, 20)]) < rows[0]["train/loss"] - 0.5
    assert ("train/win_rate" in rows[19]) == (optimizer == "sophiah")
    if optimizer == "sophiah":
        assert 0 < rows[19]["train/win_rate"] <= 1 and rows[19]["hessian_norm"] > 0


def test_lr_schedule():
    cfg = train.TrainConfig(learning_rate=6e-4, warmup_iters=2000, max_iters=100000, min_lr=None)
    train.resolve(cfg, world_size=1)
    assert cfg.min_lr == pytest.approx(3e-5) and cfg.lr_decay_iters == 100000
    assert train.get_lr(0, cfg) == 0.0
    assert train.get_lr(1000, cfg) == pytest.approx(3e-4)
    assert train.get_lr(2000, cfg) == pytest.approx(6e-4)
    assert train.get_lr(51000, cfg) == pytest.approx((6e-4 + 3e-5) / 2)
    assert train.get_lr(100000, cfg) == pytest.approx(3e-5)
    lrs = [train.get_lr(i, cfg) for i in range(2000, 100001, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_val_loss_does_not_depend_on_batch_size(data_dir, tmp_path, one_thread):
    """eval_sequences fixes the windows an evaluation scores: micro-batches of 8, 4 or 16 rows (8 leaves a
    partial last one) give the same val/loss, up to the order of float sums; other windows give another."""
    def val_loss(*flags):
        out = tmp_path / "-".join(flags)
        train.main(tiny_argv(data_dir, out, "--eval_only=True", *flags))
        return events(out, "eval")[0]["val/loss"]
    losses = [val_loss(f"--batch_size={size}", "--eval_sequences=20") for size in (8, 4, 16)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)
    assert abs(val_loss("--batch_size=8", "--eval_sequences=12") - losses[0]) > 1e-4
