"""Why a run stops, and that nothing saved is lost: signals (SIGTERM, Ctrl-C), non-finite losses and gradients, a
diverged model, out of memory, and an error under torchrun printed once.
"""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import train
from configurator import UserError
from helpers import (ENV, ROOT, TINY, assert_clean_error, assert_same, copy_run, events, tiny, tiny_argv,
                     train_cli)


def test_stop_signal_checkpoints_and_resume_continues_exactly(data_dir, tmp_path, monkeypatch, capsys, one_thread):
    """The fast sibling of the SIGTERM test: the signal arrives during iteration 5; the loop finishes that step,
    checkpoints and returns; the resumed run then logs what a straight run logs, bit for bit."""
    args = ["--eval_interval=50", "--eval_sequences=16", "--max_iters=12"]
    train.main(tiny_argv(data_dir, tmp_path / "straight", *args))
    log_step = train.Trainer._log_step

    def log_and_signal(self, iter_num, *rest):
        log_step(self, iter_num, *rest)
        if iter_num == 5:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(train.Trainer, "_log_step", log_and_signal)
    capsys.readouterr()
    train.main(tiny_argv(data_dir, tmp_path / "stopped", *args))
    assert "stopped by SIGTERM after iteration 5; run the same command again to continue" in capsys.readouterr().out
    assert checkpoint.load(str(tmp_path / "stopped" / "ckpt.pt"))["iter_num"] == 6
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # the loop's handler is gone again
    monkeypatch.setattr(train.Trainer, "_log_step", log_step)
    train.main(tiny_argv(data_dir, tmp_path / "stopped", *args, "--init_from=resume"))
    assert_same(events(tmp_path / "straight"), events(tmp_path / "stopped"), range(12))


def test_ctrl_c_is_acknowledged_at_once(data_dir, tmp_path, monkeypatch, capsys, one_thread):
    log_step = train.Trainer._log_step

    def log_and_interrupt(self, iter_num, *rest):
        log_step(self, iter_num, *rest)
        if iter_num == 1:
            os.kill(os.getpid(), signal.SIGINT)
            assert "SIGINT: stopping after this step, then checkpointing" in capsys.readouterr().err   # at once
    monkeypatch.setattr(train.Trainer, "_log_step", log_and_interrupt)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=6", "--eval_sequences=8"))
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 2


def test_ctrl_c_while_starting_up_exits_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "train_sophiag.py", TINY, f"--out_dir={tmp_path}"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)                   # python is still importing torch
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr


def poison_forward(monkeypatch, bad_calls):
    original, calls = train.GPT.forward, {"n": 0}

    def forward(self, idx, targets=None, **kwargs):
        logits, loss = original(self, idx, targets, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(train.GPT, "forward", forward)


def test_nonfinite_skip_policy(data_dir, tmp_path, monkeypatch, one_thread):
    poison_forward(monkeypatch, bad_calls={7})       # micro-step 1 of iteration 3 (2 micro-steps each)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=12", "--nonfinite=skip"))
    rows = events(tmp_path)
    assert rows[3]["train/loss"] is None and rows[3]["train/skipped_steps"] == 1     # NaN is written as null
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():       # strict JSON: no NaN, no Infinity
        json.loads(line, parse_constant=pytest.fail)
    assert rows[11]["train/skipped_steps"] == 1 and math.isfinite(rows[11]["train/loss"])
    ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_nonfinite_stop_policy_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch, one_thread):
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=12", "--eval_interval=6"))
    before = hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest()
    poison_forward(monkeypatch, bad_calls={3})
    with pytest.raises(UserError, match="non-finite loss or gradient at iteration 13"):
        train.main(tiny_argv(data_dir, tmp_path, "--max_iters=24", "--eval_interval=6", "--init_from=resume"))
    assert hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest() == before


def test_a_nonfinite_model_is_never_saved(data_dir, tmp_path, one_thread):
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=6", "--eval_interval=6"))
    before = hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest()
    trainer = train.make_trainer(tiny_argv(data_dir, tmp_path, "--max_iters=12", "--init_from=resume"))
    try:
        with torch.no_grad():
            next(trainer.raw_model.parameters())[0, 0] = float("inf")
        trainer.state.iter_num = 12
        trainer.save_checkpoint(is_best=True)
    finally:
        trainer.stop.restore()
    assert hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest() == before
    assert not (tmp_path / "ckpt_0000012.pt").exists()


def test_a_diverged_model_never_rotates_out_a_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys, one_thread):
    evaluate = train.Trainer.estimate_loss

    def diverged_at_4(self):
        losses = evaluate(self)
        return {k: float("nan") for k in losses} if self.state.iter_num == 4 else losses
    monkeypatch.setattr(train.Trainer, "estimate_loss", diverged_at_4)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=6", "--eval_interval=2", "--eval_sequences=16",
               "--keep_last=1",
                         "--nonfinite=skip"))
    assert "not saving a checkpoint at iteration 4: the val loss is nan" in capsys.readouterr().out
    assert [os.path.basename(f) for f in checkpoint.numbered_files(str(tmp_path))] == ["ckpt_0000006.pt"]
    assert events(tmp_path, "eval")[4]["val/loss"] is None


def test_out_of_memory_is_one_line_and_keeps_the_checkpoints(run_of_8, data_dir, tmp_path, monkeypatch, capsys):
    out = copy_run(run_of_8, tmp_path)
    before = (out / "ckpt.pt").read_bytes()

    def out_of_memory(self, iter_num):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes. "
                           "Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(train.Trainer, "train_step", out_of_memory)
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume", "--max_iters=12",
                       "--eval_interval=4")
    assert_clean_error(result, "out of memory at iteration 8", "micro-batches of 8 x 64 tokens",
                       "asking for 118 MiB", "lower --batch_size", "checkpoints on disk are intact")
    assert (out / "ckpt.pt").read_bytes() == before


@pytest.mark.slow
def test_under_torchrun_an_error_is_printed_once(data_dir, tmp_path):
    proc = tiny(data_dir, tmp_path, "--learnig_rate=1e-3", nproc=2, check=False)
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: --learnig_rate=1e-3: 'learnig_rate' is not a config key; did you mean "
                           "'learning_rate'? (--help lists every key)"]
    assert "traceback : error: --learnig_rate=1e-3" in proc.stderr      # torchrun's summary names it as the cause
