"""
How long a checkpoint stalls the training loop, synchronous against async_checkpoint=True, in one run.

    python bench/checkpoint_stall.py                          # a 6-layer, 384-wide GPT (~130 MB checkpoints)
    python bench/checkpoint_stall.py --n_layer=12 --n_embd=768 --saves=5 --device=cuda

Measured on this repo's 2-core CPU test machine (shared, so noisy), the default model, 42 MiB checkpoints, 6 saves
per mode: synchronous 252 ms per checkpoint, async 63 ms (the copy to host memory), 4.0x; the last write's
wait at exit 194 ms.

Both modes run the same trainer set-up on the tiny config's data, alternately (sync, async, sync, ...) so that
machine noise hits both alike; between two saves the loop trains `--steps` iterations. The stall is the time
Trainer.save_checkpoint blocks the loop: the whole write when synchronous; the copy to host memory (and a wait
for the previous write, if still in flight) when async. The async write's last wait at the end is printed too.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402


def stalls(args, async_checkpoint):
    """Seconds each of args.saves checkpoints blocked the loop, and the final wait for a write in flight."""
    out = tempfile.mkdtemp(prefix="ckpt-stall-")
    try:
        trainer = train.make_trainer(["config/train_tiny_sophiag.py", f"--out_dir={out}", f"--n_layer={args.n_layer}",
                                      f"--n_embd={args.n_embd}", f"--n_head={args.n_embd // 64}",
                                      f"--device={args.device}", f"--async_checkpoint={async_checkpoint}",
                                      "--compile=False", f"--keep_last={args.saves}",
                                      *([f"--data_dir={args.data_dir}"] if args.data_dir else [])])
        seconds = []
        for save in range(args.saves):
            for _ in range(args.steps):
                trainer.train_step(trainer.state.iter_num)
                trainer.optimizer.zero_grad(set_to_none=True)
                trainer.state.iter_num += 1
            t0 = time.perf_counter()
            trainer.save_checkpoint(is_best=False)
            seconds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        trainer.checkpoints.wait()
        last_wait = time.perf_counter() - t0
        trainer.checkpoints.release()
        size = os.path.getsize(os.path.join(out, "ckpt.pt"))
        return seconds, last_wait, size
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--saves", type=int, default=3, help="checkpoints per mode and repeat")
    parser.add_argument("--steps", type=int, default=3, help="training iterations between two saves")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data_dir", default=None, help="default: data/stdlib (python data/stdlib/prepare.py)")
    args = parser.parse_args()
    results = {False: [], True: []}
    last_waits, size = [], 0
    for _ in range(args.repeats):
        for mode in (False, True):
            seconds, last_wait, size = stalls(args, mode)
            results[mode] += seconds
            if mode:
                last_waits.append(last_wait)
    sync, background = statistics.median(results[False]), statistics.median(results[True])
    print(f"checkpoint of {size / 2**20:,.0f} MiB, {len(results[False])} saves per mode")
    print(f"stall per checkpoint, synchronous: {1000 * sync:,.0f} ms (median)")
    print(f"stall per checkpoint, async:       {1000 * background:,.0f} ms (median); the last write's wait at "
          f"exit: {1000 * statistics.median(last_waits):,.0f} ms")
    print(f"ratio sync / async: {sync / background:.1f}x")


if __name__ == "__main__":
    main()
