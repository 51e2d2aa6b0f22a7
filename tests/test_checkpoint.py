"""checkpoint.py: atomic files that survive kill -9, keep-last-K, latest and best, and loading that names the
file when it is damaged or foreign."""
import argparse
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
from configurator import UserError
from helpers import ENV, ROOT

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


def save(out_dir, iter_num, is_best=False, keep_last=2):
    return checkpoint.save(str(out_dir), dict(format=checkpoint.FORMAT, iter_num=iter_num,
                                              weights=torch.full((3,), float(iter_num))),
                           keep_last=keep_last, is_best=is_best)


def test_keep_last_latest_and_best(tmp_path):
    for it, best in [(10, True), (20, False), (30, True), (40, False)]:
        save(tmp_path, it, is_best=best)
    assert [os.path.basename(f) for f in checkpoint.numbered_files(str(tmp_path))] == \
        ["ckpt_0000030.pt", "ckpt_0000040.pt"]
    assert os.path.samefile(tmp_path / "ckpt.pt", tmp_path / "ckpt_0000040.pt")     # a link, not a copy
    assert checkpoint.load(str(tmp_path / "ckpt_best.pt"))["iter_num"] == 30         # outlives its numbered file
    assert checkpoint.has_checkpoint(str(tmp_path)) and not checkpoint.has_checkpoint(str(tmp_path / "none"))


def test_load_latest_falls_back_to_older_numbered_files(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    (tmp_path / "ckpt.pt").unlink()
    (tmp_path / "ckpt.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "ckpt_0000020.pt").write_bytes(b"")
    ckpt, path = checkpoint.load_latest(str(tmp_path))
    assert ckpt["iter_num"] == 10 and path.endswith("ckpt_0000010.pt")


def test_damaged_foreign_and_missing_files_are_user_errors(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="ckpt.pt cannot be loaded .* corrupt"):
        checkpoint.load(str(tmp_path / "ckpt.pt"))
    with pytest.raises(UserError, match="no loadable checkpoint"):
        checkpoint.load_latest(str(tmp_path))
    torch.save({"model": torch.zeros(2)}, tmp_path / "other.pt")     # a checkpoint of some other code
    with pytest.raises(UserError, match="not a checkpoint written by this repo"):
        checkpoint.load(str(tmp_path / "other.pt"))
    torch.save({"format": checkpoint.FORMAT, "obj": argparse.Namespace(x=1)}, tmp_path / "pickle.pt")
    with pytest.raises(UserError, match="cannot be loaded"):    # weights_only: no arbitrary objects
        checkpoint.load(str(tmp_path / "pickle.pt"))
    with pytest.raises(UserError, match="not found"):
        checkpoint.load(str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="no checkpoint in"):
        checkpoint.load_latest(str(tmp_path / "empty"))


def alter_bytes_of(path, tensor, count=400):
    """XOR `count` bytes in the middle of `tensor`'s data inside the checkpoint file at `path`, in place."""
    data = bytearray(open(path, "rb").read())
    needle = tensor.contiguous().view(torch.uint8).numpy().tobytes()[:64]
    start = data.find(needle)
    assert start >= 0 and data.find(needle, start + 1) < 0       # found, and only once
    for i in range(start + 64, start + 64 + count):
        data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


def test_altered_tensor_bytes_are_detected_and_skipped_with_a_message(tmp_path, capsys):
    older, newer = torch.randn(10_000), torch.randn(10_000)
    for it, weights in [(10, older), (20, newer)]:
        checkpoint.save(str(tmp_path), dict(format=checkpoint.FORMAT, iter_num=it, model={"w": weights}),
                        keep_last=2, is_best=False)
    alter_bytes_of(tmp_path / "ckpt_0000020.pt", newer)          # ckpt.pt is the same file (a hard link)
    with pytest.raises(UserError, match=r"damaged: the bytes of 1 tensor\(s\) \(model/w\) do not match"):
        checkpoint.load(str(tmp_path / "ckpt.pt"))
    capsys.readouterr()
    ckpt, path = checkpoint.load_latest(str(tmp_path))
    assert ckpt["iter_num"] == 10 and torch.equal(ckpt["model"]["w"], older)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "ckpt.pt is damaged" in err and "trying the previous checkpoint" in err


def test_checkpoints_without_checksums_still_load(tmp_path):
    torch.save(dict(format=checkpoint.FORMAT, iter_num=3, model={"w": torch.ones(2)}), tmp_path / "old.pt")
    assert checkpoint.load(str(tmp_path / "old.pt"))["iter_num"] == 3


def test_load_errors_are_one_readable_line(tmp_path):
    torch.save({"format": checkpoint.FORMAT, "obj": argparse.Namespace(x=1)}, tmp_path / "pickle.pt")
    with pytest.raises(UserError) as info:
        checkpoint.load(str(tmp_path / "pickle.pt"))
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message                 # torch's colour codes and paragraphs
    assert message.endswith("delete it or pick another out_dir")           # not cut mid-sentence
