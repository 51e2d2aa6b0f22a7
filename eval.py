"""
Evaluate a checkpoint exactly: the mean cross-entropy over a whole split, read front to back; or, with --tasks,
its few-shot accuracy on SuperGLUE as the paper does, through lm-evaluation-harness.

    python eval.py --out_dir=out-tiny-sophiag                          # latest checkpoint, the whole val split
    python eval.py --ckpt=out-gpt2-small-sophiag/ckpt_best.pt          # a given checkpoint file
    python eval.py --out_dir=out-tiny-sophiag --split=train --max_tokens=100000
    python eval.py --out_dir=out-medium-sophiag,out-medium-adam --tasks=superglue_paper --num_fewshot=2 \
                   --json=icl.json                                     # BoolQ, CB, COPA, RTE (pip install -r
                                                                       # requirements-eval.txt; hub data)
    python eval.py --ckpt=a.pt,b.pt --tasks=boolq,cb --task_data=DIR   # offline: DIR/<task>/{train,validation}.jsonl

The training loop's val/loss averages eval_iters fixed random windows: cheap, and comparable between runs.
Here the split is read in order instead. Window k feeds tokens [kT, (k+1)T) and predicts tokens [kT+1, (k+1)T],
T = block_size, so every token after the first is predicted exactly once (the last window may be shorter),
and a checkpoint's number depends on nothing random. Tokens near a window's start see little context, so this
loss sits a little above a sliding-window one; every checkpoint gets the same windows, so it stays comparable.
The softmax runs over the model's whole (padded) vocabulary, as in training.

Reported, and written beside the checkpoint as eval_<split>_<iter>.json (eval_<split>_<iter>_<N>tokens.json
when --max_tokens cuts the split short):
    loss            L = -(1/N) Σ_t log p(x_t | x_<t)    nats per token, over the N predicted tokens
    perplexity      exp(L)
    bits_per_token  L / ln 2
    bits_per_byte   N·L / ln 2 over the UTF-8 bytes those tokens spell (end-of-text counts as one byte):
                    equal to bits_per_token for the bytes tokenizer, comparable across tokenizers
--json=PATH writes the same object there too (a list of them for several checkpoints).

In-context evaluation (lm_eval_adapter.py holds the adapter and the engine's defects we handle) prints one table,
task x checkpoint: accuracy with its standard error, CB's macro-F1, ReCoRD's F1 and exact match, the number of
documents n, and the average of the tasks' accuracies. --json=PATH writes it as
    {"checkpoint": ..., "iter_num": ..., "num_fewshot": K, "average": ...,
     "tasks": {"boolq": {"acc": 0.61, "acc_stderr": 0.02, "n": 3270, "metrics": ["acc"], ...}, ...}, ...}
or a list of such objects for several checkpoints; `python plot.py --icl PATH ...` draws the paper's Figure 6.
"""

import sys

if __name__ == "__main__":   # Ctrl-C while torch loads: exit with status 130, quietly (run_cli takes over after)
    import configurator
    configurator.exit_quietly_on_ctrl_c()

import importlib.metadata
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

import devices
from checkpoint import dataset_dir, load_model, load_tokenizer
from configurator import UserError, load_config, run_cli
from dataloader import TokenDataset


@dataclass
class EvalConfig:
    out_dir: str = "out"                    # the training run: its latest checkpoint is evaluated
    ckpt: str | None = None                 # a checkpoint file or .dcp directory instead, e.g. out/ckpt_best.pt
    split: Literal["val", "train"] = "val"
    max_tokens: int | None = None           # predict at most this many tokens (the first ones); None: the whole split
    batch_size: int | None = None           # windows per forward pass; None: the checkpoint's micro-batch size
    data_dir: str | None = None             # None: the dataset the checkpoint was trained on
    device: str = "auto"                    # auto: cuda if available, else cpu; or cpu, cuda, cuda:1, mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: as in training (devices.py)
    json: str | None = None                 # also write the result here (a list for several checkpoints)
    # in-context evaluation (lm-eval); out_dir and ckpt may list several, comma-separated: one column each
    tasks: str | None = None                # e.g. boolq,cb,copa,rte or superglue_paper; None: perplexity instead
    num_fewshot: int = 0                    # examples from the train split placed before each document
    limit: int | None = None                # score only the first N documents of each task; None: all
    task_data: str | None = None            # DIR/<task>/{train,validation}.jsonl (HF super_glue schema); None: hub
    fewshot_seed: int = 1234                # seeds lm-eval's few-shot sampler (1234 is its own default)


# ----------------------------------------------------------------------------------------------------------
# exact evaluation

def eval_windows(data, n_targets, block_size, batch_size):
    """Yield (x, y) int64 arrays of shape (rows, T): x = data[s:s+T], y = data[s+1:s+T+1] for s = 0, T, 2T, ...,
    so the targets are tokens 1..n_targets, each exactly once. Full windows come batch_size at a time; a last,
    shorter window (n_targets not a multiple of T) comes alone."""
    full = n_targets // block_size
    for first in range(0, full, batch_size):
        rows = min(batch_size, full - first)
        chunk = np.asarray(data[first * block_size:(first + rows) * block_size + 1], dtype=np.int64)
        yield chunk[:-1].reshape(rows, block_size), chunk[1:].reshape(rows, block_size)   # windows are contiguous
    if n_targets % block_size:
        chunk = np.asarray(data[full * block_size:n_targets + 1], dtype=np.int64)
        yield chunk[None, :-1], chunk[None, 1:]


def token_byte_lengths(tokenizer):
    """UTF-8 bytes that each token id spells, as an array indexed by id; end-of-text counts as one byte."""
    if tokenizer.name == "bytes":
        lengths = np.ones(tokenizer.vocab_size, dtype=np.int64)
    else:
        encoding = tokenizer.encoding
        lengths = np.array([len(encoding.decode_single_token_bytes(i)) for i in range(tokenizer.vocab_size)],
                           dtype=np.int64)
    lengths[tokenizer.eot_token] = 1
    return lengths


@torch.no_grad()
def evaluate(model, data, n_targets, batch_size, autocast, byte_lengths):
    """(Σ -log p over targets 1..n_targets of the token array `data`, number of windows, UTF-8 bytes spelled)."""
    device = next(model.parameters()).device
    nats, windows, n_bytes = 0.0, 0, 0
    for x, y in eval_windows(data, n_targets, model.config.block_size, batch_size):
        with autocast:
            logits, _ = model(torch.from_numpy(x).to(device))
        # summed in fp32 per batch (as training takes its loss), accumulated over batches in float64
        nats += F.cross_entropy(logits.float().flatten(0, 1), torch.from_numpy(y).to(device).flatten(),
                                reduction="sum").item()
        windows += len(x)
        n_bytes += int(byte_lengths[y].sum())
    return nats, windows, n_bytes


def checkpoint_specs(cfg):
    """[(out_dir, ckpt file or None)] to evaluate: each --ckpt file, else each --out_dir (comma-separated)."""
    if cfg.ckpt:
        return [(cfg.out_dir, path.strip()) for path in cfg.ckpt.split(",") if path.strip()]
    return [(out_dir.strip(), None) for out_dir in cfg.out_dir.split(",") if out_dir.strip()]


def write_json(path, obj, what):
    try:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror}); the numbers above are the {what}") from None
    print(f"wrote {path}")


def main(argv=None):
    """Evaluate, print the report, write the JSON. Returns the reported numbers: a dict for one checkpoint, a list
    of dicts for several."""
    cfg, _ = load_config(EvalConfig, sys.argv[1:] if argv is None else argv)
    for key in ("max_tokens", "batch_size", "limit"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise UserError(f"--{key} must be a positive integer (or None), got {getattr(cfg, key)}")
    if cfg.num_fewshot < 0:
        raise UserError(f"--num_fewshot must be 0 or more, got {cfg.num_fewshot}")
    specs = checkpoint_specs(cfg)
    if not specs:
        raise UserError("no checkpoint given: pass --out_dir=DIR[,DIR...] or --ckpt=FILE[,FILE...]")
    if cfg.tasks is not None:
        results = in_context(cfg, specs)
    else:
        results = [perplexity(cfg, out_dir, ckpt_path) for out_dir, ckpt_path in specs]
    result = results[0] if len(results) == 1 else results
    if cfg.json:
        write_json(cfg.json, result, "result")
    return result


def perplexity(cfg, out_dir, ckpt_path):
    """The exact loss of one checkpoint over the split; prints it and writes it beside the checkpoint."""
    device, dtype, autocast = devices.for_inference(cfg.device, cfg.dtype)
    model, ckpt, path = load_model(out_dir, ckpt_path, device)
    data_dir = dataset_dir(ckpt, cfg.data_dir)
    if not os.path.isdir(data_dir):
        raise UserError(f"dataset directory {data_dir} not found; pass --data_dir=DIR, the prepared dataset the "
                        f"checkpoint was trained on")
    tokenizer = load_tokenizer(data_dir, model.config.vocab_size)
    dataset = TokenDataset(data_dir, model.config.block_size)   # checks the files; names the prepare command
    n_split = dataset.lengths[cfg.split]
    n_targets = n_split - 1 if cfg.max_tokens is None else min(cfg.max_tokens, n_split - 1)
    batch_size = cfg.batch_size or ckpt["config"]["batch_size"]
    data = np.memmap(os.path.join(data_dir, f"{cfg.split}.bin"), dtype=np.uint16, mode="r")

    t0 = time.perf_counter()
    nats, windows, n_bytes = evaluate(model, data, n_targets, batch_size, autocast, token_byte_lengths(tokenizer))
    seconds = time.perf_counter() - t0
    loss = nats / n_targets
    result = dict(checkpoint=os.path.abspath(path), iter_num=ckpt["iter_num"],
                  optimizer_name=ckpt["config"].get("optimizer_name"), split=cfg.split,
                  data_dir=os.path.abspath(data_dir), tokenizer=tokenizer.name, tokens=n_targets, split_tokens=n_split,
                  windows=windows, block_size=model.config.block_size, bytes=n_bytes,
                  loss=loss, perplexity=math.exp(loss), bits_per_token=loss / math.log(2),
                  bits_per_byte=nats / math.log(2) / n_bytes, device=str(device), dtype=dtype, seconds=seconds)

    suffix = "" if n_targets == n_split - 1 else f"_{n_targets}tokens"
    out_path = os.path.join(os.path.dirname(os.path.abspath(path)), f"eval_{cfg.split}_{ckpt['iter_num']}{suffix}.json")
    print(f"{path}: iteration {result['iter_num']}, {model.num_params() / 1e6:.2f}M parameters, "
          f"trained with {result['optimizer_name']}")
    print(f"{cfg.split} split of {data_dir} ({tokenizer.name} tokenizer): {n_targets:,} of {n_split - 1:,} tokens "
          f"predicted in {windows:,} windows of up to {model.config.block_size}; {dtype} on {device}, {seconds:.1f} s")
    print(f"loss {loss:.4f} nats/token | perplexity {result['perplexity']:.3f} | "
          f"{result['bits_per_token']:.4f} bits/token | {result['bits_per_byte']:.4f} bits/byte")
    write_json(out_path, result, "result")
    return result


# ----------------------------------------------------------------------------------------------------------
# in-context evaluation (SuperGLUE through lm-eval)

def in_context(cfg, specs):
    """Every checkpoint on every task -> one result dict per checkpoint; prints the table."""
    import lm_eval_adapter   # lm-eval is an optional extra; a missing one is a UserError naming the install

    tasks = lm_eval_adapter.task_names(cfg.tasks)
    if cfg.task_data is not None:
        if not os.path.isdir(cfg.task_data):
            raise UserError(f"--task_data={cfg.task_data} is not a directory; it holds <task>/{{train,validation}}.jsonl")
        for task in tasks:     # every file checked before any model is loaded
            lm_eval_adapter.check_task_data(task, cfg.task_data, cfg.num_fewshot)
    device, dtype, autocast = devices.for_inference(cfg.device, cfg.dtype)
    results = []
    for out_dir, ckpt_path in specs:
        model, ckpt, path = load_model(out_dir, ckpt_path, device)
        tokenizer = load_tokenizer(dataset_dir(ckpt, cfg.data_dir), model.config.vocab_size)
        lm = lm_eval_adapter.GPTLM(model, tokenizer, cfg.batch_size or ckpt["config"]["batch_size"], autocast)
        t0 = time.perf_counter()
        scores = lm_eval_adapter.evaluate_tasks(lm, tasks, cfg.num_fewshot, cfg.limit, cfg.task_data,
                                                cfg.fewshot_seed)
        results.append(dict(checkpoint=os.path.abspath(path), iter_num=ckpt["iter_num"],
                            optimizer_name=ckpt["config"].get("optimizer_name"), num_fewshot=cfg.num_fewshot,
                            limit=cfg.limit, fewshot_seed=cfg.fewshot_seed, tasks=scores,
                            average=lm_eval_adapter.average(scores),
                            task_data=os.path.abspath(cfg.task_data) if cfg.task_data else "hub",
                            tokenizer=tokenizer.name, block_size=model.config.block_size,
                            lm_eval_version=importlib.metadata.version("lm_eval"), device=str(device), dtype=dtype,
                            seconds=time.perf_counter() - t0))
        del model, lm
    print_icl_table(results)
    return results


def _cell(value, stderr):
    if value is None:
        return "-"
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def print_icl_table(results):
    """One row per (task, metric), one column per checkpoint: value ± stderr; then n and the average."""
    first = results[0]
    names = [os.path.relpath(r["checkpoint"]) if not os.path.relpath(r["checkpoint"]).startswith("..")
             else r["checkpoint"] for r in results]
    headers = [f"{name} (iter {r['iter_num']})" for name, r in zip(names, results)]
    rows = []
    for task, scores in first["tasks"].items():
        for metric in scores["metrics"]:
            cells = [_cell(r["tasks"][task].get(metric), r["tasks"][task].get(f"{metric}_stderr")) for r in results]
            rows.append([task, metric, *cells, str(scores["n"])])
    rows.append(["average", "acc", *[_cell(r["average"], None) for r in results], ""])
    table = [["task", "metric", *headers, "n"], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"SuperGLUE in-context evaluation: {first['num_fewshot']}-shot, validation split "
          f"({'first ' + str(first['limit']) + ' documents, ' if first['limit'] else ''}data: {first['task_data']}), "
          f"lm-eval {first['lm_eval_version']} task configs; {first['dtype']} on {first['device']}")
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(width) if j < 2 else cell.rjust(width) for j, (cell, width) in
                        enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))
    print("average: the mean over tasks of accuracy (ReCoRD: exact match); ± one standard error over documents")



if __name__ == "__main__":
    run_cli(main)
