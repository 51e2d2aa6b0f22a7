"""
Per-GPU memory of a training run, predicted from the model's shape: what fits where, and the micro-batch to use.

    python bench/memory_plan.py                          # every model x strategy x GPU memory x process count
    python bench/memory_plan.py --model=gpt2_xl --gpu_gb=40 --nproc=8
    python bench/memory_plan.py --validate               # predicted vs measured peak memory on CPU (tiny models)

For each model (GPT-2 124M to 1.5B, phi-1 small), strategy, GPU memory and process count it prints, per GPU:
parameters, gradients, Sophia's m and h (AdamW's m and v take the same), the activations of one micro-batch, the
Hessian pass's fp32 logits, and the largest micro-batch that fits with the accumulation it implies for
total_bs=480. The model of memory (bytes, T = tokens in a micro-batch, d = width, V = vocabulary, L = layers):

    weights, gradients, m, h     4 bytes per parameter each (fp32 master copies); FSDP: divided by the processes
    FSDP working set             two blocks' full weights (the one computing, the one prefetched) and two blocks'
                                 full gradients (reduce-scatter), plus the root's (embeddings) during a pass
    activations per block        16 T d values saved for the backward: LayerNorm in and out (x2), q k v, the
                                 attention output, c_fc's output and GELU's (4 T d each); 17 with
                                 scale_attn_by_inverse_layer_idx (the scaled q); 2 bytes each under bf16 (the
                                 LayerNorm inputs, the fp32 residual stream, 4), 4 bytes in fp32
    activation checkpointing     each block keeps only its input (4 T d bytes); one block's activations at a time,
                                 rebuilt after the loss head's buffers are freed (the larger of the two counts)
    the loss head                12 T V bytes at its peak, as the backward starts (log-softmax's saved fp32
                                 output, the gradient into it and the logits' gradient), beside every block's
                                 activations
    the Hessian pass             its fp32 logits, 4 T V bytes (2.5 GB at 12 x 1024 x 50304), beside the same
                                 block activations as training: printed, but below training's head (total())
    fixed                        the CUDA context, NCCL buffers and allocator slack: 3 GB per GPU

--validate runs tiny models on the CPU (fp32) in fresh processes, one step of two micro-steps each (so that the
gradients of the first are held while the second's activations peak), and compares the rise of the resident
set's high-water mark with the model's gradients + activations + loss head (+ FSDP's working set); it exits
non-zero if any error exceeds 15%. glibc is told to return freed memory at once (MALLOC_MMAP_THRESHOLD_), so
that the warm-up step's freed blocks do not hide the measured step's allocations. The fp32 rule is what it
checks; bf16 differs only in bytes per value.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GB = 1e9
MODELS = {   # name: (n_layer, n_head, n_embd, block_size, vocab), as config/parts/gpt2_*.py and config/parts/phi1_small.py
    "gpt2_small": (12, 12, 768, 1024, 50304),
    "gpt2_medium": (24, 16, 1024, 1024, 50304),
    "gpt2_large": (36, 20, 1280, 1024, 50304),
    "gpt2_xl": (48, 25, 1600, 1024, 50304),
    "phi1_small": None,       # read from its config file (untied head, rotary, 2048 tokens)
}
STRATEGIES = {   # name: (sharded, activation checkpointing, bf16 weights in the passes)
    "ddp": (False, False, False),
    "ddp+ac": (False, True, False),
    "fsdp": (True, False, False),
    "fsdp+ac": (True, True, False),
    "fsdp+ac+bf16": (True, True, True),
}
FIXED = 3 * GB
TOTAL_BS = 480


def model_shape(name):
    """(n_layer, n_embd, block_size, vocab, parameters, parameters of one block, parameters outside blocks)."""
    import torch
    from model import GPT, GPTConfig
    if MODELS.get(name) is None:
        from configurator import load_config
        from train import TrainConfig
        cfg, _ = load_config(TrainConfig, [os.path.join(ROOT, "config", "parts", f"{name}.py")])
        args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                    vocab_size=cfg.vocab_size or 50304, bias=cfg.bias, parallel_block=cfg.parallel_block,
                    rotary_dim=cfg.rotary_dim, tie_embeddings=cfg.tie_embeddings)
    else:
        n_layer, n_head, n_embd, block_size, vocab = MODELS[name]
        args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab,
                    bias=False)
    with torch.device("meta"):
        model = GPT(GPTConfig(**args))
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    return dict(n_layer=args["n_layer"], d=args["n_embd"], block_size=args["block_size"], vocab=args["vocab_size"],
                params=total, block_params=block, root_params=total - args["n_layer"] * block)


def per_gpu(shape, strategy, nproc, batch_size, *, value_bytes=2, fixed=FIXED, block_size=None, scaled_q=True):
    """Predicted bytes per GPU, by part. value_bytes: 2 under bf16 autocast (GPU), 4 in fp32 (CPU)."""
    sharded, checkpointing, bf16_weights = STRATEGIES[strategy]
    n = nproc if sharded else 1
    P, L, d, V = shape["params"], shape["n_layer"], shape["d"], shape["vocab"]
    T = batch_size * (block_size or shape["block_size"])
    parts = dict(params=4 * P / n, grads=4 * P / n, m=4 * P / n, h=4 * P / n)
    if sharded and nproc > 1:   # FSDP's working set of unsharded weights and gradients
        weight_bytes = 2 if bf16_weights else 4
        parts["fsdp_buffers"] = 2 * shape["block_params"] * (weight_bytes + 4) + shape["root_params"] * weight_bytes
    # per block: 2 fp32 residual-stream values (LayerNorm inputs) + 14 (15 with the scaled q) at value_bytes;
    # all 16-bit with bf16 weights
    narrow = 2 if bf16_weights else value_bytes
    wide = 2 if bf16_weights else 4
    layer = T * d * (2 * wide + (15 if scaled_q else 14) * narrow)
    # the loss head's peak comes as the backward starts, with every block's saved activations still held; with
    # checkpointing a block's activations are rebuilt later, after the head's buffers are freed
    head = 12 * T * V
    if checkpointing:
        parts["activations"] = L * T * d * wide + max(layer, head)
    else:
        parts["activations"] = L * layer + head
    parts["activations"] += 3 * T * d * wide       # the embeddings' output and the final LayerNorm's
    parts["hessian_logits"] = 4 * T * V
    parts["fixed"] = fixed
    return parts


def plan_row(name, shape, strategy, gpu_gb, nproc):
    """The largest micro-batch that fits (dividing 480 / nproc), its accumulation, and the parts at it."""
    best = None
    for batch_size in range(1, TOTAL_BS // nproc + 1):
        if TOTAL_BS % (batch_size * nproc):
            continue
        parts = per_gpu(shape, strategy, nproc, batch_size)
        if total(parts) <= gpu_gb * GB:
            best = (batch_size, parts)
    return best


def total(parts):
    """Peak bytes: the state, FSDP's buffers, the activations and the fixed part. The Sophia-G Hessian pass (at
    hess_batch_size = batch_size) holds the same block activations and, at its head, its fp32 logits plus their
    bf16 original (6 T V bytes), less than training's 12 T V: it never sets the peak. (Sophia-H's double
    backward is not modelled.)"""
    return sum(v for k, v in parts.items() if k != "hessian_logits")


def print_plan(models, strategies, gpus, nprocs):
    print(f"per-GPU memory in GB (fixed {FIXED / GB:.0f} GB for the CUDA context and NCCL included in 'total'); "
          f"the largest micro-batch that fits and the accumulation for total_bs={TOTAL_BS}")
    header = (f"{'model':<12} {'params':>7} {'strategy':<13} {'GPU':>4} {'procs':>5} {'params':>7} {'grads':>6} "
              f"{'m':>6} {'h':>6} {'fsdp':>5} {'activ':>6} {'hess':>5} {'total':>6}  micro-batch x accumulation")
    print(header)
    for name in models:
        shape = model_shape(name)
        for strategy in strategies:
            for gpu_gb in gpus:
                for nproc in nprocs:
                    row = plan_row(name, shape, strategy, gpu_gb, nproc)
                    if row is None:
                        parts, fit = per_gpu(shape, strategy, nproc, 1), "does not fit (micro-batch 1 shown)"
                    else:
                        batch_size, parts = row
                        fit = f"{batch_size} x {TOTAL_BS // (batch_size * nproc)}"
                    g = {k: v / GB for k, v in parts.items()}
                    print(f"{name:<12} {shape['params'] / 1e6:>6.0f}M {strategy:<13} {gpu_gb:>4} {nproc:>5} "
                          f"{g['params']:>7.1f} {g['grads']:>6.1f} {g['m']:>6.1f} {g['h']:>6.1f} "
                          f"{g.get('fsdp_buffers', 0):>5.1f} {g['activations']:>6.1f} {g['hessian_logits']:>5.1f} "
                          f"{total(parts) / GB:>6.1f}  {fit}")


# ----------------------------------------------------------------------------------------------------------
# --validate: predicted vs measured on the CPU

VALIDATION = [   # (name, n_layer, n_head, n_embd, block_size, vocab, batch_size, strategy, processes)
    ("tiny-4x256", 4, 4, 256, 256, 8192, 8, "ddp", 1),
    ("tiny-8x256", 8, 4, 256, 256, 4096, 8, "ddp", 1),
    ("tiny-8x256+ac", 8, 4, 256, 256, 4096, 8, "ddp+ac", 1),
    ("tiny-4x384-fsdp2", 4, 6, 384, 256, 8192, 8, "fsdp", 2),
]


def _status(key):
    return int(re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def measure(spec):
    """In a fresh process (under torchrun for FSDP): one warm-up step, then the resident set's peak rise over one
    step of two micro-steps, above weights, m and h already allocated. Prints JSON."""
    import gc

    import torch
    import torch.distributed as dist
    import parallel
    from model import GPT, GPTConfig
    from sophia import SophiaG
    name, n_layer, n_head, n_embd, block_size, vocab, batch_size, strategy, nproc = spec
    sharded, checkpointing, _ = STRATEGIES[strategy]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab,
                          bias=False))
    if checkpointing:
        for block in model.transformer.h:
            parallel.checkpoint_activations(block)
    if nproc > 1:
        from torch.distributed.fsdp import fully_shard
        dist.init_process_group("gloo")
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    optimizer = SophiaG(model.param_groups(0.1), lr=1e-4)
    x = torch.randint(0, vocab, (batch_size, block_size))

    def step():
        for micro in range(2):
            if nproc > 1:
                model.set_requires_gradient_sync(micro == 1)
            (model(x, x)[1] / 2).backward()
        optimizer.step(bs=batch_size * block_size)
    step()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = _status("VmRSS")
    step()
    measured = _status("VmHWM") - start
    if nproc > 1:
        gathered = [None] * nproc
        dist.all_gather_object(gathered, measured)
        measured = max(gathered)
        if dist.get_rank() != 0:
            dist.destroy_process_group()
            return
        dist.destroy_process_group()
    print(json.dumps(dict(measured=measured)))


def validate():
    failed = False
    print(f"{'case':<18} {'strategy':<8} {'procs':>5} {'predicted MB':>12} {'measured MB':>11} {'error':>7}")
    for spec in VALIDATION:
        name, n_layer, n_head, n_embd, block_size, vocab, batch_size, strategy, nproc = spec
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
        launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         f"--nproc_per_node={nproc}"]
        proc = subprocess.run(launcher + [os.path.abspath(__file__), "--measure", json.dumps(spec)], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            sys.exit(f"error: the measurement of {name} failed (exit {proc.returncode})")
        measured = json.loads(proc.stdout.strip().splitlines()[-1])["measured"]
        shape = dict(n_layer=n_layer, d=n_embd, block_size=block_size, vocab=vocab)
        from model import GPT, GPTConfig
        import torch
        with torch.device("meta"):
            model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                                  vocab_size=vocab, bias=False))
        shape["params"] = sum(p.numel() for p in model.parameters())
        shape["block_params"] = sum(p.numel() for p in model.transformer.h[0].parameters())
        shape["root_params"] = shape["params"] - n_layer * shape["block_params"]
        parts = per_gpu(shape, strategy, nproc, batch_size, value_bytes=4, fixed=0, scaled_q=False)
        # what the measured step adds to weights, m and h: the gradients, FSDP's buffers, the activations
        predicted = parts["grads"] + parts.get("fsdp_buffers", 0) + parts["activations"]
        error = abs(predicted - measured) / measured
        failed |= error > 0.15
        print(f"{name:<18} {strategy:<8} {nproc:>5} {predicted / 2**20:>12.1f} {measured / 2**20:>11.1f} "
              f"{100 * error:>6.1f}%{'  > 15%' if error > 0.15 else ''}")
    if failed:
        sys.exit("error: a prediction is off by more than 15%")
    print("all predictions within 15% of the measured peaks")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--strategy", default=",".join(STRATEGIES), help=f"comma-separated, of {', '.join(STRATEGIES)}")
    parser.add_argument("--gpu_gb", default="40,80,141", help="GPU memory in GB, comma-separated")
    parser.add_argument("--nproc", default="8,16,32", help="process (GPU) counts, comma-separated")
    parser.add_argument("--validate", action="store_true", help="predicted vs measured peak memory on the CPU")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        return measure(json.loads(args.measure))
    if args.validate:
        start = time.perf_counter()
        validate()
        print(f"({time.perf_counter() - start:.0f} s)")
        return
    models, strategies = args.model.split(","), args.strategy.split(",")
    for value, known, key in ((models, MODELS, "--model"), (strategies, STRATEGIES, "--strategy")):
        unknown = [v for v in value if v not in known]
        if unknown:
            sys.exit(f"error: {key}: unknown {', '.join(unknown)}; pick from {', '.join(known)}")
    try:
        gpus = [float(g) if "." in g else int(g) for g in args.gpu_gb.split(",")]
        nprocs = [int(n) for n in args.nproc.split(",")]
    except ValueError:
        sys.exit("error: --gpu_gb and --nproc take comma-separated numbers, e.g. --gpu_gb=40,80 --nproc=8")
    if any(n <= 0 or TOTAL_BS % n for n in nprocs):
        sys.exit(f"error: --nproc: each process count must divide total_bs={TOTAL_BS}, got {args.nproc}")
    print_plan(models, strategies, gpus, nprocs)


if __name__ == "__main__":
    main()
