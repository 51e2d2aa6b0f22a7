"""checkpoint.py: atomic files that survive kill -9, keep-last-K, latest and best, and loading that names the
file when it is damaged or foreign; sharded (DCP) checkpoints: the same links and rotation, a crash mid-save,
reading one whole or into FSDP shards, the converter to a file, and refusing a foreign index."""
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
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import checkpoint
import parallel
from configurator import UserError, run_cli
from helpers import ENV, ROOT
from model import GPT, GPTConfig
from sophia import SophiaG

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


# ------------------------------------------------------------------------------------------------------
# sharded checkpoints (FSDP, torch.distributed.checkpoint), on a world of one process in this process

@pytest.fixture
def process_group(single_rank):
    dist.init_process_group("gloo")
    yield
    dist.destroy_process_group()


def sharded_model_and_optimizer(seed=0):
    """A tiny GPT sharded with FSDP2 (each block, then the root, as train.py does) and Sophia-G with state."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY_ARGS))
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    optimizer = SophiaG(model.param_groups(0.1), lr=1e-2, rho=0.05)
    x = torch.randint(0, TINY_ARGS["vocab_size"], (2, TINY_ARGS["block_size"]))
    model(x, x)[1].backward()
    optimizer.step(bs=32)
    optimizer.update_hessian()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


TINY_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)


def save_sharded(out_dir, model, optimizer, iter_num, is_best=False, keep_last=2):
    tensors, layout = checkpoint.sharded_state(model, optimizer)
    ckpt = checkpoint.make(model=None, optimizer=None, sharded=layout, model_args=TINY_ARGS,
                           state=dict(iter_num=iter_num), rng=[checkpoint.rng_state(torch.device("cpu"))],
                           config=dict(seed=0, dataset="stdlib", optimizer_name="sophiag"), code={})
    return checkpoint.save_sharded(str(out_dir), ckpt, tensors, keep_last=keep_last, is_best=is_best)


def assert_same_state(a, b):
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        assert state.keys() == b["optimizer"]["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)


def test_sharded_checkpoints_round_trip_with_links_keep_last_and_best(tmp_path, process_group):
    model, optimizer = sharded_model_and_optimizer()
    full_model, full_optimizer = parallel.full_state_dicts(model, optimizer)
    for it, best in [(10, True), (20, False), (30, False)]:
        save_sharded(tmp_path, model, optimizer, it, is_best=best)
    # keep_last=2, and the best (at 10) stays while ckpt_best.pt names it
    assert [os.path.basename(f) for f in checkpoint.numbered_files(str(tmp_path))] == \
        ["ckpt_0000010.dcp", "ckpt_0000020.dcp", "ckpt_0000030.dcp"]
    assert os.readlink(tmp_path / "ckpt.pt") == "ckpt_0000030.dcp"
    assert os.readlink(tmp_path / "ckpt_best.pt") == "ckpt_0000010.dcp"
    assert sorted(os.listdir(tmp_path / "ckpt_0000030.dcp")) == [".metadata", "__0_0.distcp", "meta.pt"]
    # read whole by one process, it is the dict a single file holds (the tied weight one tensor)
    ckpt = checkpoint.load(str(tmp_path / "ckpt.pt"))
    assert ckpt["iter_num"] == 30 and ckpt["format"] == checkpoint.FORMAT and "sharded" not in ckpt
    assert_same_state(ckpt, dict(model=full_model, optimizer=full_optimizer))
    assert ckpt["model"]["lm_head.weight"].data_ptr() == ckpt["model"]["transformer.wte.weight"].data_ptr()
    # eval.py, sample.py and export_hf.py build their model through load_model
    gpt, _, path = checkpoint.load_model(str(tmp_path), None, "cpu")
    assert path.endswith("ckpt.pt") and all(torch.equal(v, full_model[k]) for k, v in gpt.state_dict().items())
    # resumed under FSDP, each rank reads its shards into the live model and optimizer
    other, other_optimizer = sharded_model_and_optimizer(seed=1)
    checkpoint.load_sharded_into(str(tmp_path / "ckpt.pt"), other, other_optimizer)
    assert_same_state(dict(zip(("model", "optimizer"), parallel.full_state_dicts(other, other_optimizer))),
                      dict(model=full_model, optimizer=full_optimizer))
    # a single file in the same out_dir (a run resumed on 1 process) takes over ckpt.pt and the rotation
    checkpoint.save(str(tmp_path), dict(format=checkpoint.FORMAT, iter_num=40, weights=torch.ones(2)),
                    keep_last=2, is_best=True)
    assert [os.path.basename(f) for f in checkpoint.numbered_files(str(tmp_path))] == \
        ["ckpt_0000030.dcp", "ckpt_0000040.pt"]
    assert checkpoint.load_latest(str(tmp_path))[0]["iter_num"] == 40 and not os.path.islink(tmp_path / "ckpt.pt")


def test_a_sharded_save_that_crashes_leaves_the_previous_checkpoint(tmp_path, process_group, monkeypatch):
    model, optimizer = sharded_model_and_optimizer()
    save_sharded(tmp_path, model, optimizer, 10)

    def killed(*args):
        raise KeyboardInterrupt     # after every shard is written, before the directory is renamed
    atomic_save = checkpoint.atomic_save
    monkeypatch.setattr(checkpoint, "atomic_save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_sharded(tmp_path, model, optimizer, 20)
    assert os.path.isdir(tmp_path / "ckpt_0000020.dcp.tmp")
    ckpt, path = checkpoint.load_latest(str(tmp_path))
    assert ckpt["iter_num"] == 10 and os.readlink(path) == "ckpt_0000010.dcp"
    monkeypatch.setattr(checkpoint, "atomic_save", atomic_save)
    save_sharded(tmp_path, model, optimizer, 30)          # and the next save clears the leftovers
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt_0000010.dcp", "ckpt_0000030.dcp"]


def test_converter_writes_the_single_file_and_damage_is_a_user_error(tmp_path, process_group, capsys):
    model, optimizer = sharded_model_and_optimizer()
    path = save_sharded(tmp_path, model, optimizer, 10)
    convert = [sys.executable, "checkpoint.py", path, str(tmp_path / "ckpt_0000010.pt")]
    proc = subprocess.run(convert, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0 and "(iteration 10) ->" in proc.stdout, proc.stderr
    assert_same_state(checkpoint.load(str(tmp_path / "ckpt_0000010.pt")), checkpoint.load(path))
    with pytest.raises(SystemExit) as exit_info:        # (in this process, as its __main__ runs it)
        run_cli(checkpoint.main, convert[2:])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exists" in err and len(err.splitlines()) == 1
    with pytest.raises(UserError, match="already a single-file checkpoint"):
        checkpoint.convert(str(tmp_path / "ckpt_0000010.pt"), str(tmp_path / "x.pt"))
    # DCP's index is a pickle: one that would run code is refused, not loaded
    os.rename(os.path.join(path, ".metadata"), tmp_path / "metadata")
    for module, name in [(b"os", b"system"), (b"torch.distributed.checkpoint.filesystem", b"os.system"),
                         (b"torch.distributed.checkpoint.filesystem", b"os")]:
        with open(os.path.join(path, ".metadata"), "wb") as f:
            f.write(b"\x80\x04c" + module + b"\n" + name + b"\n(S'echo pwned'\ntR.")
        with pytest.raises(UserError, match=f"cannot be read .*{name.decode()} is not allowed"):
            checkpoint.load(path)
    os.replace(tmp_path / "metadata", os.path.join(path, ".metadata"))
    with open(os.path.join(path, "__0_0.distcp"), "r+b") as f:    # cut short
        f.truncate(100)
    with pytest.raises(UserError, match="is damaged: its shard file.* __0_0.distcp fail their checksums"):
        checkpoint.load(path)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_shard_file_falls_back_to_the_previous_checkpoint(tmp_path, process_group, capsys, damage):
    """Each rank's shard files are checksummed whole in meta.pt: bytes flipped in the middle of a shard (which DCP
    would read without noticing) or a shard cut short is a damaged checkpoint, passed over for the previous one."""
    model, optimizer = sharded_model_and_optimizer()
    save_sharded(tmp_path, model, optimizer, 10)
    path = save_sharded(tmp_path, model, optimizer, 20)
    shard = os.path.join(path, "__0_0.distcp")
    assert checkpoint.load(path)["iter_num"] == 20
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        if damage == "flipped":
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.truncate(size - 8)
    capsys.readouterr()
    for shards in (False, True):     # read whole (1 process, DDP) and as FSDP's restore does
        ckpt, found = checkpoint.load_latest(str(tmp_path), shards=shards)
        assert ckpt["iter_num"] == 10 and found.endswith("ckpt_0000010.dcp")
        assert "__0_0.distcp fail their checksums" in capsys.readouterr().err
    os.remove(os.path.join(path, "__0_0.distcp"))
    with pytest.raises(UserError, match=r"missing its shard file\(s\) __0_0.distcp"):
        checkpoint.load(path)
    os.remove(os.path.join(path, "meta.pt"))
    with pytest.raises(UserError, match="not a complete sharded checkpoint"):
        checkpoint.load(path)
