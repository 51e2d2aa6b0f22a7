"""dataloader.py: token files checked when opened, and batches that are a function of (seed, stream,
iteration) only, whatever the number of processes."""
import numpy as np
import pytest
import torch

import train
from configurator import UserError
from dataloader import EVAL_VAL, HESSIAN, TRAIN, Sampler, TokenDataset
from helpers import TINY, assert_clean_error, bad_file, run_cli_in_process

CPU = torch.device("cpu")


def test_sampler_is_world_size_invariant(data_dir):
    dataset = TokenDataset(str(data_dir), block_size=16)
    one = Sampler(dataset, 4, 0, 1, CPU).micro_batches(7, 0, 3, 24)
    two = [b for rank in (0, 1) for b in Sampler(dataset, 4, rank, 2, CPU).micro_batches(7, 0, 3, 24)]
    assert sorted(i for i, _, _ in two) == [i for i, _, _ in one] == list(range(0, 24, 4))   # first rows
    by_index = {i: (x, y) for i, x, y in two}
    for i, x, y in one:
        assert torch.equal(x, by_index[i][0]) and torch.equal(y, by_index[i][1])
        assert torch.equal(x[:, 1:], y[:, :-1])
    other_iteration = Sampler(dataset, 4, 0, 1, CPU).micro_batches(7, 0, 4, 24)
    assert not torch.equal(one[0][1], other_iteration[0][1])


def test_streams_are_independent_and_windows_are_the_file(data_dir):
    dataset = TokenDataset(str(data_dir), block_size=16)
    sampler = Sampler(dataset, 4, 0, 1, CPU)
    starts = {stream: sampler.starts(7, stream, 3, 8) for stream in (TRAIN, HESSIAN)}
    assert not np.array_equal(starts[TRAIN], starts[HESSIAN])       # the Hessian pass never reuses training data
    tokens = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    x, y = dataset.windows("train", starts[TRAIN][:2], CPU)
    for row, start in enumerate(starts[TRAIN][:2]):
        assert x[row].tolist() == tokens[start:start + 16].tolist()
        assert y[row].tolist() == tokens[start + 1:start + 17].tolist()
    val_starts = sampler.starts(7, EVAL_VAL, 0, 1000, "val")
    assert val_starts.max() <= dataset.lengths["val"] - 16 - 1


@pytest.mark.parametrize("content,fragment", [(b"\x00\x01\x02", "odd size"),
                                              (np.full(5000, 300, np.uint16).tobytes(), "token id 300")])
def test_truncated_or_foreign_bin(tmp_path, data_dir, capsys, content, fragment):
    for name in ("train.bin", "val.bin", "meta.json"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    bad_file(tmp_path, "train.bin", content)
    with pytest.raises(UserError, match=fragment):
        TokenDataset(str(tmp_path), block_size=64)
    result = run_cli_in_process(train.main, [TINY, f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}"], capsys)
    assert_clean_error(result, fragment, "train.bin")


def test_missing_or_too_short_split(tmp_path, data_dir):
    (tmp_path / "train.bin").write_bytes((data_dir / "train.bin").read_bytes())
    (tmp_path / "meta.json").write_bytes((data_dir / "meta.json").read_bytes())
    with pytest.raises(UserError, match="val.bin not found"):
        TokenDataset(str(tmp_path), block_size=64)
    (tmp_path / "val.bin").write_bytes(np.zeros(64, np.uint16).tobytes())
    with pytest.raises(UserError, match="not more than block_size=64"):
        TokenDataset(str(tmp_path), block_size=64)


def test_byte_level_data_without_meta_json_is_refused(tmp_path, data_dir):
    """meta.json is git-ignored, so a copy of only the .bin files happens: read as GPT-2 BPE, byte-level tokens
    would train with the wrong vocabulary and report a wrong bits-per-byte."""
    for name in ("train.bin", "val.bin"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    with pytest.raises(UserError, match="no meta.json.*all <= 256, as in byte-level data: copy the dataset's meta"):
        TokenDataset(str(tmp_path), block_size=64)
    gpt2_like = np.random.default_rng(0).integers(0, 50257, size=20_000).astype(np.uint16)
    for name in ("train.bin", "val.bin"):
        (tmp_path / name).write_bytes(gpt2_like.tobytes())
    assert TokenDataset(str(tmp_path), block_size=64).vocab_size == 50257      # GPT-2 data need no meta.json


def test_a_misspelled_dataset_gets_a_suggestion(tmp_path):
    (tmp_path / "stdlib").mkdir()
    (tmp_path / "stdlib" / "prepare.py").write_text("")
    with pytest.raises(UserError, match=f"did you mean {tmp_path / 'stdlib'}"):
        TokenDataset(str(tmp_path / "stdlb"), block_size=64)
