"""What a run records (metrics.py): metrics.jsonl, wandb (offline), the timing windows and compile time, and the
in-context accuracy logged at evaluations.
"""
import json
import math
import os
import sys
import time

import pytest
import torch

import devices
import metrics
import train
from helpers import ENV, events, tiny, tiny_argv


def test_wandb_offline_summary(data_dir, tmp_path):
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    tiny(data_dir, tmp_path, "--max_iters=20", "--eval_interval=10", "--eval_sequences=32", "--wandb_log=True", env=env)
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


class FailingWandb:
    """A stand-in for the wandb module whose init, or log at iteration 2, raises as with an unreachable server."""

    def __init__(self, fail_in):
        self.fail_in, self.logged, self.finished = fail_in, [], False
        self.config = None

    def Settings(self, **kwargs):
        self.settings = kwargs
        return kwargs

    def init(self, **kwargs):
        if self.fail_in == "init":
            raise ConnectionError('Timed out while retrying: Post "http://127.0.0.1:9/graphql": connection refused')
        return self

    def log(self, values, step):
        if self.fail_in == "log" and step == 2:
            raise BrokenPipeError("the wandb service is gone")
        self.logged.append(step)

    def finish(self):
        self.finished = True


@pytest.mark.parametrize("fail_in", ["init", "log"])
def test_a_wandb_failure_turns_wandb_off_with_one_warning(data_dir, tmp_path, capsys, monkeypatch, one_thread,
                                                          fail_in):
    fake = FailingWandb(fail_in)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=4", "--eval_interval=4", "--eval_sequences=8",
                         "--wandb_log=True", "--wandb_init_timeout=5"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "wandb" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: wandb {fail_in} failed"), warnings
    assert "WANDB_MODE=offline" in warnings[0] and ("127.0.0.1:9" if fail_in == "init" else "gone") in warnings[0]
    assert fake.settings == {"init_timeout": 5.0}
    assert sorted(events(tmp_path)) == [0, 1, 2, 3] and sorted(events(tmp_path, "eval")) == [0, 4]
    assert fake.logged == ([] if fail_in == "init" else [0, 0, 1])    # eval and train at 0; none after the failure
    assert not fake.finished


@pytest.mark.slow
def test_an_unreachable_wandb_server_costs_the_init_timeout_only(data_dir, tmp_path):
    """The real wandb against a closed port (online mode, a dummy key): init gives up after wandb_init_timeout
    (wandb's service start and retries add ~10 s here), one warning line, the run completes."""
    env = {**ENV, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "0123456789" * 4, "WANDB_MODE": "online"}
    start = time.perf_counter()
    proc = tiny(data_dir, tmp_path, "--max_iters=4", "--eval_interval=4", "--eval_sequences=8", "--wandb_log=True",
                "--wandb_init_timeout=5", env=env)
    seconds = time.perf_counter() - start
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: wandb")]
    assert len(warnings) == 1 and "WANDB_MODE=offline" in warnings[0], proc.stderr
    assert sorted(events(tmp_path)) == [0, 1, 2, 3] and sorted(events(tmp_path, "eval")) == [0, 4]
    assert seconds < 90, seconds        # not wandb's own ~100 s wait


def test_logged_time_is_the_mean_over_each_log_window(data_dir, tmp_path, one_thread, monkeypatch):
    """iter_time_ms is the mean over the iterations since the previous log line (the device is synchronized
    only there), and those windows add up to the cumulative training time; MFU with the Hessian pass counts
    its forward-backward on hess_total_bs sequences once per hess_interval steps."""
    monkeypatch.setattr(devices, "peak_flops", lambda device: 1e12)   # an MFU on CPU, for the arithmetic
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


def test_compilation_is_kept_out_of_the_logged_time(data_dir, tmp_path, monkeypatch, one_thread):
    """torch.compile's first passes (or Sophia's fused kernel) would otherwise land in `time`, which the
    wall-time comparisons use: a 0.5 s compilation during iteration 0 is logged as compile_time instead."""
    calls = {"n": 0}

    def fake_compile_seconds():
        calls["n"] += 1
        if calls["n"] == 2:           # the end of iteration 0: 0.5 s went into compiling
            time.sleep(0.5)
        return 0.0 if calls["n"] == 1 else 0.5
    monkeypatch.setattr(metrics, "compile_seconds", fake_compile_seconds)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=3", "--eval_interval=3", "--eval_sequences=8", "--threads=1"))
    rows = events(tmp_path)
    assert rows[0]["compile_time"] == 0.5 == rows[2]["compile_time"]
    assert rows[0]["time"] < 0.4 and rows[0]["iter_time_ms"] < 400
    assert 0 < rows[2]["cpu_time"] and rows[2]["time"] == pytest.approx(sum(rows[i]["iter_time_ms"] for i in range(3))
                                                                         / 1000)
    assert torch.get_num_threads() == 1


def test_metrics_of_a_run_without_checkpoints_are_kept(data_dir, tmp_path, capsys, one_thread):
    for _ in range(3):     # runs that never reach a checkpoint, started again in the same out_dir
        train.main(tiny_argv(data_dir, tmp_path, "--max_iters=1", "--eval_interval=5", "--eval_sequences=8",
                             "--always_save_checkpoint=False"))
        for f in tmp_path.glob("ckpt*.pt"):
            f.unlink()
    assert sorted(p.name for p in tmp_path.glob("metrics*.jsonl")) == ["metrics.jsonl", "metrics.old.jsonl",
                                                                        "metrics.old2.jsonl"]
    assert "moved the metrics.jsonl of an earlier run" in capsys.readouterr().out


def test_eval_tasks_log_in_context_accuracy_without_disturbing_training(data_dir, tmp_path, one_thread):
    """eval_tasks scores SuperGLUE tasks through lm-eval at each evaluation (icl/<task> in metrics.jsonl) and
    leaves the training exactly as without it: with dropout on, a leaked reseeding or a model left in eval mode
    would change the losses after the first evaluation."""
    pytest.importorskip("lm_eval")
    from icl_fixtures import write_task_data
    task_data = write_task_data(tmp_path / "tasks", tasks=("boolq", "copa"), n_validation=3, n_train=2)
    common = ["--max_iters=3", "--eval_interval=2", "--eval_sequences=16", "--dropout=0.1"]
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
