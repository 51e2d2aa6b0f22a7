"""
Whole-run wall time of Sophia-G against AdamW through the same training loop, on the tiny configs
(100 iterations; Sophia-G refreshes its Hessian 10 times).

    python bench/train_walltime.py                 # 3 interleaved repeats of each variant
    python bench/train_walltime.py --repeats 5

Variants, each a full `python train_*.py config/train_tiny_*.py` process timed from launch to exit:
    adamw            the baseline (torch's fused AdamW)
    sophiag          as configured: the Hessian pass on 4 of the 16 sequences (rescaled so bs·h stays unbiased)
    sophiag-full-h   upstream-faithful: the Hessian pass on a full global batch (hess_total_bs = total_bs)
Runs are interleaved (A, B, C, A, B, C, ...) so machine noise hits every variant alike; the medians and
their ratio to AdamW are printed, for the whole process and for the training loop alone (the 'time'
field of metrics.jsonl, which excludes start-up, evaluation and checkpointing).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(script, config, extra, out_dir):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, script, config, f"--out_dir={out_dir}", "--log_interval=10", *extra],
                   cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    last_train = [r for r in records if r["event"] == "train"][-1]
    last_eval = [r for r in records if r["event"] == "eval"][-1]
    cfg = next(r for r in records if r["event"] == "run")["config"]
    # the Hessian pass: one forward-backward over hess_total_bs sequences every hess_interval steps
    hessian_share = (cfg["hess_total_bs"] / cfg["total_bs"] / cfg["hess_interval"]
                     if cfg["optimizer_name"] in ("sophiag", "sophiah") else 0.0)
    return wall, last_train["time"], last_eval["val/loss"], hessian_share


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(ROOT, "data", "stdlib", "train.bin")):
        sys.exit("error: the tiny configs train on data/stdlib; run `python data/stdlib/prepare.py` first")
    variants = {
        "adamw": ("train_adam.py", "config/train_tiny_adam.py", []),
        "sophiag": ("train_sophiag.py", "config/train_tiny_sophiag.py", []),
        "sophiag-full-h": ("train_sophiag.py", "config/train_tiny_sophiag.py", ["--hess_total_bs=16"]),
    }
    results = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, (script, config, extra) in variants.items():
                results[name].append(run_once(script, config, extra, os.path.join(tmp, f"{name}-{r}")))
                print(f"repeat {r} {name:16s} wall {results[name][-1][0]:6.2f} s, loop {results[name][-1][1]:6.2f} s,"
                      f" final val loss {results[name][-1][2]:.4f}", flush=True)
    base_wall = statistics.median(w for w, *_ in results["adamw"])
    base_loop = statistics.median(t for _, t, *_ in results["adamw"])
    print(f"\ntiny config, 100 iterations, {args.repeats} interleaved repeats (medians)")
    print(f"{'variant':16s} {'wall s':>8s} {'ratio':>7s} {'loop s':>8s} {'ratio':>7s}")
    for name, rows in results.items():
        wall = statistics.median(w for w, *_ in rows)
        loop = statistics.median(t for _, t, *_ in rows)
        print(f"{name:16s} {wall:8.2f} {wall / base_wall:7.3f} {loop:8.2f} {loop / base_loop:7.3f}")
    for name in ("sophiag", "sophiag-full-h"):
        ratio = statistics.median(w for w, *_ in results[name]) / base_wall
        print(f"{name}: whole-run wall time / AdamW = {ratio:.3f}x; its Hessian pass adds "
              f"{results[name][0][3]:.1%} to the training forward-backward compute")


if __name__ == "__main__":
    main()
