"""
Does compile=True make the comparison harness's tiny runs cheaper on a CPU? One run of the main setting
(config/parts/compare_tiny.py, Sophia-G as tuned) uncompiled and one compiled, each a process on one thread, as the
harness runs them, one after the other:

    python bench/compile_cpu.py                    # 400 steps, the harness's run length
    python bench/compile_cpu.py --steps=100

It prints each run's whole wall time (the process: start-up, compilation, training, evaluation), the training
loop's time with compilation excluded, and the compile time, then the ratios uncompiled / compiled. The harness keeps
compile=False when the whole run does not get cheaper (docs/results.md has the measured figure).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import plot  # noqa: E402


def one_run(steps, compile, data_dir, out):
    """(process wall seconds, training seconds without compilation, compile seconds, final val loss)."""
    args = [sys.executable, "train.py", "config/parts/compare_tiny.py", f"--out_dir={out}", f"--data_dir={data_dir}",
            "--optimizer_name=sophiag", "--learning_rate=0.00025", "--rho=0.05", "--threads=1",
            f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--compile={compile}"]
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    train_rows, eval_rows, _ = plot.load_metrics(out)
    last = train_rows[-1]
    return wall, last["time"], last.get("compile_time", 0.0), eval_rows[-1]["val/loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compile-cpu-") as tmp:
        data_dir = os.path.join(tmp, "data")
        subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={data_dir}"], cwd=ROOT, check=True,
                       capture_output=True)
        results = {flag: one_run(args.steps, flag, data_dir, os.path.join(tmp, f"compile{flag}"))
                   for flag in (False, True)}
    print(f"Sophia-G, main setting, {args.steps} steps, one thread per run:")
    print(f"{'compile':8s} {'wall s':>8s} {'train s':>8s} {'compile s':>10s} {'final val':>10s}")
    for flag, (wall, train_s, compile_s, final) in results.items():
        print(f"{str(flag):8s} {wall:8.1f} {train_s:8.1f} {compile_s:10.1f} {final:10.4f}")
    (wall0, train0, _, _), (wall1, train1, _, _) = results[False], results[True]
    print(f"uncompiled / compiled: whole run {wall0 / wall1:.2f}x, training loop alone {train0 / train1:.2f}x")


if __name__ == "__main__":
    main()
