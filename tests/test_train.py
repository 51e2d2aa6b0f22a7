"""End-to-end tests of the training loop on the tiny config: training, DDP equivalence, exact resume,
preemption, non-finite handling, wandb, and clear errors for bad input. CPU only, a few minutes."""
import glob
import hashlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import train
from configurator import UserError
from dataloader import Sampler, TokenDataset

ROOT = Path(__file__).resolve().parents[1]
TINY = "config/train_tiny_sophiag.py"
# One CPU thread per process in every comparison: CPU matmuls block (and round) differently with more
# threads, and torchrun gives each of its processes one thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stdlib")
    subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={out}", "--max_bytes=3000000"],
                   cwd=ROOT, check=True, capture_output=True)
    return out


def run_script(args, *, script="train_sophiag.py", nproc=1, env=None, check=True, timeout=300):
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + [script, *map(str, args)], cwd=ROOT, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny(data_dir, out_dir, *extra, **kwargs):
    return run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra], **kwargs)


def events(out_dir, kind="train"):
    """{iter: record} of one event kind; the last occurrence wins (a resumed run re-logs iterations)."""
    rows = {}
    for line in open(os.path.join(out_dir, "metrics.jsonl")):
        record = json.loads(line)
        if record["event"] == kind:
            rows[record["iter"]] = record
    return rows


def max_rel_diff(a, b, iters, key="train/loss"):
    return max(abs(a[i][key] - b[i][key]) / abs(a[i][key]) for i in iters)


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
    """The tiny Sophia-G config as shipped: 100 iterations, 10 Hessian refreshes, one process."""
    out = tmp_path_factory.mktemp("straight")
    proc = tiny(data_dir, out)
    return out, proc


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
    assert "Traceback" not in proc.stderr


def test_two_processes_reproduce_one(data_dir, straight_run, tmp_path):
    """The global batch is a function of (seed, iteration) only: 2 ranks x 1 micro-step = 1 rank x 2."""
    tiny(data_dir, tmp_path, nproc=2)
    a, b = events(straight_run[0]), events(tmp_path)
    assert max_rel_diff(a, b, range(100)) <= 1e-4
    assert max_rel_diff(a, b, range(9, 100), "train/win_rate") <= 1e-4


def test_fsdp_reproduces_one_process(data_dir, straight_run, tmp_path):
    """FSDP2 shards parameters, gradients and optimizer state over 2 ranks, yet takes the steps of 1 process (the
    rank without a Hessian micro-batch joins with a dummy pass). Not bit for bit: norms of sharded tensors sum
    in another order, and Sophia's sign-and-clip step amplifies such rounding over tens of steps, exactly as a
    1-process run on 2 threads does (both drift ~1e-3 by iteration 50). Its checkpoint is the same full,
    unsharded one as 1 process writes, with the tied embedding saved once."""
    tiny(data_dir, tmp_path, "--fsdp=True", nproc=2)
    a, b = events(straight_run[0]), events(tmp_path)
    assert max_rel_diff(a, b, range(25)) <= 1e-4
    assert max_rel_diff(a, b, range(9, 25), "train/win_rate") <= 1e-4
    assert max_rel_diff(events(straight_run[0], "eval"), events(tmp_path, "eval"), [50, 100], "val/loss") <= 1e-2
    one, sharded = (checkpoint.load(str(out / "ckpt.pt")) for out in (straight_run[0], tmp_path))
    shapes = lambda sd: {k: v.shape for k, v in sd.items()}  # noqa: E731
    assert shapes(sharded["model"]) == shapes(one["model"])
    assert sharded["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
    assert [shapes(s) for s in sharded["optimizer"]["state"].values()] == \
        [shapes(s) for s in one["optimizer"]["state"].values()]
    model = sharded["model"]
    assert model["lm_head.weight"].data_ptr() == model["transformer.wte.weight"].data_ptr()


def test_fsdp_resume_across_world_sizes(data_dir, straight_run, tmp_path):
    """1 process -> FSDP on 2 (each rank takes its shard of the saved optimizer state) -> 1 process. An odd
    eval_iters leaves one rank a micro-batch short in each evaluation: it must not change the val loss."""
    tiny(data_dir, tmp_path, "--max_iters=10")
    evals = ["--eval_iters=5", "--eval_interval=10"]
    tiny(data_dir, tmp_path, "--max_iters=20", "--init_from=resume", "--fsdp=True", *evals, nproc=2)
    tiny(data_dir, tmp_path, "--max_iters=24", "--init_from=resume", *evals)
    assert max_rel_diff(events(straight_run[0]), events(tmp_path), range(24)) <= 1e-4
    at_20 = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    at_20 = [r["val/loss"] for r in at_20 if r["event"] == "eval" and r["iter"] == 20]   # FSDP's, then 1 process's
    assert len(at_20) == 2 and at_20[0] == pytest.approx(at_20[1], rel=1e-5)


def test_wandb_offline_summary(data_dir, tmp_path):
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    tiny(data_dir, tmp_path, "--max_iters=20", "--eval_interval=10", "--wandb_log=True", env=env)
    summary = wandb_offline_summary(tmp_path)
    assert 0 < summary["train/win_rate"] <= 1
    assert math.isfinite(summary["train/loss"]) and math.isfinite(summary["val/loss"])
    assert summary["_step"] == 20


def wandb_offline_summary(out_dir):
    """Read the summary records of an offline run file (a LevelDB-style log of protobuf records)."""
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


@pytest.mark.parametrize("optimizer", ["sophiah", "lion", "adamw"])
def test_other_optimizers_train_through_the_same_loop(data_dir, tmp_path, optimizer):
    tiny(data_dir, tmp_path, f"--optimizer_name={optimizer}", "--max_iters=20", "--eval_interval=20",
         "--learning_rate=1e-3", "--weight_decay=0.1", "--beta1=0.9", "--beta2=0.95", "--rho=0.05",
         script="train.py")
    rows = events(tmp_path)
    assert np.mean([rows[i]["train/loss"] for i in range(15, 20)]) < rows[0]["train/loss"] - 0.5
    assert ("train/win_rate" in rows[19]) == (optimizer == "sophiah")
    if optimizer == "sophiah":
        assert 0 < rows[19]["train/win_rate"] <= 1 and rows[19]["hessian_norm"] > 0


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_fsdp_with_other_optimizers(data_dir, tmp_path, optimizer):
    """torch's fused AdamW and our Lion on FSDP-sharded parameters, resumed halfway: the same steps as 1 process."""
    args = [f"--optimizer_name={optimizer}", "--learning_rate=1e-3", "--weight_decay=0.1", "--beta1=0.9",
            "--beta2=0.95", "--eval_interval=6"]
    tiny(data_dir, tmp_path / "one", *args, "--max_iters=12", script="train.py")
    tiny(data_dir, tmp_path / "fsdp", *args, "--max_iters=6", "--fsdp=True", script="train.py", nproc=2)
    tiny(data_dir, tmp_path / "fsdp", *args, "--max_iters=12", "--fsdp=True", "--init_from=resume",
         script="train.py", nproc=2)
    assert max_rel_diff(events(tmp_path / "one"), events(tmp_path / "fsdp"), range(12)) <= 1e-5


# ------------------------------------------------------------------------------------------------------
# exact resume and preemption

def test_resume_is_exact(data_dir, straight_run, tmp_path):
    """12 iterations, then --init_from=resume to 24: iterations 12-23 equal the straight run's."""
    tiny(data_dir, tmp_path, "--max_iters=12")
    tiny(data_dir, tmp_path, "--max_iters=24", "--init_from=resume")
    a, b = events(straight_run[0]), events(tmp_path)
    assert max_rel_diff(a, b, range(24)) <= 1e-6
    assert max_rel_diff(a, b, range(19, 24), "hessian_norm") <= 1e-6
    assert json.loads(open(tmp_path / "metrics.jsonl").readlines()[-1])["iter"] == 24


def test_resume_on_a_different_world_size(data_dir, straight_run, tmp_path):
    tiny(data_dir, tmp_path, "--max_iters=12", nproc=2)
    tiny(data_dir, tmp_path, "--max_iters=24", "--init_from=resume")
    assert max_rel_diff(events(straight_run[0]), events(tmp_path), range(24)) <= 1e-4


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
    a, b = events(straight_run[0]), events(tmp_path)
    assert sorted(b) == list(range(100))
    assert max_rel_diff(a, b, range(100)) <= 1e-6


WRITER = """
import sys, torch, checkpoint
out, i = sys.argv[1], 1
while True:
    checkpoint.save(out, dict(iter_num=i, format=checkpoint.FORMAT, payload=torch.full((4_000_000,), float(i))),
                    keep_last=2, is_best=False)
    i += 1
"""


def test_kill_9_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, env=ENV)
        while not os.path.exists(tmp_path / "ckpt.pt"):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.2, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt, path = checkpoint.load_latest(str(tmp_path))
        assert path.endswith("ckpt.pt")
        assert torch.equal(ckpt["payload"], torch.full((4_000_000,), float(ckpt["iter_num"])))
        for leftover in glob.glob(str(tmp_path / "*.tmp*")):   # a killed writer's partial file
            os.remove(leftover)


# ------------------------------------------------------------------------------------------------------
# non-finite values (in-process, with a loss that turns NaN on chosen forward calls)

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


def tiny_argv(data_dir, out_dir, *extra):
    return [TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--log_interval=1", *extra]


def test_nonfinite_skip_policy(data_dir, tmp_path, monkeypatch):
    poison_forward(monkeypatch, bad_calls={7})       # micro-step 1 of iteration 3 (2 micro-steps each)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=12", "--nonfinite=skip"))
    rows = events(tmp_path)
    assert not math.isfinite(rows[3]["train/loss"]) and rows[3]["train/skipped_steps"] == 1
    assert rows[11]["train/skipped_steps"] == 1 and math.isfinite(rows[11]["train/loss"])
    ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_nonfinite_stop_policy_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=12", "--eval_interval=6"))
    before = hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest()
    poison_forward(monkeypatch, bad_calls={3})
    with pytest.raises(UserError, match="non-finite loss or gradient at iteration 13"):
        train.main(tiny_argv(data_dir, tmp_path, "--max_iters=24", "--eval_interval=6", "--init_from=resume"))
    assert hashlib.sha256((tmp_path / "ckpt.pt").read_bytes()).hexdigest() == before


def test_a_nonfinite_model_is_never_saved(data_dir, tmp_path):
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


def test_smaller_hessian_batch_keeps_the_curvature_scale(data_dir, tmp_path):
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


# ------------------------------------------------------------------------------------------------------
# bad input: one clear message, exit status 2, no traceback, nothing saved is damaged

def assert_clean_error(proc, *fragments):
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


@pytest.fixture(scope="module")
def saved_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    tiny(data_dir, out, "--max_iters=4", "--eval_interval=4")
    return out


def bad_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


BAD_INPUTS = {
    "unknown key on the command line": (["--learnig_rate=1e-3"], ["learnig_rate", "learning_rate"]),
    "wrong type": (["--max_iters=1e5"], ["max_iters", "int"]),
    "missing config file": (["config/nope.py"], ["config/nope.py"]),
    "zero iterations": (["--max_iters=0"], ["max_iters", "positive"]),
    "negative interval": (["--eval_interval=-5"], ["eval_interval", "positive"]),
    "zero hessian interval": (["--hess_interval=0"], ["hess_interval"]),
    "total_bs not divisible": (["--total_bs=20"], ["total_bs=20", "batch_size"]),
    "accumulation does not multiply out": (["--gradient_accumulation_steps=3"], ["gradient_accumulation_steps=3",
                                                                                 "total_bs=16"]),
    "block_size larger than the data": (["--block_size=100000000"], ["block_size"]),
    "missing dataset": (["--dataset=nosuchdata", "--data_dir=None"], ["data/nosuchdata", "prepare"]),
    "sophia-h under fsdp": (["--optimizer_name=sophiah", "--fsdp=True"], ["sophiah", "--fsdp=False"]),
    "fp16 under fsdp": (["--dtype=float16", "--fsdp=True"], ["float16", "bfloat16"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(data_dir, tmp_path, case):
    args, fragments = BAD_INPUTS[case]
    base = [f"--data_dir={data_dir}"] if "--data_dir=None" not in args else []
    proc = run_script([TINY, *base, f"--out_dir={tmp_path / 'out'}", *[a for a in args if a != "--data_dir=None"]],
                      check=False)
    assert_clean_error(proc, *fragments)


def test_unknown_key_in_a_config_file(tmp_path, data_dir):
    config = bad_file(tmp_path, "typo.py", "learnin_rate = 1e-3\n")
    assert_clean_error(run_script([TINY, config, f"--data_dir={data_dir}"], check=False), "learnin_rate",
                       str(config))


@pytest.mark.parametrize("content,fragment", [(b"\x00\x01\x02", "odd size"),
                                              (np.full(5000, 300, np.uint16).tobytes(), "token id 300")])
def test_truncated_or_foreign_bin(tmp_path, data_dir, content, fragment):
    for name in ("train.bin", "val.bin", "meta.json"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    bad_file(tmp_path, "train.bin", content)
    proc = run_script([TINY, f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}"], check=False)
    assert_clean_error(proc, fragment, "train.bin")


def test_checkpoint_with_other_model_dims(saved_run, data_dir):
    before = hashlib.sha256((saved_run / "ckpt.pt").read_bytes()).hexdigest()
    proc = run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={saved_run}", "--n_embd=64", "--init_from=resume"],
                      check=False)
    assert_clean_error(proc, "n_embd=128", "64")
    proc = run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={saved_run}"], check=False)   # not resume
    assert_clean_error(proc, "already holds", "--init_from=resume")
    assert hashlib.sha256((saved_run / "ckpt.pt").read_bytes()).hexdigest() == before


def test_corrupt_checkpoint(tmp_path, data_dir):
    bad_file(tmp_path, "ckpt.pt", b"PK\x03\x04 not really a zip")
    proc = run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--init_from=resume"], check=False)
    assert_clean_error(proc, "ckpt.pt", "corrupt")
    proc = run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'empty'}", "--init_from=resume"],
                      check=False)
    assert_clean_error(proc, "no checkpoint")


def test_unwritable_out_dir(tmp_path, data_dir):
    blocker = bad_file(tmp_path, "a_file", "not a directory")
    proc = run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={blocker / 'sub'}"], check=False)
    assert_clean_error(proc, "out_dir", "not writable")


# ------------------------------------------------------------------------------------------------------
# pieces

def test_sampler_is_world_size_invariant(data_dir):
    dataset = TokenDataset(str(data_dir), block_size=16)
    cpu = torch.device("cpu")
    one = Sampler(dataset, 4, 0, 1, cpu).micro_batches(7, 0, 3, 24)
    two = [b for rank in (0, 1) for b in Sampler(dataset, 4, rank, 2, cpu).micro_batches(7, 0, 3, 24)]
    assert sorted(i for i, _, _ in two) == [i for i, _, _ in one] == list(range(0, 24, 4))   # first rows
    by_index = {i: (x, y) for i, x, y in two}
    for i, x, y in one:
        assert torch.equal(x, by_index[i][0]) and torch.equal(y, by_index[i][1])
        assert torch.equal(x[:, 1:], y[:, :-1])
    other_iteration = Sampler(dataset, 4, 0, 1, cpu).micro_batches(7, 0, 4, 24)
    assert not torch.equal(one[0][1], other_iteration[0][1])


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
    from configurator import load_config
    from model import GPT, GPTConfig
    sizes = {"small": 124, "medium": 355, "large": 774}   # 124.4M, 354.6M, 773.6M at vocab 50304, no biases
    for size, millions in sizes.items():
        for opt in ("sophiag", "adam", "lion", "sophiah"):
            cfg, _ = load_config(train.TrainConfig, [f"config/train_gpt2_{size}_{opt}.py"])
            train.resolve(cfg, world_size=8)
            assert cfg.total_bs == 480 and cfg.block_size == 1024 and cfg.grad_clip == 1.0
            assert cfg.warmup_iters == 2000 and cfg.max_iters == 100000
            assert cfg.min_lr == pytest.approx(0.05 * cfg.learning_rate)
        with torch.device("meta"):
            model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=50304))
        assert round(model.num_params(non_embedding=False) / 1e6) == millions


def test_tiny_configs_differ_only_in_the_optimizer():
    from configurator import load_config
    sophia, _ = load_config(train.TrainConfig, ["config/train_tiny_sophiag.py"])
    adam, _ = load_config(train.TrainConfig, ["config/train_tiny_adam.py"])
    own = {"optimizer_name", "learning_rate", "weight_decay", "beta1", "beta2", "rho", "hess_interval", "hess_total_bs",
           "out_dir", "wandb_run_name"}
    differ = {k for k, v in vars(sophia).items() if vars(adam)[k] != v}
    assert differ <= own and {"optimizer_name", "out_dir"} <= differ
