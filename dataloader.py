"""
Token memmaps -> batches whose content depends only on (seed, purpose, iteration), never on the world size.

Each optimizer step draws one *global* batch of `count` random windows from train.bin (with replacement,
as nanoGPT does). The global batch is cut into micro-batches of `batch_size` rows; micro-batch i goes to
rank i % world_size as its micro-step i // world_size. So a 2-process run sees exactly the sequences of a
1-process run, split differently, and resuming needs nothing but the iteration number: the data position
is a pure function of (seed, iteration). Separate streams keep purposes apart: the Hessian pass of Sophia
never consumes training batches, so Sophia and AdamW train on identical data.
"""

import difflib
import os

import numpy as np
import torch

from configurator import UserError
from tokenizer import TokenizerError, read_meta

TRAIN, HESSIAN, EVAL_TRAIN, EVAL_VAL = 0, 1, 2, 3   # stream ids folded into every seed
EVAL_SEED = 2357                  # eval batches are the same for every run and seed: comparable val loss
FULL_CHECK_TOKENS = 1 << 27       # files up to 128M tokens are scanned whole for out-of-vocab ids
BYTES_CHECK_TOKENS = 1 << 20      # GPT-2 data without meta.json: its first 1M tokens must use ids above 256


def derive_seed(*parts):
    """A 63-bit seed from integers, via numpy's SeedSequence (well mixed, stable across versions)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TokenDataset:
    """train.bin / val.bin of data/<name>: headerless uint16 tokens, validated when opened."""

    def __init__(self, data_dir, block_size):
        self.data_dir, self.block_size = data_dir, block_size
        prepare = _prepare_command(data_dir)
        try:
            meta = read_meta(data_dir)
        except TokenizerError as err:
            raise UserError(str(err)) from None
        self.vocab_size = meta["vocab_size"] if meta else 50257          # no meta.json: GPT-2 BPE
        self.lengths = {}
        for split in ("train", "val"):
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.isfile(path):
                raise UserError(f"dataset file {path} not found; create it with `{prepare}`{_other_datasets(data_dir)}")
            size = os.path.getsize(path)
            if size % 2:
                raise UserError(f"{path} has an odd size ({size} bytes), so it is not a uint16 token file "
                                f"(truncated or foreign); recreate it with `{prepare}`")
            n = size // 2
            if n <= block_size:
                raise UserError(f"{path} holds {n} tokens, not more than block_size={block_size}; "
                                f"use a smaller --block_size or a bigger dataset")
            self.lengths[split] = n
            self._check_vocab(path, n, prepare)
        if meta is None:
            self._check_looks_like_gpt2(prepare)

    def _check_looks_like_gpt2(self, prepare):
        # without meta.json the tokens are taken as GPT-2 BPE; byte-level data (meta.json lost in a copy: it is
        # git-ignored) would then train with the wrong vocabulary and report wrong bits per byte
        head = np.memmap(os.path.join(self.data_dir, "train.bin"), dtype=np.uint16, mode="r")[:BYTES_CHECK_TOKENS]
        if int(head.max()) <= 256:
            raise UserError(f"{self.data_dir} has no meta.json, so its tokens would be read as GPT-2 BPE, but the "
                            f"first {len(head):,} tokens of train.bin are all <= 256, as in byte-level data: copy "
                            f"the dataset's meta.json beside its .bin files, or recreate them with `{prepare}`")

    def _check_vocab(self, path, n, prepare):
        # a foreign file (other tokenizer, other dtype) shows up as ids >= vocab_size; scan small files
        # whole and large ones (OpenWebText: 9B tokens) at 64 evenly spaced 1M-token chunks
        data = np.memmap(path, dtype=np.uint16, mode="r")
        chunk = 1 << 20
        starts = [0] if n <= FULL_CHECK_TOKENS else np.linspace(0, n - chunk, 64).astype(np.int64)
        span = n if n <= FULL_CHECK_TOKENS else chunk
        biggest = max(int(data[s:s + span].max()) for s in starts)
        if biggest >= self.vocab_size:
            raise UserError(f"{path} contains token id {biggest} >= vocab_size {self.vocab_size} of its tokenizer, "
                            f"so it is corrupt or was made by another tokenizer; recreate it with `{prepare}`")

    def windows(self, split, starts, device):
        """(x, y) int64 tensors of shape (len(starts), block_size): y is x shifted by one token."""
        # a fresh memmap per batch: keeping one open makes the resident memory grow (nanoGPT #287)
        data = np.memmap(os.path.join(self.data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        block = self.block_size
        x = torch.from_numpy(np.stack([data[s:s + block] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[s + 1:s + 1 + block] for s in starts]).astype(np.int64))
        if device.type == "cuda":   # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


class Sampler:
    """Global batches as a pure function of (seed, stream, iteration), split into per-rank micro-batches."""

    def __init__(self, dataset, batch_size, rank, world_size, device):
        self.dataset, self.batch_size, self.rank, self.world = dataset, batch_size, rank, world_size
        self.device = device

    def starts(self, seed, stream, iter_num, count, split="train"):
        high = self.dataset.lengths[split] - self.dataset.block_size   # last valid window start + 1
        return np.random.default_rng(derive_seed(seed, stream, iter_num)).integers(0, high, size=count)

    def micro_batches(self, seed, stream, iter_num, count, split="train", batch_size=None):
        """[(first global row, x, y)] for this rank's share of a global batch of `count` rows, cut into
        micro-batches of batch_size rows (default: the sampler's). All are loaded up front (a few hundred
        KB): on CUDA their copies overlap with the compute."""
        size = batch_size or self.batch_size
        starts = self.starts(seed, stream, iter_num, count, split)
        return [(index * size, *self.dataset.windows(split, starts[index * size:(index + 1) * size], self.device))
                for index in range(self.rank, -(-count // size), self.world)]


def _other_datasets(data_dir):
    """'; did you mean data/<x>?' when a folder beside data_dir holds a dataset (or its prepare.py) with a close
    name."""
    parent, name = os.path.split(os.path.normpath(data_dir))
    try:
        prepared = [d for d in os.listdir(parent or ".") if any(os.path.isfile(os.path.join(parent, d, f))
                                                                 for f in ("train.bin", "prepare.py"))]
    except OSError:
        return ""
    close = difflib.get_close_matches(name, prepared, n=1, cutoff=0.6)
    return f"; did you mean {os.path.join(parent, close[0])}?" if close else ""


def _prepare_command(data_dir):
    name = os.path.basename(os.path.normpath(data_dir))
    script = os.path.join("data", name, "prepare.py")
    return f"python {script}" if os.path.isfile(os.path.join(os.path.dirname(__file__), script)) else \
        f"a prepare script that writes {data_dir}/train.bin and val.bin"
