"""eval.py and sample.py on a checkpoint of the tiny config trained for 4 iterations: the exact loss against a
direct computation, windows, determinism, --max_tokens, reproducible sampling, and clean errors. CPU, ~20 s."""
import json
import contextlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import eval as eval_script
import sample as sample_script
from configurator import UserError, run_cli
from model import GPT, GPTConfig
from tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
BLOCK = 64   # block_size of config/train_tiny_sophiag.py


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny matmuls: several threads on 2 busy cores are ~20x slower


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(data_dir, out_dir): a 300 KB stdlib dataset (bytes tokenizer) and a 4-iteration Sophia-G run on it."""
    data_dir, out_dir = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("run")
    subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={data_dir}", "--max_bytes=300000"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    subprocess.run([sys.executable, "train_sophiag.py", "config/train_tiny_sophiag.py", f"--data_dir={data_dir}",
                    f"--out_dir={out_dir}", "--max_iters=4", "--eval_interval=4", "--eval_sequences=16"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    return data_dir, out_dir


def cli(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


def assert_clean_error(proc, *phrases):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def direct_loss(out_dir, data_dir, split, n_targets):
    """Mean next-token cross-entropy over targets 1..n_targets, one window at a time, written independently of
    eval.py: the checkpoint loaded by hand, windows [kT, kT + T) predicting [kT + 1, kT + T]."""
    ckpt, _ = checkpoint.load_latest(out_dir)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    tokens = torch.from_numpy(np.fromfile(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16).astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, n_targets, BLOCK):
            end = min(start + BLOCK, n_targets)
            _, loss = model(tokens[start:end][None], tokens[start + 1:end + 1][None])
            total += loss.item() * (end - start)
    return total / n_targets


# ------------------------------------------------------------------------------------------------------
# eval.py

@pytest.mark.parametrize("n_targets,block_size,batch_size", [(100, 10, 3), (99, 10, 3), (7, 10, 4), (64, 8, 8)])
def test_eval_windows_predict_every_token_once(n_targets, block_size, batch_size):
    data = np.arange(1000, 1000 + n_targets + 5, dtype=np.uint16)
    batches = list(eval_script.eval_windows(data, n_targets, block_size, batch_size))
    xs = np.concatenate([x.ravel() for x, _ in batches])
    ys = np.concatenate([y.ravel() for _, y in batches])
    np.testing.assert_array_equal(xs, data[:n_targets])         # inputs: tokens 0..n-1
    np.testing.assert_array_equal(ys, data[1:n_targets + 1])    # targets: tokens 1..n, each once
    for x, y in batches:
        assert x.shape == y.shape and x.dtype == np.int64
        assert x.shape[0] <= batch_size and x.shape[1] <= block_size
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])     # y is x shifted by one
    assert sum(len(x) for x, _ in batches) == -(-n_targets // block_size)


def test_eval_matches_direct_computation(run):
    data_dir, out_dir = run
    result = eval_script.main([f"--out_dir={out_dir}", "--device=cpu"])
    n_val = os.path.getsize(data_dir / "val.bin") // 2
    assert result["tokens"] == n_val - 1 and result["split_tokens"] == n_val
    assert result["windows"] == -(-(n_val - 1) // BLOCK)
    assert result["iter_num"] == 4 and result["tokenizer"] == "bytes" and result["bytes"] == n_val - 1
    expected = direct_loss(out_dir, data_dir, "val", n_val - 1)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)     # fp32 sums per batch (see below)
    assert 3.0 < result["loss"] < math.log(257) + 0.5    # a little training: below uniform guessing
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_token"] == pytest.approx(result["loss"] / math.log(2))
    assert result["bits_per_byte"] == pytest.approx(result["bits_per_token"])   # bytes tokenizer
    saved = json.loads((out_dir / "eval_val_4.json").read_text())
    assert saved["loss"] == result["loss"] and saved["tokens"] == n_val - 1
    assert saved["checkpoint"] == str(out_dir / "ckpt.pt")


def test_eval_max_tokens_split_and_determinism(run):
    data_dir, out_dir = run
    args = [f"--out_dir={out_dir}", "--device=cpu", "--split=train", "--max_tokens=1000"]
    first = eval_script.main(args + ["--batch_size=3"])
    second = eval_script.main(args + ["--batch_size=3"])
    other_batching = eval_script.main(args)    # the checkpoint's batch_size, 8
    assert first["tokens"] == 1000 and first["windows"] == 16 and first["split"] == "train"
    assert first["loss"] == second["loss"]                                  # deterministic, bit for bit
    # other batching changes only rounding: each batch's fp32 sum of up to 8 x 64 token losses (~2,000) rounds to
    # ~1e-6 of itself, so the mean moves by up to a few 1e-6 nats; a token counted twice or lost moves it ~4e-3
    assert other_batching["loss"] == pytest.approx(first["loss"], rel=1e-5)
    assert first["loss"] == pytest.approx(direct_loss(out_dir, data_dir, "train", 1000), rel=1e-5)
    # a partial evaluation gets its own file, so it never overwrites a whole-split result
    assert json.loads((out_dir / "eval_train_4_1000tokens.json").read_text())["tokens"] == 1000


def test_eval_given_checkpoint_file(run, tmp_path):
    _, out_dir = run
    copy = tmp_path / "mine.pt"
    copy.write_bytes((out_dir / "ckpt_best.pt").read_bytes())
    result = eval_script.main([f"--ckpt={copy}", "--device=cpu", "--max_tokens=200"])
    assert result["checkpoint"] == str(copy) and result["tokens"] == 200
    assert (tmp_path / "eval_val_4_200tokens.json").exists()    # the report goes beside the checkpoint


def test_eval_and_sample_read_a_sharded_checkpoint(run, tmp_path):
    """The run's checkpoint rewritten in the sharded (DCP) format, as an FSDP run saves it: eval.py and sample.py
    give what they give on the file."""
    _, out_dir = run
    ckpt = checkpoint.load(str(out_dir / "ckpt.pt"))
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)      # an optimizer whose state is empty
    tensors, layout = checkpoint.sharded_state(model, optimizer)
    parts = {k: v for k, v in ckpt.items() if k in ("model_args", "state", "rng", "config", "code")}
    sharded = checkpoint.make(model=None, optimizer=None, sharded=layout, **parts)
    path = checkpoint.save_sharded(str(tmp_path), sharded, tensors, keep_last=1, is_best=False)
    assert path.endswith("ckpt_0000004.dcp") and os.path.isdir(path)
    for argv in ([f"--out_dir={tmp_path}"], [f"--ckpt={path}"]):
        assert eval_script.main([*argv, "--device=cpu", "--max_tokens=300"])["loss"] == \
            eval_script.main([f"--out_dir={out_dir}", "--device=cpu", "--max_tokens=300"])["loss"]
    args = ["--device=cpu", "--max_new_tokens=20", "--seed=1"]
    assert sample_script.main([f"--out_dir={tmp_path}", *args]) == sample_script.main([f"--out_dir={out_dir}", *args])


def test_gpt2_byte_lengths_count_utf8_bytes():
    tokenizer = get_tokenizer("gpt2")
    lengths = eval_script.token_byte_lengths(tokenizer)
    text = "Sophia: naïve Größe, 数据 and emoji 🙂\n\tdef f(x): return x ** 2"
    assert lengths[tokenizer.encode(text)].sum() == len(text.encode("utf-8"))
    assert lengths[tokenizer.eot_token] == 1 and len(lengths) == tokenizer.vocab_size


def test_eval_user_errors(run, tmp_path, capsys):
    _, out_dir = run
    assert_clean_error(cli("eval.py", f"--out_dir={tmp_path}", "--device=cpu"), "no checkpoint", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:      # what run_cli does with a config mistake
        run_cli(eval_script.main, [f"--out_dir={out_dir}", "--max_token=5"])
    assert exit_info.value.code == 2
    assert "error: --max_token=5: 'max_token' is not a config key; did you mean 'max_tokens'?" in \
        capsys.readouterr().err
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    cases = [
        ([f"--out_dir={tmp_path / 'missing'}"], "does not exist"),
        ([f"--ckpt={tmp_path / 'nope.pt'}"], "not found"),
        ([f"--ckpt={tmp_path / 'corrupt.pt'}"], "corrupt"),
        ([f"--out_dir={out_dir}", f"--data_dir={tmp_path / 'gone'}"], "pass --data_dir"),
        ([f"--out_dir={out_dir}", f"--data_dir={tmp_path}"], "meta.json not found"),
        ([f"--out_dir={out_dir}", "--max_tokens=0"], "--max_tokens"),
        ([f"--out_dir={out_dir}", "--device=nonsense"], "--device=nonsense"),
    ]
    for argv, phrase in cases:
        with pytest.raises(UserError, match=re.escape(phrase)):
            eval_script.main(argv)


# ------------------------------------------------------------------------------------------------------
# sample.py

def test_sample_reproducible_with_seed(run, capsys):
    _, out_dir = run
    args = [f"--out_dir={out_dir}", "--device=cpu", "--max_new_tokens=40", "--num_samples=2", "--start=def main("]
    first = sample_script.main(args + ["--seed=1"])
    again = sample_script.main(args + ["--seed=1"])
    other = sample_script.main(args + ["--seed=2"])
    assert first == again and first != other
    assert len(first) == 2 and first[0] != first[1]
    assert all(isinstance(t, str) and t.startswith("def main(") and len(t) > len("def main(") for t in first)
    printed = capsys.readouterr().out
    assert printed.count("-" * 40 + "\n") == 6 and first[0] in printed


def test_sample_never_draws_padded_vocabulary(run):
    _, out_dir = run
    model, _, _ = checkpoint.load_model(str(out_dir), None, torch.device("cpu"))
    assert model.config.vocab_size == 320
    eot = get_tokenizer("bytes").eot_token
    plain = sample_script.generate(model, [eot], 4, 60, 5.0, None, 0, contextlib.nullcontext())
    assert max(map(max, plain)) >= 257     # a hot, barely trained model does draw the padding ids...
    sample_script.mask_padding(model, 257)
    masked = sample_script.generate(model, [eot], 4, 60, 5.0, None, 0, contextlib.nullcontext())
    assert max(map(max, masked)) < 257     # ...until they are masked
    assert all(len(ids) == 61 for ids in masked)


def test_sample_prompt_from_file_and_greedy(run, tmp_path):
    _, out_dir = run
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("import os\n", encoding="utf-8")
    args = [f"--out_dir={out_dir}", "--device=cpu", "--max_new_tokens=20", f"--start=FILE:{prompt}",
            "--temperature=0", "--num_samples=2"]
    greedy = sample_script.main(args + ["--seed=1"])
    assert greedy[0].startswith("import os\n")
    assert greedy[0] == greedy[1] == sample_script.main(args + ["--seed=2"])[0]    # argmax ignores the seed


def test_sample_user_errors(run, tmp_path):
    _, out_dir = run
    assert_clean_error(cli("sample.py", f"--out_dir={tmp_path / 'missing'}"), "does not exist", "--out_dir")
    cases = [
        ([f"--start=FILE:{tmp_path / 'no.txt'}"], "cannot read the prompt file"),
        ([f"--data_dir={tmp_path}"], "pass --data_dir"),
        (["--temperature=-1"], "--temperature"),
        (["--top_k=0"], "--top_k"),
        (["--num_samples=0"], "--num_samples"),
    ]
    for argv, phrase in cases:
        with pytest.raises(UserError, match=re.escape(phrase)):
            sample_script.main([f"--out_dir={out_dir}", "--device=cpu", *argv])
