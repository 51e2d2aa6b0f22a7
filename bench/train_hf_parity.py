"""
Does train_hf.py (transformers' GPT2LMHeadModel in the Hugging Face Trainer) train like train.py? The same tiny GPT,
data, batch, schedule and optimizer settings through both, over several seeds, each final model scored on the same
held-out sequences.

    python bench/train_hf_parity.py                      # AdamW and Sophia-G, seeds 1-4, 2 runs at a time
    python bench/train_hf_parity.py --seeds 1 2 3 4 5 6 --jobs 1
    python bench/train_hf_parity.py --optimizers sophiag --sophia_lr=2.5e-4 --rho=0.01   # another Sophia-G setting
    python bench/train_hf_parity.py --optimizers sophiag --hf_init=model_py   # train_hf.py from train.py's weights

Both paths: config/parts/tiny.py's GPT (4 layers, width 128, context 64) with biases (GPT2LMHeadModel always has them,
so train.py runs with --bias=True), the first 3 MB of the stdlib corpus, 100 steps of 16 sequences, warmup 10,
cosine to 0.05 x peak, clip 1.0, the tiny configs' lr (2e-3) and optimizers.py's OPTIMIZER_DEFAULTS, Sophia-G's Hessian
pass on 4 sequences every 10 steps. What differs is everything each path does its own way: the initial weights
(model.py's init vs transformers', unless --hf_init=model_py gives train_hf.py train.py's weights for the same
seed), the batches (random windows vs shuffled group_texts chunks), the loss plumbing, the Hessian refresh. So the
runs of one seed are not paired, and the comparison is between the two distributions of final losses: the mean
of each and the difference of the means with its 95% interval.

Scoring: every 64-token chunk of the val split, the mean cross-entropy of its 63 next-token predictions, the same
sequences and the same arithmetic for both models. Writes <out>/train_hf_parity.json (no absolute paths).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRAIN_PY_CONFIGS = {"adamw": "config/train_tiny_adam.py", "sophiag": "config/train_tiny_sophiag.py"}
HF_CONFIG = "config/train_hf_tiny_sophiag.py"
LEARNING_RATE = 2e-3          # both tiny configs' lr (train_tiny_adam.py, train_tiny_sophiag.py)
MAX_BYTES = 3000000           # train_hf_tiny_sophiag.py's max_bytes
BLOCK = 64


def settings(optimizer, args):
    """The optimizer keys both paths get: the tiny configs' lr, or --sophia_lr / --rho for Sophia-G."""
    if optimizer != "sophiag":
        return [f"--learning_rate={LEARNING_RATE}"]
    return [f"--learning_rate={args.sophia_lr}"] + ([f"--rho={args.rho}"] if args.rho is not None else [])


def train_py(run_dir, data_dir, optimizer, seed, args):
    return [sys.executable, "train.py", TRAIN_PY_CONFIGS[optimizer], f"--out_dir={run_dir}", f"--data_dir={data_dir}",
            f"--seed={seed}", "--bias=True", "--threads=1", "--eval_interval=100", "--eval_sequences=8",
            "--log_interval=100", "--keep_last=1", *settings(optimizer, args)]


def train_hf(run_dir, optimizer, seed, args):
    return [sys.executable, "train_hf.py", HF_CONFIG, f"--output_dir={run_dir}", f"--optimizer_name={optimizer}",
            f"--seed={seed}", "--eval_strategy=no", "--save_steps=100000", "--logging_steps=100",
            f"--init={args.hf_init}", *settings(optimizer, args)]


def run(command):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(command[1:3])} failed:\n{done.stderr[-2000:]}")


def val_chunks(data_dir):
    """(N, 64) token ids: the val split cut into consecutive 64-token chunks (as group_texts cuts it)."""
    tokens = np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.uint16).astype(np.int64)
    usable = len(tokens) // BLOCK * BLOCK
    return torch.from_numpy(tokens[:usable]).view(-1, BLOCK)


@torch.no_grad()
def score(logits_of, chunks, batch=64):
    """Mean cross-entropy of the 63 next-token predictions of every chunk."""
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        x = chunks[i:i + batch]
        logits = logits_of(x)[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        count += x[:, 1:].numel()
    return total / count


def score_run(path, run_dir, chunks):
    if path == "train.py":
        from checkpoint import load_model
        model, _, _ = load_model(run_dir, None, "cpu")
        return score(lambda x: model(x)[0], chunks)
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging
    logging.disable_progress_bar()
    model = GPT2LMHeadModel.from_pretrained(run_dir).eval()
    return score(lambda x: model(input_ids=x).logits, chunks)


def summary(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "sophiag"], choices=sorted(TRAIN_PY_CONFIGS))
    parser.add_argument("--sophia_lr", type=float, default=LEARNING_RATE, help="Sophia-G's peak lr on both paths")
    parser.add_argument("--rho", type=float, default=None, help="Sophia-G's rho on both paths (default: train.py's)")
    parser.add_argument("--hf_init", default="transformers", choices=["transformers", "model_py"],
                        help="train_hf.py's initial weights (its --init)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    if len(args.seeds) < 2:
        sys.exit("error: --seeds needs at least 2 seeds: the comparison is between distributions of final losses")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={data_dir}", f"--max_bytes={MAX_BYTES}"],
                       cwd=ROOT, check=True, capture_output=True)
        runs = [(opt, path, seed) for opt in args.optimizers for seed in args.seeds for path in ("train.py", "train_hf.py")]
        dirs = {r: os.path.join(tmp, f"{r[0]}-{r[1]}-{r[2]}") for r in runs}
        commands = [train_py(dirs[r], data_dir, r[0], r[2], args) if r[1] == "train.py"
                    else train_hf(dirs[r], r[0], r[2], args) for r in runs]
        print(f"{len(runs)} runs, {args.jobs} at a time", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, commands))
        chunks = val_chunks(data_dir)
        losses = {r: score_run(r[1], dirs[r], chunks) for r in runs}
    rows = []
    print(f"\nval loss on {len(chunks)} chunks of {BLOCK} tokens after 100 steps (seeds {args.seeds}; Sophia-G lr "
          f"{args.sophia_lr}, rho {args.rho or 'default'}; train_hf.py init {args.hf_init})\n")
    print("| optimizer | train.py (mean ± std) | train_hf.py (mean ± std) | train_hf.py − train.py (95% CI) |")
    print("|---|---|---|---|")
    for opt in args.optimizers:
        ours = [losses[(opt, "train.py", s)] for s in args.seeds]
        theirs = [losses[(opt, "train_hf.py", s)] for s in args.seeds]
        (m1, s1), (m2, s2) = summary(ours), summary(theirs)
        half = 1.96 * ((s1 ** 2 + s2 ** 2) / len(args.seeds)) ** 0.5   # independent samples, normal approximation
        rows.append(dict(optimizer=opt, seeds=args.seeds, train_py=ours, train_hf=theirs, difference=m2 - m1,
                         ci95=half))
        print(f"| {opt} | {m1:.3f} ± {s1:.3f} | {m2:.3f} ± {s2:.3f} | {m2 - m1:+.3f} ± {half:.3f} |")
    for row in rows:
        print(f"{row['optimizer']:8s} per seed  train.py {' '.join(f'{v:.3f}' for v in row['train_py'])}   "
              f"train_hf.py {' '.join(f'{v:.3f}' for v in row['train_hf'])}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train_hf_parity.json"), "w") as f:
        json.dump(dict(val_chunks=len(chunks), block_size=BLOCK, learning_rate=LEARNING_RATE,
                       sophia_lr=args.sophia_lr, rho=args.rho, hf_init=args.hf_init, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
