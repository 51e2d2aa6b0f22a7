"""End-to-end tests of the training loop on the tiny config: training, DDP / FSDP equivalence, exact resume,
preemption, non-finite handling, wandb, and clear errors for bad input. CPU only.

Fast tier: the README's tiny run through the CLI, exact resume, the loop wrapped in DDP and FSDP2 over a world
of one process (the same collectives and checkpoint gathering, in this process), the other optimizers,
preemption, non-finite values and bad input (in this process, through run_cli as the entry points do).
Slow tier (python -m pytest -m slow): the same loop under torchrun on 2 processes, and as a 2-node job (two
torchrun agents on loopback), compared with one; the memory of a sharded save.

What each comparison asserts:
- DDP on 2 processes with one thread each, and resume on one process, are bit for bit: the same micro-batches
  go through the same kernels, and a sum over two ranks or a division by 2 rounds nowhere.
- FSDP is not: norms and reductions of sharded tensors add in another order (~1e-7 relative). Sophia's clip
  decisions amplify that: in the 2-process run the loss drifts 2e-7 by iteration 15, 4e-6 by 24, 5e-5 by 30 and
  2e-3 by 40 (a 1-process run on 2 threads drifts alike). So losses are compared up to iteration 24 to 1e-4
  (a 25x margin; a real fault, such as a dropped micro-batch or a missing shard's gradient, changes the loss by
  more at the step where it happens). The win rate is a count of coordinates with |m| < ρ·bs·h, and a
  coordinate sitting at the threshold flips with the last bit of m or h: it is compared as a number of flipped
  coordinates (at most 1e-4 of them; 4 of 836,736 seen), and recomputed exactly from the saved state.
"""
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import model as model_module
import train
from configurator import UserError, load_config
from helpers import (ENV, ROOT, TINY, assert_clean_error, assert_same, bad_file, events, max_rel_diff,
                     run_cli_in_process, run_script, run_two_agents, tiny, tiny_argv)
from model import GPT, GPTConfig

LOSS_RTOL_FSDP = 1e-4          # FSDP against one process, up to iteration 24 (see above)
FLIPS_FSDP = 1e-4              # share of coordinates whose side of the clipping threshold may differ


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    """The tiny Sophia-G config as shipped: 100 iterations, 10 Hessian refreshes, one process."""
    out = tmp_path_factory.mktemp("straight")
    proc = tiny(data_dir, out)
    return out, proc


def sophia_coordinates(ckpt):
    return sum(s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values())


def recounted_win_rate(ckpt):
    """stats()['win_rate'] recomputed in this process from a checkpoint's full (gathered) optimizer state."""
    cfg = train.TrainConfig(**ckpt["config"])
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    optimizer = train.build_optimizer(cfg, model)
    optimizer.load_state_dict(ckpt["optimizer"])
    return optimizer.stats(bs=cfg.total_bs * cfg.block_size)["win_rate"].item()


def assert_close_to_one_process(a, b, iters, n_coordinates, loss_rtol=LOSS_RTOL_FSDP):
    """FSDP against one process: losses to a relative tolerance, win rates to a number of flipped coordinates."""
    assert max_rel_diff(a, b, iters) <= loss_rtol
    flips = max(abs(a[i]["train/win_rate"] - b[i]["train/win_rate"]) * n_coordinates for i in iters)
    assert flips <= FLIPS_FSDP * n_coordinates, f"{flips:.0f} of {n_coordinates} coordinates flipped"


def assert_same_layout(wrapped, plain):
    """A DDP / FSDP run's checkpoint is the full, unsharded one a plain run writes, the tied embedding saved once."""
    shapes = lambda sd: {k: v.shape for k, v in sd.items()}  # noqa: E731
    assert shapes(wrapped["model"]) == shapes(plain["model"])
    assert wrapped["optimizer"]["param_groups"] == plain["optimizer"]["param_groups"]
    assert [shapes(s) for s in wrapped["optimizer"]["state"].values()] == \
        [shapes(s) for s in plain["optimizer"]["state"].values()]
    model = wrapped["model"]
    assert model["lm_head.weight"].data_ptr() == model["transformer.wte.weight"].data_ptr()


# ------------------------------------------------------------------------------------------------------
# the main job

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


# ------------------------------------------------------------------------------------------------------
# DDP and FSDP2 wrapping on one process (fast), in this process

WRAPPED = {"sophiag": [], "adamw": ["--optimizer_name=adamw", "--weight_decay=0.1", "--beta1=0.9", "--beta2=0.95",
                                    "--learning_rate=1e-3"],
           "lion": ["--optimizer_name=lion", "--weight_decay=0.1", "--beta1=0.9", "--beta2=0.95",
                    "--learning_rate=1e-3"],
           "muon": ["--optimizer_name=muon", "--learning_rate=1e-3"],
           "sophiag_bias_corrected": ["--hessian_bias_correction=True"]}     # its refresh count through DCP too


def set_world_of_one(monkeypatch, on, env):
    for key, value in env.items():
        if on:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("wrap,optimizer", [("ddp", "sophiag"), ("fsdp", "sophiag"), ("fsdp", "adamw"),
                                            ("fsdp", "lion"), ("ddp", "muon"), ("fsdp", "sophiag_bias_corrected")])
def test_wrapped_on_one_process_takes_the_plain_steps(data_dir, tmp_path, monkeypatch, single_rank, one_thread,
                                                      wrap, optimizer):
    """The fast sibling of the 2-process tests below: a run that resumes 1 process -> DDP or FSDP2 (over a world
    of one, in this process) -> 1 process takes the steps of a plain run. It goes through the process group, the
    DDP / FSDP wrapping, FSDP's lockstep evaluation and both checkpoint formats: a file sliced into shards, a
    sharded (DCP) checkpoint resumed by FSDP (at 7, Sophia-G) and read by 1 process (at 10); the iterations 4-9
    run wrapped and end with a Hessian refresh, so the wrapped run's checkpoint at 10 holds the state its last
    logged win rate was computed from."""
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                      "MASTER_PORT")}
    args = [*WRAPPED[optimizer], "--eval_interval=2", "--eval_iters=3"]
    set_world_of_one(monkeypatch, False, env)
    train.main(tiny_argv(data_dir, tmp_path / "plain", *args, "--max_iters=12"))
    run = tmp_path / "wrapped"
    train.main(tiny_argv(data_dir, run, *args, "--max_iters=4"))
    set_world_of_one(monkeypatch, True, env)
    if (wrap, optimizer) == ("fsdp", "sophiag"):      # and FSDP from its own sharded checkpoint (its shards)
        train.main(tiny_argv(data_dir, run, *args, "--max_iters=7", "--init_from=resume", "--fsdp=True"))
    train.main(tiny_argv(data_dir, run, *args, "--max_iters=10", "--init_from=resume", f"--fsdp={wrap == 'fsdp'}"))
    set_world_of_one(monkeypatch, False, env)
    # FSDP writes a sharded checkpoint (one DCP file per rank), DDP a single file; ckpt.pt names either
    assert checkpoint.is_sharded(str(run / "ckpt.pt")) == (wrap == "fsdp")
    assert sorted(os.listdir(run / "ckpt_0000010.dcp")) == [".metadata", "__0_0.distcp", "meta.pt"] \
        if wrap == "fsdp" else (run / "ckpt_0000010.pt").is_file()
    wrapped_ckpt = checkpoint.load(str(run / "ckpt.pt"))
    train.main(tiny_argv(data_dir, run, *args, "--max_iters=12", "--init_from=resume"))

    a, b = events(tmp_path / "plain"), events(run)
    runs = [json.loads(line) for line in open(run / "metrics.jsonl")]
    runs = [r for r in runs if r["event"] == "run"]
    layouts = [False, True, True, False] if (wrap, optimizer) == ("fsdp", "sophiag") else \
        [False, wrap == "fsdp", False]
    assert [r["world_size"] for r in runs] == [1] * len(layouts)
    assert [r["config"]["fsdp"] for r in runs] == layouts
    sophia = optimizer.startswith("sophiag")
    if wrap == "ddp":      # all-reduce over one rank, division by 1: nothing rounds differently
        assert_same(a, b, range(12))
    elif sophia:
        assert_close_to_one_process(a, b, range(12), sophia_coordinates(wrapped_ckpt), loss_rtol=1e-5)
    else:
        assert max_rel_diff(a, b, range(12)) <= 1e-5
    plain_ckpt = checkpoint.load(str(tmp_path / "plain" / "ckpt_0000010.pt"))
    assert_same_layout(wrapped_ckpt, plain_ckpt)
    if sophia:
        assert recounted_win_rate(wrapped_ckpt) == b[9]["train/win_rate"] > 0
    if optimizer == "sophiag_bias_corrected":   # each parameter's refresh count, saved and resumed with its shards
        counts = {float(s["hessian_step"]) for s in wrapped_ckpt["optimizer"]["state"].values()}
        assert counts == {float(s["hessian_step"]) for s in plain_ckpt["optimizer"]["state"].values()} and \
            len(counts) == 1 and counts.pop() > 0


@pytest.mark.parametrize("case", ["checkpointing", "hsdp", "bf16"])
def test_fsdp2_options_against_the_plain_run(data_dir, straight_run, tmp_path, monkeypatch, single_rank, one_thread,
                                             case):
    """activation_checkpointing recomputes the same activations: bit for bit on 1 process. fsdp_shard_size (a
    2-D mesh, HSDP; one replica x one shard here) with activation checkpointing: the plain steps to 1e-5.
    fsdp_mixed_precision=bf16: near the fp32 losses but not equal (the compute is bf16), while the saved master
    weights and Sophia's m and h stay fp32. (On a world of one; the 2-process HSDP run is in the slow tier.)"""
    flags = {"checkpointing": ["--activation_checkpointing=True"],
             "hsdp": ["--fsdp=True", "--fsdp_shard_size=1", "--activation_checkpointing=True"],
             "bf16": ["--fsdp=True", "--fsdp_mixed_precision=bf16"]}[case]
    if case == "checkpointing":
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(key)
    block_forward, calls = model_module.Block.forward, []

    def counted(self, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return block_forward(self, *args, **kwargs)
    monkeypatch.setattr(model_module.Block, "forward", counted)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=6", "--eval_interval=6", "--eval_iters=1", *flags))
    a, b = events(straight_run[0]), events(tmp_path)
    # 4 blocks x 2 micro-steps x 6 iterations forward with gradients, and as often again recomputed in the backward
    assert sum(calls) == 4 * 2 * 6 * (1 if case == "bf16" else 2)
    if case == "checkpointing":
        assert_same(a, b, range(6))
    elif case == "hsdp":
        assert max_rel_diff(a, b, range(6)) <= 1e-5
    else:
        assert 1e-6 < max_rel_diff(a, b, range(6)) <= 3e-2
        ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
        assert {t.dtype for t in ckpt["model"].values()} == {torch.float32}
        assert {s[k].dtype for s in ckpt["optimizer"]["state"].values() for k in ("exp_avg", "hessian")} == \
            {torch.float32}


# ------------------------------------------------------------------------------------------------------
# 2 processes under torchrun (slow)

@pytest.mark.slow
def test_two_processes_reproduce_one(data_dir, straight_run, tmp_path):
    """The global batch is a function of (seed, iteration) only: 2 ranks x 1 micro-step = 1 rank x 2, bit for bit."""
    tiny(data_dir, tmp_path, nproc=2)
    assert_same(events(straight_run[0]), events(tmp_path), range(100))


@pytest.mark.slow
def test_fsdp_reproduces_one_process(data_dir, straight_run, tmp_path):
    """FSDP2 shards parameters, gradients and optimizer state over 2 ranks, yet takes the steps of 1 process (the
    rank without a Hessian micro-batch joins with a dummy pass), up to the rounding of sharded sums (see the
    module docstring). Its checkpoint is the same full, unsharded one as 1 process writes, with the tied
    embedding saved once, and its last logged win rate is exactly the one its saved state gives."""
    tiny(data_dir, tmp_path, "--fsdp=True", nproc=2)
    a, b = events(straight_run[0]), events(tmp_path)
    one, sharded = (checkpoint.load(str(out / "ckpt.pt")) for out in (straight_run[0], tmp_path))
    assert_close_to_one_process(a, b, range(25), sophia_coordinates(one))
    assert max_rel_diff(events(straight_run[0], "eval"), events(tmp_path, "eval"), [50, 100], "val/loss") <= 1e-2
    assert_same_layout(sharded, one)
    assert recounted_win_rate(sharded) == b[99]["train/win_rate"]


@pytest.mark.slow
def test_fsdp_resume_across_world_sizes(data_dir, straight_run, tmp_path):
    """1 process -> FSDP on 2 (each rank takes its shard of the saved optimizer state) -> 1 process. An odd
    eval_iters leaves one rank a micro-batch short in each evaluation: it must not change the val loss, which
    on the same weights differs only in the order the micro-batch losses are summed."""
    tiny(data_dir, tmp_path, "--max_iters=10")
    evals = ["--eval_iters=5", "--eval_interval=10"]
    tiny(data_dir, tmp_path, "--max_iters=20", "--init_from=resume", "--fsdp=True", *evals, nproc=2)
    tiny(data_dir, tmp_path, "--max_iters=24", "--init_from=resume", *evals)
    ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
    assert_close_to_one_process(events(straight_run[0]), events(tmp_path), range(24), sophia_coordinates(ckpt))
    at_20 = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    at_20 = [r["val/loss"] for r in at_20 if r["event"] == "eval" and r["iter"] == 20]   # FSDP's, then 1 process's
    assert len(at_20) == 2 and at_20[0] == pytest.approx(at_20[1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_fsdp_with_other_optimizers(data_dir, tmp_path, optimizer):
    """torch's fused AdamW and our Lion on FSDP-sharded parameters, resumed halfway: the steps of 1 process. No
    clip decisions here: AdamW's step is smooth in its inputs, and Lion's sign flips only where β1·m + (1−β1)·g
    is within rounding of 0, so 12 steps stay within 1e-5."""
    args = [*WRAPPED[optimizer], "--eval_interval=6"]
    tiny(data_dir, tmp_path / "one", *args, "--max_iters=12", script="train.py")
    tiny(data_dir, tmp_path / "fsdp", *args, "--max_iters=6", "--fsdp=True", script="train.py", nproc=2)
    tiny(data_dir, tmp_path / "fsdp", *args, "--max_iters=12", "--fsdp=True", "--init_from=resume",
         script="train.py", nproc=2)
    assert max_rel_diff(events(tmp_path / "one"), events(tmp_path / "fsdp"), range(12)) <= 1e-5


@pytest.mark.slow
def test_resume_on_a_different_world_size(data_dir, straight_run, tmp_path):
    """2 processes (DDP) for 12 iterations, then 1 process to 24: bit for bit the straight run."""
    tiny(data_dir, tmp_path, "--max_iters=12", nproc=2)
    tiny(data_dir, tmp_path, "--max_iters=24", "--init_from=resume")
    assert_same(events(straight_run[0]), events(tmp_path), range(24))


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues_without_replay(data_dir, straight_run, tmp_path):
    cmd = [sys.executable, "train_sophiag.py", TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(tmp_path / "metrics.jsonl") and len(events(tmp_path)) >= 15:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stdout and "Traceback" not in stderr
    stopped_at = checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"]
    assert 15 <= stopped_at < 100 and max(events(tmp_path)) == stopped_at - 1
    tiny(data_dir, tmp_path, "--init_from=resume")
    b = events(tmp_path)
    assert sorted(b) == list(range(100))
    assert_same(events(straight_run[0]), b, range(100))


# ------------------------------------------------------------------------------------------------------
# two nodes on loopback, and sharded checkpoints (slow)

@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_agents_on_loopback_match_one_process_and_resume_on_one(data_dir, straight_run, tmp_path, fsdp):
    """A 2-node job on this machine (two torchrun agents of one process each, the c10d rendezvous, gloo over the
    loopback interface) takes the steps of 1 process: DDP bit for bit, FSDP to 1e-4 (the module docstring says
    why not exactly). Its checkpoint at 12 resumes on 1 process to 24; FSDP's is sharded, one file per rank,
    and also resumes under DDP on 2 processes."""
    out = tmp_path / "two_nodes"
    run_two_agents([TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=12", f"--fsdp={fsdp}"])
    runs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["world_size"] for r in runs if r["event"] == "run"] == [2]
    one = events(straight_run[0])
    if fsdp:
        assert sorted(os.listdir(out / "ckpt_0000012.dcp")) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                                 "meta.pt"]
        n = sophia_coordinates(checkpoint.load(str(out / "ckpt.pt")))
        assert_close_to_one_process(one, events(out), range(12), n)
        ddp = shutil.copytree(out, tmp_path / "ddp", symlinks=True)
        tiny(data_dir, ddp, "--max_iters=24", "--init_from=resume", nproc=2)
        assert_close_to_one_process(one, events(ddp), range(24), n)
    else:
        assert (out / "ckpt_0000012.pt").is_file()
        assert_same(one, events(out), range(12))
    tiny(data_dir, out, "--max_iters=24", "--init_from=resume")
    if fsdp:
        assert_close_to_one_process(one, events(out), range(24), n)
    else:
        assert_same(one, events(out), range(24))


@pytest.mark.slow
def test_hsdp_on_four_processes_reproduces_one(data_dir, straight_run, tmp_path):
    """fsdp_shard_size=2 on 4 processes: a 2-D mesh, 2 replicas x 2 shards (HSDP), with activation checkpointing:
    the steps of 1 process to 1e-4. Its sharded checkpoint resumes under plain FSDP on 2 processes, each rank
    reading its new shards from the 2 x 2 layout (the 2-node tests resume sharded checkpoints on 1 process)."""
    tiny(data_dir, tmp_path, "--max_iters=8", "--batch_size=4", "--fsdp=True", "--fsdp_shard_size=2",
         "--activation_checkpointing=True", "--eval_interval=8", "--eval_iters=2", nproc=4)
    assert sorted(os.listdir(tmp_path / "ckpt_0000008.dcp"))[1:3] == ["__0_0.distcp", "__1_0.distcp"]
    tiny(data_dir, tmp_path, "--max_iters=12", "--init_from=resume", "--fsdp=True", "--eval_interval=8",
         "--eval_iters=2", nproc=2)
    assert max_rel_diff(events(straight_run[0]), events(tmp_path), range(12)) <= 1e-4


@pytest.mark.slow
def test_fsdp_sharded_save_stays_below_the_full_state_in_memory(tmp_path):
    """Under FSDP on 2 processes no rank materializes the full state to save it: each rank's peak memory during
    the sharded save is a small fraction of the full model + optimizer state, while gathering full tensors (the
    control) costs at least that state on rank 0 (measured 1.3 MB against 183 MB, for 177 MB of state)."""
    # glibc returns freed blocks at once, so that memory freed earlier cannot hide a copy made by the save
    proc = run_script([tmp_path], script="tests/dcp_memory_worker.py", nproc=2,
                      env={**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    full = result["full_state_bytes"]
    assert result["shard_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert max(result["sharded_peak"]) < full / 4, result
    assert result["gathered_peak"][0] > 0.9 * full, result


# ------------------------------------------------------------------------------------------------------
# the other optimizers, wandb, preemption (in this process)

@pytest.mark.parametrize("optimizer", ["sophiah", "lion", "adamw", "muon"])
def test_other_optimizers_train_through_the_same_loop(data_dir, tmp_path, one_thread, optimizer):
    train.main(tiny_argv(data_dir, tmp_path, f"--optimizer_name={optimizer}", "--max_iters=20", "--eval_interval=20",
                         "--eval_iters=4", "--learning_rate=1e-3", "--weight_decay=0.1", "--beta1=0.9",
                         "--beta2=0.95", "--rho=0.05"))
    rows = events(tmp_path)
    assert np.mean([rows[i]["train/loss"] for i in range(15, 20)]) < rows[0]["train/loss"] - 0.5
    assert ("train/win_rate" in rows[19]) == (optimizer == "sophiah")
    if optimizer == "sophiah":
        assert 0 < rows[19]["train/win_rate"] <= 1 and rows[19]["hessian_norm"] > 0


def test_wandb_offline_summary(data_dir, tmp_path):
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    tiny(data_dir, tmp_path, "--max_iters=20", "--eval_interval=10", "--eval_iters=4", "--wandb_log=True", env=env)
    summary = wandb_offline_summary(tmp_path)
    assert 0 < summary["train/win_rate"] <= 1
    assert math.isfinite(summary["train/loss"]) and math.isfinite(summary["val/loss"])
    assert summary["_step"] == 20


def wandb_offline_summary(out_dir):
    """Read the summary records of an offline run file (a LevelDB-style log of protobuf records)."""
    import glob
    import struct
    from wandb.proto import wandb_internal_pb2
    (path,) = glob.glob(os.path.join(out_dir, "wandb", "offline-run-*", "run-*.wandb"))
    data, pos, chunks, records = open(path, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            chunks = chunk
        elif kind in (3, 4):
            chunks += chunk
        if kind in (1, 4):
            records.append(chunks)
    summary = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    return summary


def test_stop_signal_checkpoints_and_resume_continues_exactly(data_dir, tmp_path, monkeypatch, capsys, one_thread):
    """The fast sibling of the SIGTERM test: the signal arrives during iteration 5; the loop finishes that step,
    checkpoints and returns; the resumed run then logs what a straight run logs, bit for bit."""
    args = ["--eval_interval=50", "--eval_iters=2", "--max_iters=12"]
    train.main(tiny_argv(data_dir, tmp_path / "straight", *args))
    log_step = train.Trainer._log_step

    def log_and_signal(self, iter_num, *rest):
        log_step(self, iter_num, *rest)
        if iter_num == 5:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(train.Trainer, "_log_step", log_and_signal)
    capsys.readouterr()
    train.main(tiny_argv(data_dir, tmp_path / "stopped", *args))
    assert "stopped by SIGTERM after iteration 5; continue with --init_from=resume" in capsys.readouterr().out
    assert checkpoint.load(str(tmp_path / "stopped" / "ckpt.pt"))["iter_num"] == 6
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # the loop's handler is gone again
    monkeypatch.setattr(train.Trainer, "_log_step", log_step)
    train.main(tiny_argv(data_dir, tmp_path / "stopped", *args, "--init_from=resume"))
    assert_same(events(tmp_path / "straight"), events(tmp_path / "stopped"), range(12))


# ------------------------------------------------------------------------------------------------------
# non-finite values (in this process, with a loss that turns NaN on chosen forward calls)

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
        trainer.state["iter_num"] = 12
        trainer.save_checkpoint(is_best=True)
    finally:
        trainer.stop.restore()
    assert hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest() == before
    assert not (tmp_path / "ckpt_0000012.pt").exists()


def test_smaller_hessian_batch_keeps_the_curvature_scale(data_dir, tmp_path, one_thread):
    """bs·h must estimate the Gauss-Newton diagonal whatever the Hessian batch: with half the sequences,
    E[ĝ⊙ĝ] doubles, and the rescaling brings it back (without it this ratio would be 2)."""
    means = {}
    for hess_total_bs in (16, 8):
        trainer = train.make_trainer(tiny_argv(data_dir, tmp_path / str(hess_total_bs), "--beta2=0.0",
                                               "--grad_clip=0", f"--hess_total_bs={hess_total_bs}"))
        trainer.stop.restore()
        hessians = [s for s in trainer.optimizer.state.values()]
        totals = []
        for it in range(9, 409, 10):            # 40 refreshes on different batches; β2 = 0 keeps the last one
            trainer.hessian_refresh(it)
            totals.append(sum(s["hessian"].sum().item() for s in trainer.optimizer.state.values()))
        means[hess_total_bs] = np.mean(totals)
        assert not hessians    # state appears only at the first refresh
    assert means[8] / means[16] == pytest.approx(1.0, abs=0.15)



def test_hessian_micro_batch_size_does_not_change_the_estimate(data_dir, tmp_path, one_thread):
    """hess_batch_size only cuts the Hessian batch differently (labels are seeded per sequence): the same h."""
    hessians = {}
    for size in (8, 2):      # the default, min(batch_size=8, hess_total_bs=8), and micro-batches of 2
        trainer = train.make_trainer(tiny_argv(data_dir, tmp_path / str(size), "--hess_total_bs=8",
                                               f"--hess_batch_size={size}"))
        trainer.stop.restore()
        assert trainer.cfg.hess_batch_size == size
        trainer.hessian_refresh(9)
        hessians[size] = [s["hessian"] for s in trainer.optimizer.state.values()]
    for a, b in zip(hessians[8], hessians[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    assert sum(h.sum() for h in hessians[2]) > 0


def test_logged_time_is_the_mean_over_each_log_window(data_dir, tmp_path, one_thread, monkeypatch):
    """iter_time_ms is the mean over the iterations since the previous log line (the device is synchronized
    only there), and those windows add up to the cumulative training time; MFU with the Hessian pass counts
    its forward-backward on hess_total_bs sequences once per hess_interval steps."""
    import model as model_module
    monkeypatch.setattr(model_module, "peak_flops", lambda device: 1e12)   # an MFU on CPU, for the arithmetic
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=31", "--log_interval=10", "--eval_interval=1000"))
    rows = events(tmp_path)
    assert sorted(rows) == [0, 10, 20, 30]
    for previous, it in [(0, 10), (10, 20), (20, 30)]:
        window = rows[it]["time"] - rows[previous]["time"]
        assert rows[it]["iter_time_ms"] * (it - previous) / 1e3 == pytest.approx(window, rel=1e-9)
        # tiny config: hess_total_bs 4 of total_bs 16, every 10 steps, and one refresh in each window
        assert rows[it]["mfu_with_hessian"] / rows[it]["mfu"] == pytest.approx(1 + 4 / 16 / 10, rel=1e-9)
    assert rows[0]["mfu_with_hessian"] == rows[0]["mfu"]        # iteration 0: no refresh yet
    final = events(tmp_path, "eval")[31]
    assert final["time"] >= rows[30]["time"]



def test_eval_tasks_log_in_context_accuracy_without_disturbing_training(data_dir, tmp_path, one_thread):
    """eval_tasks scores SuperGLUE tasks through lm-eval at each evaluation (icl/<task> in metrics.jsonl) and
    leaves the training exactly as without it: with dropout on, a leaked reseeding or a model left in eval mode
    would change the losses after the first evaluation."""
    pytest.importorskip("lm_eval")
    from icl_fixtures import write_task_data
    task_data = write_task_data(tmp_path / "tasks", tasks=("boolq", "copa"), n_validation=3, n_train=2)
    common = ["--max_iters=3", "--eval_interval=2", "--eval_iters=2", "--dropout=0.1"]
    train.main(tiny_argv(data_dir, tmp_path / "plain", *common))
    train.main(tiny_argv(data_dir, tmp_path / "icl", *common, "--eval_tasks=boolq,copa", "--eval_tasks_limit=3",
                         f"--eval_tasks_data={task_data}"))
    plain, icl = events(tmp_path / "plain"), events(tmp_path / "icl")
    assert [icl[i]["train/loss"] for i in range(3)] == [plain[i]["train/loss"] for i in range(3)]
    evals = events(tmp_path / "icl", "eval")
    assert sorted(evals) == [0, 2, 3]
    for record in evals.values():
        assert {"icl/boolq", "icl/copa"} <= set(record) and all(0 <= record[k] <= 1 for k in ("icl/boolq", "icl/copa"))
    assert not any(k.startswith("icl/") for k in events(tmp_path / "plain", "eval")[2])


# ------------------------------------------------------------------------------------------------------
# bad input: one clear message, exit status 2, no traceback, nothing saved is damaged

@pytest.fixture(scope="module")
def saved_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    tiny(data_dir, out, "--max_iters=4", "--eval_interval=4", "--eval_iters=2")
    return out


def train_cli(capsys, *argv):
    """train_sophiag.py's __main__ in this process: run_cli(train.main, defaults=optimizer_name='sophiag')."""
    return run_cli_in_process(train.main, [TINY, *map(str, argv)], capsys, defaults=dict(optimizer_name="sophiag"))


BAD_INPUTS = {
    "unknown key on the command line": (["--learnig_rate=1e-3"], ["learnig_rate", "learning_rate"]),
    "wrong type": (["--max_iters=1e5"], ["max_iters", "int"]),
    "missing config file": (["config/nope.py"], ["config/nope.py"]),
    "zero iterations": (["--max_iters=0"], ["max_iters", "positive"]),
    "negative interval": (["--eval_interval=-5"], ["eval_interval", "positive"]),
    "zero hessian interval": (["--hess_interval=0"], ["hess_interval"]),
    "total_bs not divisible": (["--total_bs=20"], ["total_bs=20", "batch_size"]),
    "hessian batch not divisible": (["--hess_total_bs=6", "--hess_batch_size=4"], ["hess_total_bs=6",
                                                                                   "hess_batch_size=4"]),
    "accumulation does not multiply out": (["--gradient_accumulation_steps=3"], ["gradient_accumulation_steps=3",
                                                                                 "total_bs=16"]),
    "block_size larger than the data": (["--block_size=100000000"], ["block_size"]),
    "missing dataset": (["--dataset=nosuchdata", "--data_dir=None"], ["data/nosuchdata", "prepare"]),
    "sophia-h under fsdp": (["--optimizer_name=sophiah", "--fsdp=True"], ["sophiah", "--fsdp=False"]),
    "muon under fsdp": (["--optimizer_name=muon", "--fsdp=True"], ["muon", "shard", "use DDP (--fsdp=False)"]),
    "fp16 under fsdp": (["--dtype=float16", "--fsdp=True"], ["float16", "bfloat16"]),
    "mixed precision without fsdp": (["--fsdp_mixed_precision=bf16"], ["fsdp_mixed_precision", "--fsdp=True"]),
    "shard size not dividing": (["--fsdp=True", "--fsdp_shard_size=3"], ["fsdp_shard_size=3", "[1]"]),
    "a device that does not exist": (["--device=nodevice"], ["--device=nodevice", "--device=cpu"]),
    "in-context tasks under fsdp": (["--eval_tasks=boolq", "--fsdp=True"], ["eval_tasks", "eval.py --tasks"]),
    "unknown in-context task": (["--eval_tasks=boolq,glue"], ["glue", "boolq"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(data_dir, tmp_path, capsys, case):
    args, fragments = BAD_INPUTS[case]
    base = [f"--data_dir={data_dir}"] if "--data_dir=None" not in args else []
    result = train_cli(capsys, *base, f"--out_dir={tmp_path / 'out'}", *[a for a in args if a != "--data_dir=None"])
    assert_clean_error(result, *fragments)


def test_bad_input_from_the_command_line(data_dir, tmp_path):
    """The same, through a real process: what a user sees."""
    assert_clean_error(tiny(data_dir, tmp_path, "--learnig_rate=1e-3", check=False), "learnig_rate", "learning_rate")


def test_typo_in_a_config_file_names_the_file_and_line(tmp_path, data_dir):
    config = bad_file(tmp_path, "typo.py", "learnin_rate = 1e-3\n")
    assert_clean_error(run_script([TINY, config, f"--data_dir={data_dir}"], check=False), "learnin_rate",
                       f"{config}, line 1")
    # in a file that another one includes: the included file and its line, and where it was included from
    bad_file(tmp_path, "base.py", f'include({str(ROOT / TINY)!r})\n\nbatch_sise = 4\n')
    top = bad_file(tmp_path, "top.py", '# my run\ninclude("base.py")\nmax_iters = 10\n')
    proc = run_script([top, f"--data_dir={data_dir}"], check=False)
    assert_clean_error(proc, "base.py, line 3", "'batch_sise'", "did you mean 'batch_size'", "top.py, line 2")


def test_checkpoint_with_other_model_dims(saved_run, data_dir, capsys):
    before = hashlib.sha256((saved_run / "ckpt.pt").read_bytes()).hexdigest()
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={saved_run}", "--n_embd=64", "--init_from=resume")
    assert_clean_error(result, "n_embd=128", "64")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={saved_run}")   # not resume
    assert_clean_error(result, "already holds", "--init_from=resume")
    assert hashlib.sha256((saved_run / "ckpt.pt").read_bytes()).hexdigest() == before


def test_corrupt_checkpoint(tmp_path, data_dir, capsys):
    bad_file(tmp_path, "ckpt.pt", b"PK\x03\x04 not really a zip")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--init_from=resume")
    assert_clean_error(result, "ckpt.pt", "corrupt")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'empty'}", "--init_from=resume")
    assert_clean_error(result, "no checkpoint")


def test_unwritable_out_dir(tmp_path, data_dir, capsys):
    blocker = bad_file(tmp_path, "a_file", "not a directory")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={blocker / 'sub'}")
    assert_clean_error(result, "out_dir", "not writable")


# ------------------------------------------------------------------------------------------------------
# what a resume may change, and other ways a run could be lost or corrupted

@pytest.fixture(scope="module")
def run_of_8(data_dir, tmp_path_factory):
    """An 8-iteration tiny run with a checkpoint at 4 and 8, to resume from (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run8")
    tiny(data_dir, out, "--max_iters=8", "--eval_interval=4", "--eval_iters=2", "--keep_last=3")
    return out


def copy_run(run, tmp_path):
    import shutil
    return shutil.copytree(run, tmp_path / "run", copy_function=shutil.copy2)


def test_resume_refuses_to_change_the_experiment(run_of_8, data_dir, tmp_path, capsys):
    out = copy_run(run_of_8, tmp_path)
    before = (out / "ckpt.pt").read_bytes()
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume", "--max_iters=12",
                       "--seed=5", "--learning_rate=0.05", "--total_bs=32", "--rho=1.0", "--eval_interval=6")
    assert_clean_error(result, "would change the experiment", "seed=1337 in the checkpoint, 5 now", "total_bs=16",
                       "learning_rate=0.002", "rho=0.05", "min_lr=0.0001 in the checkpoint, 0.0025", "(it follows "
                       "learning_rate)", "--resume_override=total_bs,learning_rate,rho,seed,")
    assert "eval_interval" not in result.stderr and "max_iters" not in result.stderr    # those may change
    # a schedule that would follow the new max_iters is a change too, named with the way out
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume", "--max_iters=12",
                       "--lr_decay_iters=None")
    assert_clean_error(result, "lr_decay_iters=100 in the checkpoint, 12 now", "pass the checkpoint's value")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume",
                       "--resume_override=max_iters,n_layer")
    assert_clean_error(result, "max_iters, n_layer cannot be named there")
    assert (out / "ckpt.pt").read_bytes() == before


def test_resume_override_allows_named_changes_logs_them_and_counts_tokens(run_of_8, data_dir, tmp_path, one_thread):
    out = copy_run(run_of_8, tmp_path)
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=10", "--eval_interval=4",
                         "--eval_iters=2", "--total_bs=32", "--rho=0.5", "--resume_override=total_bs, rho"))
    runs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    resumed = [r for r in runs if r["event"] == "run"][-1]
    assert resumed["resume_overrides"] == {"total_bs": [16, 32], "rho": [0.05, 0.5]}
    rows = events(out)
    assert rows[7]["tokens"] == 8 * 16 * 64 and rows[9]["tokens"] == 8 * 16 * 64 + 2 * 32 * 64   # the real history
    assert events(out, "eval")[10]["tokens"] == rows[9]["tokens"]


def test_resume_of_a_finished_run_says_so(run_of_8, data_dir, tmp_path, capsys, one_thread):
    out = copy_run(run_of_8, tmp_path)
    lines = (out / "metrics.jsonl").read_text()
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=8", "--eval_interval=4"))
    assert "already at iteration 8, max_iters=8: nothing to train" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == lines


def test_resume_into_a_wrong_out_dir_creates_nothing(data_dir, tmp_path, capsys):
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'typo'}", "--init_from=resume")
    assert_clean_error(result, "no checkpoint in", "typo")
    assert not (tmp_path / "typo").exists()


def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(run_of_8, data_dir, tmp_path, capsys, one_thread):
    from test_checkpoint import alter_bytes_of
    out = copy_run(run_of_8, tmp_path)
    latest = checkpoint.load(str(out / "ckpt.pt"))
    for name in ("ckpt.pt", "ckpt_0000008.pt"):          # one file in the run; copying it broke the hard link
        alter_bytes_of(out / name, latest["model"]["transformer.h.0.mlp.c_fc.weight"])
    capsys.readouterr()
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=8", "--eval_interval=4", "--eval_iters=2"))
    captured = capsys.readouterr()
    assert "ckpt.pt is damaged" in captured.err and "trying the previous checkpoint" in captured.err
    assert "resuming from" in captured.out and "ckpt_0000004.pt at iteration 4" in captured.out
    assert_same(events(run_of_8), events(out), range(8))       # iterations 4-7 retrained, exactly as before


def test_a_diverged_model_never_rotates_out_a_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys, one_thread):
    evaluate = train.Trainer.evaluate

    def diverged_at_4(self):
        losses = evaluate(self)
        return {k: float("nan") for k in losses} if self.state["iter_num"] == 4 else losses
    monkeypatch.setattr(train.Trainer, "evaluate", diverged_at_4)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=6", "--eval_interval=2", "--eval_iters=2", "--keep_last=1",
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


def test_compile_false_keeps_sophia_off_its_compiled_kernel(monkeypatch):
    import sophia
    monkeypatch.setattr(sophia, "FUSED_MIN_NUMEL", 1)          # the tiny model would otherwise be "small"
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64))
    for compile_, expected in [(False, "foreach"), (True, "fused")]:
        cfg = train.TrainConfig(optimizer_name="sophiag", compile=compile_, device="cpu")
        train.resolve(cfg, world_size=1)
        optimizer = train.build_optimizer(cfg, model)
        assert optimizer._choose_path(optimizer.param_groups[0]) == expected


def test_hessian_bias_correction_is_a_config_key():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64))
    for name in ("sophiag", "sophiah"):
        for on in (False, True):
            cfg = train.TrainConfig(optimizer_name=name, hessian_bias_correction=on, device="cpu")
            train.resolve(cfg, world_size=1)
            optimizer = train.build_optimizer(cfg, model)
            assert [g["hessian_bias_correction"] for g in optimizer.param_groups] == [on, on]
    assert train.TrainConfig().hessian_bias_correction is False       # upstream's rule by default


def test_compilation_is_kept_out_of_the_logged_time(data_dir, tmp_path, monkeypatch, one_thread):
    """torch.compile's first passes (or Sophia's fused kernel) would otherwise land in `time`, which the
    wall-time comparisons use: a 0.5 s compilation during iteration 0 is logged as compile_time instead."""
    calls = {"n": 0}

    def fake_compile_seconds():
        calls["n"] += 1
        if calls["n"] == 2:           # the end of iteration 0: 0.5 s went into compiling
            time.sleep(0.5)
        return 0.0 if calls["n"] == 1 else 0.5
    monkeypatch.setattr(train, "compile_seconds", fake_compile_seconds)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--threads=1"))
    rows = events(tmp_path)
    assert rows[0]["compile_time"] == 0.5 == rows[2]["compile_time"]
    assert rows[0]["time"] < 0.4 and rows[0]["iter_time_ms"] < 400
    assert 0 < rows[2]["cpu_time"] and rows[2]["time"] == pytest.approx(sum(rows[i]["iter_time_ms"] for i in range(3))
                                                                         / 1000)
    assert torch.get_num_threads() == 1


def test_metrics_of_a_run_without_checkpoints_are_kept(data_dir, tmp_path, capsys, one_thread):
    for _ in range(3):     # runs that never reach a checkpoint, started again in the same out_dir
        train.main(tiny_argv(data_dir, tmp_path, "--max_iters=1", "--eval_interval=5", "--eval_iters=1",
                             "--always_save_checkpoint=False"))
        for f in tmp_path.glob("ckpt*.pt"):
            f.unlink()
    assert sorted(p.name for p in tmp_path.glob("metrics*.jsonl")) == ["metrics.jsonl", "metrics.old.jsonl",
                                                                        "metrics.old2.jsonl"]
    assert "moved the metrics.jsonl of an earlier run" in capsys.readouterr().out


def test_ctrl_c_is_acknowledged_at_once(data_dir, tmp_path, monkeypatch, capsys, one_thread):
    log_step = train.Trainer._log_step

    def log_and_interrupt(self, iter_num, *rest):
        log_step(self, iter_num, *rest)
        if iter_num == 1:
            os.kill(os.getpid(), signal.SIGINT)
            assert "SIGINT: stopping after this step, then checkpointing" in capsys.readouterr().err   # at once
    monkeypatch.setattr(train.Trainer, "_log_step", log_and_interrupt)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=6", "--eval_iters=1"))
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 2


def test_ctrl_c_while_starting_up_exits_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "train_sophiag.py", TINY, f"--out_dir={tmp_path}"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)                   # python is still importing torch
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_under_torchrun_an_error_is_printed_once(data_dir, tmp_path):
    proc = tiny(data_dir, tmp_path, "--learnig_rate=1e-3", nproc=2, check=False)
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: --learnig_rate=1e-3: 'learnig_rate' is not a config key; did you mean "
                           "'learning_rate'? (--help lists every key)"]
    assert "traceback : error: --learnig_rate=1e-3" in proc.stderr      # torchrun's summary names it as the cause


# ------------------------------------------------------------------------------------------------------
# the schedule and the shipped configs

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


def test_gpt2_configs_match_the_readme_table():
    """Every row of the README's GPT-2 table is what its config file resolves to (on 8 processes), so the
    documented hyperparameters cannot drift from the ones that run."""
    rows = re.findall(r"^\| `(train_gpt2_\w+\.py)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| "
                      r"([^|]+) \| ([^|]+) \| ([^|]+) \|$", (ROOT / "README.md").read_text(), re.M)
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
