"""
Time one optimizer step on GPT-2 shapes: Sophia-G's single-tensor, foreach, fused and default code paths
against torch.optim.AdamW (fused and foreach), all measured in the same run, plus the peak temporary memory
each step allocates.

    python bench/optimizer_step.py                                  # GPT-2 small (124M), fp32, CPU
    python bench/optimizer_step.py --model=gpt2-medium --repeats=20 --threads=2
    python bench/optimizer_step.py --device=cuda
    python bench/optimizer_step.py --paths=foreach,default          # AdamW fused, the baseline, always runs

Every optimizer gets the same parameter groups (weight decay on Linear weights only, model.param_groups) and
the same fixed random gradients. To keep memory in check they share the parameter and gradient tensors (the
values drift from step to step, the timing does not care); each has its own state. Sophia starts from a
realistic state: one update_hessian() before timing (h ≠ 0) and bs = 480·1024 tokens, as in GPT-2 small runs.

Timing: a few warm-up steps per optimizer (the first fused call compiles its kernel with torch.compile, a
one-time cost reported as "first step"), then `repeats` rounds; each round times one step() of every
optimizer, in a rotating order, so a slow moment of the machine hits all optimizers alike. Reported: median,
min and interquartile range in ms, each median over AdamW(fused=True)'s median, and the paired ratio: the
median over rounds of step time / AdamW fused step time in the same round (steadier on a shared machine).

Peak extra memory: the most memory the step holds beyond what existed before it, i.e. its temporaries.
CUDA: max_memory_allocated() over the step. CPU: the allocator's events from torch.profiler, summed in time
order (this sees the buffers of compiled kernels too, since inductor allocates through the same allocator).

Bandwidth: each path's GB/s counts the bytes a step must move at least (Sophia 24 per fp32 parameter, AdamW
28), against the machine's streaming bandwidth measured in the same rounds (a += b in place on two
parameter-sized buffers, the optimizers' access pattern).

Memory needed: parameters, gradients and two state tensors per optimizer, i.e. 14 copies of the model with
all six paths: about 8 GB of RAM for gpt2 in fp32; pass fewer --paths for the larger models.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from model import GPT, GPT_SIZES, GPTConfig  # noqa: E402
from sophia import SophiaG  # noqa: E402
from bench.measure import interleaved, peak_extra_bytes, summary, timed  # noqa: E402

SIZES = {name: dict(n_layer=l, n_head=h, n_embd=c) for name, (l, h, c) in GPT_SIZES.items()}
SIZES["tiny"] = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=64)  # a seconds-long smoke run
BS = 480 * 1024                           # tokens per optimizer step in the GPT-2 runs (total_bs · block_size)
SOPHIA = dict(lr=6e-4, betas=(0.965, 0.99), rho=0.05)                      # GPT-2 small Sophia-G config
SOPHIA_WD, ADAMW_WD = 0.2, 0.1
PATHS = {  # name: (label, optimizer factory taking param groups)
    "single": ("sophia single-tensor", lambda g: SophiaG(g, **SOPHIA, foreach=False, fused=False)),
    "foreach": ("sophia foreach", lambda g: SophiaG(g, **SOPHIA, foreach=True)),
    "fused": ("sophia fused", lambda g: SophiaG(g, **SOPHIA, fused=True)),
    "default": ("sophia default", lambda g: SophiaG(g, **SOPHIA)),
    "adamw_fused": ("adamw fused", lambda g: torch.optim.AdamW(g, lr=6e-4, betas=(0.9, 0.95), fused=True)),
    "adamw_foreach": ("adamw foreach", lambda g: torch.optim.AdamW(g, lr=6e-4, betas=(0.9, 0.95),
                                                                   foreach=True)),
}
BASELINE = "adamw_fused"
STREAM = "stream"          # the bandwidth reference (in-place a += b), timed beside the optimizers
TARGET = 0.9              # the default Sophia step over AdamW(fused=True)'s, near the bandwidth limit of 0.86
BYTES_PER_ELEMENT = {"sophia": 4 * 6, "adamw": 4 * 7}   # fp32 tensors read + written per parameter per step
WARMUP_STEPS = 3


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--model", default="gpt2", choices=list(SIZES), help="parameter shapes (gpt2: 124M)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per optimizer")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in PATHS]
    if unknown or not args.paths:
        parser.error(f"--paths: unknown {unknown or 'empty list'}; choose from {','.join(PATHS)}")
    args.paths = [BASELINE] + [p for p in dict.fromkeys(args.paths) if p != BASELINE]  # baseline always first
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device; use cpu or cuda")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device} is not supported; use cpu or cuda")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch; use --device cpu")
    return args


def timed_step(opt, device):
    """One optimizer step, in seconds."""
    kwargs = dict(bs=BS) if isinstance(opt, SophiaG) else {}
    return timed(lambda: opt.step(**kwargs), device)


def build_model(size, device):
    config = GPTConfig(**SIZES[size])
    with torch.device(device):
        model = GPT(config)
    generator = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():  # fixed random gradients, of the scale seen in GPT-2 training
        p.grad = torch.randn(p.shape, device=device, generator=generator) * 1e-3
    return model


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    try:
        model = build_model(args.model, device)
        params = list(model.parameters())
        n_params = sum(p.numel() for p in params)
        largest = max(params, key=lambda p: p.numel())
        optimizers = {}
        for name in args.paths:
            groups = model.param_groups(ADAMW_WD if name.startswith("adamw") else SOPHIA_WD)
            optimizers[name] = PATHS[name][1](groups)
            if isinstance(optimizers[name], SophiaG):
                optimizers[name].update_hessian()  # h ← (1 − β2)·g⊙g: a non-zero curvature estimate
    except RuntimeError as err:  # torch.OutOfMemoryError on CUDA, "can't allocate memory" on CPU
        if "memory" not in str(err):
            raise
        fail(f"out of memory building --model {args.model} with {len(args.paths)} optimizers on {device}; "
             f"pass fewer --paths or a smaller --model")

    print(f"torch {torch.__version__} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f" | threads {torch.get_num_threads()} | model {args.model}: {n_params:,} parameters in "
          f"{len(params)} tensors, {next(iter(params)).dtype} | Sophia bs {BS:,} | repeats {args.repeats}")

    first_step, times = {}, {name: [] for name in optimizers}
    for name, opt in optimizers.items():
        try:
            first_step[name] = timed_step(opt, device)  # fused: torch.compile runs here, once
        except RuntimeError as err:
            if name != "fused":
                raise
            fail(f"{PATHS[name][0]}: the first step failed ({str(err).splitlines()[0]}); the fused path needs "
                 f"torch.compile (a C++ compiler on CPU, triton on CUDA): drop '{name}' from --paths")
        for _ in range(WARMUP_STEPS - 1):
            timed_step(opt, device)
    names = list(optimizers)
    # the machine's streaming bandwidth, timed in the same rounds: target += source over two buffers the size of
    # all parameters, in place like the optimizers' updates (reads 2, writes 1 x their bytes; a copy into a
    # fresh buffer would also read the destination's cache lines before writing them, uncounted)
    source = torch.ones(n_params, dtype=largest.dtype, device=device)
    target = torch.ones_like(source)
    calls = {name: (lambda opt=opt: timed_step(opt, device)) for name, opt in optimizers.items()}
    times = interleaved({**calls, STREAM: lambda: target.add_(source)}, args.repeats, device)
    stream_bandwidth = 3 * source.numel() * source.element_size() / np.median(times.pop(STREAM))
    del source, target
    peaks = {name: peak_extra_bytes(lambda: timed_step(opt, device), device) for name, opt in optimizers.items()}

    default_path = None
    if "default" in optimizers:  # which path SophiaG(params) took here (foreach if compilation failed)
        default_path = optimizers["default"]._choose_path(optimizers["default"].param_groups[0])
    results = summary(times, BASELINE)
    for name in names:
        moved = BYTES_PER_ELEMENT["adamw" if name.startswith("adamw") else "sophia"] * n_params
        results[name].update(first_step_ms=first_step[name] * 1e3, peak_extra_bytes=peaks[name],
                             bandwidth=moved / (results[name]["median_ms"] / 1e3))
        results[name]["of_stream_bandwidth"] = results[name]["bandwidth"] / stream_bandwidth

    MB = 2 ** 20
    print(f"{'path':<26} {'median ms':>10} {'min ms':>8} {'IQR ms':>8} {'ratio vs AdamW fused':>21} "
          f"{'paired ratio':>13} {'first step ms':>14} {'peak extra MB':>14} {'GB/s':>7} {'of stream':>10}")
    for name in names:
        r = results[name]
        label = PATHS[name][0] + (f" ({default_path})" if name == "default" else "")
        print(f"{label:<26} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} {r['iqr_ms']:>8.1f} "
              f"{r['ratio']:>20.2f}x {r['paired_ratio']:>12.2f}x {r['first_step_ms']:>14.1f} "
              f"{r['peak_extra_bytes'] / MB:>14.1f} {r['bandwidth'] / 1e9:>7.1f} {r['of_stream_bandwidth']:>9.0%}")
    largest_mb = largest.numel() * largest.element_size() / MB
    limit = BYTES_PER_ELEMENT["sophia"] / BYTES_PER_ELEMENT["adamw"]
    print(f"stream bandwidth {stream_bandwidth / 1e9:.1f} GB/s (in-place a += b). GB/s counts the bytes a step must move at least: "
          f"Sophia reads p, g, m, h and writes p, m ({BYTES_PER_ELEMENT['sophia']} B per fp32 parameter), AdamW "
          f"also reads and writes v ({BYTES_PER_ELEMENT['adamw']} B), so at equal efficiency Sophia takes "
          f"{limit:.2f}x AdamW's time")
    print(f"largest parameter: {tuple(largest.shape)}, {largest_mb:.1f} MB")
    if "default" in results:
        ratio = results["default"]["ratio"]
        print(f"default Sophia step / AdamW fused step = {ratio:.2f}x (target <= {TARGET}x): "
              f"{'met' if ratio <= TARGET else 'NOT met'} (paired: {results['default']['paired_ratio']:.2f}x)")
    fused = [n for n in names if n == "fused" or (n == "default" and default_path == "fused")]
    if fused:  # the kernel compiles once per process (faster when inductor's on-disk cache is warm)
        r = results[fused[0]]
        print(f"one-time torch.compile of the fused kernel: {(r['first_step_ms'] - r['median_ms']) / 1e3:.1f} s "
              f"(first fused step minus its median)")
        peak_mb = r["peak_extra_bytes"] / MB
        print(f"fused path peak temporary memory {peak_mb:.1f} MB {'<=' if peak_mb <= largest_mb else '>'} "
              f"largest parameter {largest_mb:.1f} MB")
    return results


if __name__ == "__main__":
    main()
