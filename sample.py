"""
Generate text from a checkpoint.

    python sample.py --out_dir=out-tiny-sophiag
    python sample.py --out_dir=out-gpt2-small-sophiag --start="The meaning of life is" --num_samples=5
    python sample.py --out_dir=out-gpt2-small-sophiag --start=FILE:prompt.txt --temperature=0.7 --top_k=50

Each sample is a new document: the prompt is placed after an end-of-text token, as every document follows
one in the training data (with no prompt the model starts the document itself). The tokenizer is the one
named by the training dataset's meta.json. The same --seed gives the same samples on the same device, dtype
and --num_samples. Samples are printed one after another, each followed by a line of dashes.
"""

import sys

if __name__ == "__main__":   # Ctrl-C while torch loads: exit with status 130, quietly (run_cli takes over after)
    import configurator
    configurator.exit_quietly_on_ctrl_c()

from dataclasses import dataclass
from typing import Literal

import torch

import devices
from checkpoint import dataset_dir, load_model, load_tokenizer
from configurator import UserError, load_config, run_cli

FILE_PREFIX = "FILE:"


@dataclass
class SampleConfig:
    out_dir: str = "out"                    # the training run: its latest checkpoint is used
    ckpt: str | None = None                 # a checkpoint file or .dcp directory instead, e.g. out/ckpt_best.pt
    start: str = ""                         # the prompt, or FILE:path to read it from a file; "": none
    num_samples: int = 3
    max_new_tokens: int = 200               # tokens generated per sample
    temperature: float = 0.8                # divides the logits: < 1 sharper, > 1 more random, 0 = greedy
    top_k: int | None = 200                 # sample among the k most likely tokens; None: among all
    seed: int = 1337
    data_dir: str | None = None             # dataset whose meta.json names the tokenizer; None: the checkpoint's
    device: str = "auto"                    # auto: cuda if available, else cpu; or cpu, cuda, cuda:1, mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: as in training (devices.py)


def prompt_text(start):
    """--start as text: the contents of the file for FILE:path, else the text itself."""
    if not start.startswith(FILE_PREFIX):
        return start
    path = start[len(FILE_PREFIX):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise UserError(f"--start={start}: cannot read the prompt file {path} ({reason}); "
                        f"check the path, or pass the prompt itself as --start=\"text\"") from None


def mask_padding(model, vocab_size):
    """The model's vocabulary is padded for speed (257 -> 320, 50257 -> 50304); ids >= vocab_size are not tokens
    of the tokenizer, so their logits become -inf and they are never sampled."""
    if model.config.vocab_size > vocab_size:
        def hook(module, inputs, logits):
            logits[..., vocab_size:] = float("-inf")
            return logits
        model.lm_head.register_forward_hook(hook)


def generate(model, prompt_ids, num_samples, max_new_tokens, temperature, top_k, seed, autocast):
    """num_samples continuations of prompt_ids, as lists of ids (prompt included), from a generator seeded
    with `seed`: the same arguments give the same samples."""
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    with autocast:
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return out.tolist()


def main(argv=None):
    """Print the samples; returns them as a list of strings (prompt + continuation)."""
    cfg, _ = load_config(SampleConfig, sys.argv[1:] if argv is None else argv)
    for key in ("num_samples", "max_new_tokens"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key} must be a positive integer, got {getattr(cfg, key)}")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"--top_k must be a positive integer or None (no limit), got {cfg.top_k}")
    text = prompt_text(cfg.start)
    device, _, autocast = devices.for_inference(cfg.device, cfg.dtype)
    model, ckpt, _ = load_model(cfg.out_dir, cfg.ckpt, device)
    tokenizer = load_tokenizer(dataset_dir(ckpt, cfg.data_dir), model.config.vocab_size)
    mask_padding(model, tokenizer.vocab_size)

    prompt_ids = [tokenizer.eot_token] + tokenizer.encode(text)
    samples = generate(model, prompt_ids, cfg.num_samples, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                       cfg.seed, autocast)
    texts = [tokenizer.decode(ids[1:]) for ids in samples]   # without the leading end-of-text token
    for sample_text in texts:
        print(sample_text)
        print("-" * 40, flush=True)
    return texts


if __name__ == "__main__":
    run_cli(main)
