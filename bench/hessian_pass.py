"""
The cost of Sophia-G's Hessian micro-step against a training micro-step, in time and in peak memory, on GPT-2
shapes, all measured in the same run.

    python bench/hessian_pass.py                              # GPT-2 small, micro-batch 2 x 1024, fp32, CPU
    python bench/hessian_pass.py --batch_size=12 --device=cuda --dtype=bfloat16 --compile

Micro-steps, each from the same weights on the same kind of batch (random tokens):
    train        what train.py runs per training micro-step: model(x, y) (fp32 cross-entropy), backward
    hessian      what train.py runs per Hessian micro-step: logits = model(x), then sophia.gnb_backward:
                 labels sampled from the model's own softmax (one generator per sequence), and
                 (softmax − onehot(ŷ)) / N backpropagated from the logits, in the logits' own memory
    gnb_loss     the same through the public gnb_loss(): a second (fp32) log-softmax and its backward
Every micro-step starts with no .grad (train.py sets them to None), so each creates its gradients.

Time: one warm-up of each, then `repeats` interleaved rounds (medians and the paired ratio: the median over
rounds of a micro-step's time over the training micro-step's in the same round). Peak memory: the parameters
and buffers plus the most memory the micro-step allocates beyond them (CUDA: max_memory_allocated; CPU:
torch.profiler's allocator events), measured once per micro-step after the timing.
Targets (the training micro-step is the baseline): hessian <= 1.1x its time and <= 1.2x its peak memory.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from bench.measure import interleaved, peak_extra_bytes, summary, timed  # noqa: E402
from model import GPT, GPT_SIZES, GPTConfig  # noqa: E402
from sophia import gnb_backward, gnb_loss  # noqa: E402

SIZES = {name: dict(n_layer=l, n_head=h, n_embd=c) for name, (l, h, c) in GPT_SIZES.items()}
SIZES["tiny"] = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512)   # a seconds-long smoke run
TARGETS = {"time": 1.1, "memory": 1.2}
BASELINE = "train"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--model", default="gpt2", choices=list(SIZES), help="shapes (gpt2: 124M)")
    parser.add_argument("--batch_size", type=int, default=2, help="sequences per micro-batch")
    parser.add_argument("--block_size", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="autocast dtype (float32: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, as train.py on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.block_size, args.repeats) < 1:
        parser.error("--batch_size, --block_size and --repeats must be at least 1")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch; use --device cpu")
    return args


def micro_steps(model, forward, x, y, autocast):
    """The three micro-steps, as functions of nothing (each leaves its .grad behind, cleared before the next)."""
    generators = lambda: [torch.Generator(device=x.device).manual_seed(1000 + r) for r in range(len(x))]  # noqa

    def train():
        with autocast:
            loss = forward(x, y)[1]
        loss.backward()

    def hessian():
        with autocast:
            logits = forward(x)[0]
        gnb_backward(logits, generator=generators())

    def through_gnb_loss():
        with autocast:
            logits = forward(x)[0]
        gnb_loss(logits, generator=generators()).backward()

    def fresh(step):     # no gradients when a micro-step starts, as in train.py
        def run():
            model.zero_grad(set_to_none=True)
            step()
        return run
    return {"train": fresh(train), "hessian": fresh(hessian), "gnb_loss": fresh(through_gnb_loss)}


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, DTYPES[args.dtype]
    config = GPTConfig(**{**SIZES[args.model], "block_size": args.block_size, "dropout": 0.0})
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(config)
    forward = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    x = torch.randint(0, config.vocab_size, (args.batch_size, args.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (args.batch_size, args.block_size), device=device)
    steps = micro_steps(model, forward, x, y, autocast)
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers(), x, y])
    logits_bytes = args.batch_size * args.block_size * config.vocab_size * 4
    print(f"torch {torch.__version__} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f" | threads {torch.get_num_threads()} | model {args.model}: {model.num_params(False):,} parameters | "
          f"micro-batch {args.batch_size} x {args.block_size} | {args.dtype} | compile {args.compile} | "
          f"fp32 logits {logits_bytes / 2**20:,.1f} MB | repeats {args.repeats}")

    first = {name: timed(step, device) for name, step in steps.items()}     # warm-up (compile: graphs built here)
    results = summary(interleaved(steps, args.repeats, device), BASELINE)
    for name, step in steps.items():
        extra = peak_extra_bytes(step, device)
        results[name].update(first_ms=first[name] * 1e3, peak_bytes=resident + extra, extra_bytes=extra)
    model.zero_grad(set_to_none=True)
    for name in results:
        results[name]["memory_ratio"] = results[name]["peak_bytes"] / results[BASELINE]["peak_bytes"]

    MB = 2 ** 20
    print(f"{'micro-step':<10} {'median ms':>10} {'min ms':>9} {'IQR ms':>8} {'time vs train':>14} "
          f"{'paired':>7} {'peak MB':>9} {'memory vs train':>16} {'beyond weights, in fp32 logits':>31}")
    for name, r in results.items():
        print(f"{name:<10} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} {r['iqr_ms']:>8.1f} {r['ratio']:>13.2f}x "
              f"{r['paired_ratio']:>6.2f}x {r['peak_bytes'] / MB:>9.0f} {r['memory_ratio']:>15.2f}x "
              f"{r['extra_bytes'] / logits_bytes:>30.2f}x")
    hessian = results["hessian"]
    time_met = hessian["paired_ratio"] <= TARGETS["time"]
    memory_met = hessian["memory_ratio"] <= TARGETS["memory"]
    print(f"Hessian micro-step / training micro-step: time {hessian['paired_ratio']:.2f}x (paired; target <= "
          f"{TARGETS['time']}x: {'met' if time_met else 'NOT met'}), peak memory {hessian['memory_ratio']:.2f}x "
          f"(target <= {TARGETS['memory']}x: {'met' if memory_met else 'NOT met'})")
    return results


if __name__ == "__main__":
    main()
