"""What a resume may change (resume.py, TrainConfig.RESUMABLE_KEYS), and resuming past a damaged checkpoint.
"""
import json

import pytest
import torch

import checkpoint
import train
from helpers import TINY, assert_clean_error, assert_same, copy_run, events, tiny_argv, train_cli


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
                         "--eval_sequences=16", "--total_bs=32", "--rho=0.5", "--resume_override=total_bs, rho"))
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
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=8", "--eval_interval=4",
               "--eval_sequences=16"))
    captured = capsys.readouterr()
    assert "ckpt.pt is damaged" in captured.err and "trying the previous checkpoint" in captured.err
    assert "resuming from" in captured.out and "ckpt_0000004.pt at iteration 4" in captured.out
    assert_same(events(run_of_8), events(out), range(8))       # iterations 4-7 retrained, exactly as before


def test_the_same_command_again_continues_a_crashed_run(run_of_8, data_dir, tmp_path, capsys, one_thread):
    """init_from=auto (the default): a run that died after its checkpoint at 4 (its rows 4-7 and eval at 8
    logged, the checkpoint at 8 never written) is continued by the same command; metrics.jsonl then holds each
    iteration once, with the straight run's values, and a restart event."""
    out = copy_run(run_of_8, tmp_path)
    for name in ("ckpt.pt", "ckpt_0000008.pt"):
        (out / name).unlink()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "iter": 8, "train/lo')       # a line cut short by the kill
    args = ["--max_iters=8", "--eval_interval=4", "--eval_sequences=16", "--keep_last=3"]
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", *args, "--seed=5")
    assert_clean_error(result, "would change the experiment", "seed=1337 in the checkpoint, 5 now")
    train.main(tiny_argv(data_dir, out, *args))
    assert "ckpt_0000004.pt at iteration 4" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    for kind, iters in (("train", list(range(8))), ("eval", [0, 4, 8])):
        assert [r["iter"] for r in rows if r["event"] == kind] == iters, kind
    assert [(r["iter"], r["restarts"], r["rows_dropped"]) for r in rows if r["event"] == "restart"] == [(4, 1, 7)]
    assert [r["restarts"] for r in rows if r["event"] == "run"] == [0, 1]
    assert [events(out)[i]["restarts"] for i in (3, 4)] == [0, 1]
    assert_same(events(run_of_8), events(out), range(8))
    assert checkpoint.load(str(out / "ckpt.pt"))["state"]["restarts"] == 1


def test_a_second_run_in_the_same_out_dir_is_refused_until_the_first_dies(data_dir, tmp_path, capsys, one_thread):
    import subprocess
    import sys
    hold = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('otherhost 4242\\n'); f.flush(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        args = [f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--max_iters=1", "--eval_interval=1",
                "--eval_sequences=8"]
        result = train_cli(capsys, *args)
        assert_clean_error(result, "is in use by another run (host otherhost, pid 4242", ".lock", "another --out_dir")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]     # nothing else written
    finally:
        holder.kill()       # as kill -9: the OS drops its lock, the file stays
        holder.wait()
    train.main([TINY, *args])
    assert (tmp_path / "ckpt.pt").exists() and (tmp_path / ".lock").read_text().split()[1] != "4242"
    train.main([TINY, *args, "--max_iters=2"])       # the first run's lock was released at its end
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 2


@pytest.mark.parametrize("failure", ["ENOSPC", "zip writer"])
def test_a_full_disk_stops_with_one_line_and_the_same_command_resumes(data_dir, tmp_path, capsys, monkeypatch,
                                                                     one_thread, failure):
    """The checkpoint at 4 fails as on a full disk (the OSError, or torch's zip writer's RuntimeError with too
    little free space): one error line naming out_dir and the sizes, the checkpoint at 2 stays the latest, no
    partial file; once space is back the same command resumes from 2."""
    import collections
    import shutil
    import resume
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj.get("iter_num") == 4:
            f.write(b"partial")
            raise OSError(28, "No space left on device") if failure == "ENOSPC" else RuntimeError(
                "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/3: "
                "file write failed")
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(resume.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 12345, 12345))
    args = [f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=2",
            "--eval_sequences=8"]
    result = train_cli(capsys, *args)
    assert_clean_error(result, f"to out_dir {str(tmp_path)!r}: the disk is full (", "MiB needed, 0.0 MiB free",
                       "previous checkpoint is intact", "run the same command again")
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 2
    assert sorted(p.name for p in tmp_path.glob("ckpt*")) == ["ckpt.pt", "ckpt_0000002.pt", "ckpt_best.pt"]
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]        # the partial file is gone
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(resume.shutil, "disk_usage", shutil.disk_usage)
    train.main([TINY, *args])
    assert "ckpt.pt at iteration 2" in capsys.readouterr().out
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 4


@pytest.mark.slow
def test_a_real_full_filesystem_stops_cleanly_and_resumes_once_there_is_room(data_dir, tmp_path):
    """A 16 MiB tmpfs holds the tiny run's first checkpoint (~10 MB) but not the second: the real ENOSPC ends in
    one error line; after growing it to 64 MiB the same command resumes. Needs root (mount); skipped otherwise."""
    import subprocess
    from helpers import tiny
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        args = ["--max_iters=4", "--eval_interval=2", "--eval_sequences=8"]
        proc = tiny(data_dir, small / "run", *args, check=False)
        assert_clean_error(proc, "the disk is full (", "MiB needed", "MiB free", "run the same command again")
        assert checkpoint.load(str(small / "run" / "ckpt.pt"))["iter_num"] == 2
        assert not [p.name for p in (small / "run").iterdir() if ".tmp" in p.name]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        proc = tiny(data_dir, small / "run", *args)
        assert "resuming from" in proc.stdout and "at iteration 2" in proc.stdout
        assert checkpoint.load(str(small / "run" / "ckpt.pt"))["iter_num"] == 4
    finally:
        subprocess.run(["umount", str(small)])


def test_async_checkpoints_equal_synchronous_ones(run_of_8, data_dir, tmp_path, one_thread):
    """async_checkpoint=True writes from a host copy on a background thread: the same losses and the same saved
    tensors (checksums checked on load) as the synchronous run_of_8, and the run resumes from them."""
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=8", "--eval_interval=4", "--eval_sequences=16",
                         "--keep_last=3", "--async_checkpoint=True"))
    assert_same(events(run_of_8), events(tmp_path), range(8))
    for name in ("ckpt_0000004.pt", "ckpt_0000008.pt"):
        mine, theirs = checkpoint.load(str(tmp_path / name)), checkpoint.load(str(run_of_8 / name))
        assert mine["iter_num"] == theirs["iter_num"]
        for key, value in theirs["model"].items():
            assert torch.equal(mine["model"][key], value), (name, key)
        for index, state in theirs["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.equal(mine["optimizer"]["state"][index][key], value), (name, index, key)


def test_training_goes_on_during_a_background_write_and_a_kill_then_keeps_the_previous(data_dir, tmp_path,
                                                                                       monkeypatch, one_thread):
    """The write of the checkpoint at 8 is held until the loop has logged iteration 10 (training went on); at
    that instant, what a SIGKILL would leave on disk is checked: the checkpoint at 4 is the latest, the partial
    file only under a temporary name. Then the write completes and the run ends with its checkpoint at 12."""
    import threading
    real_save, logged_10, seen = torch.save, threading.Event(), {}

    def held_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("iter_num") == 8:
            f.write(b"partial")
            f.flush()
            seen["training went on"] = logged_10.wait(timeout=120)
            seen["latest"] = checkpoint.load_latest(str(tmp_path))[0]["iter_num"]
            seen["temporaries"] = [p.name for p in tmp_path.glob("ckpt_0000008.pt.tmp*")]
            f.seek(0)
            f.truncate()
        return real_save(obj, f, *args, **kwargs)
    log_step = train.Trainer._log_step

    def logging(self, iter_num, *args):
        log_step(self, iter_num, *args)
        if iter_num == 10:
            logged_10.set()
    monkeypatch.setattr(torch, "save", held_save)
    monkeypatch.setattr(train.Trainer, "_log_step", logging)
    train.main(tiny_argv(data_dir, tmp_path, "--max_iters=12", "--eval_interval=4", "--eval_sequences=8",
                         "--async_checkpoint=True"))
    assert seen == {"training went on": True, "latest": 4, "temporaries": [seen["temporaries"][0]]}
    assert checkpoint.load(str(tmp_path / "ckpt_0000008.pt"))["iter_num"] == 8
    assert checkpoint.load(str(tmp_path / "ckpt.pt"))["iter_num"] == 12
