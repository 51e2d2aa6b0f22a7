"""Peak host memory of a checkpoint save under FSDP on 2 processes: the sharded (DCP) save that train.py does,
against gathering full tensors first (what a single-file save under FSDP needs), as a control that the
measurement sees a full copy when there is one.

    torchrun --standalone --nproc_per_node=2 tests/workers/dcp_memory_worker.py OUT_DIR    # tests/test_distributed.py, slow

Memory is the resident set's high-water mark (Linux: VmHWM, reset through /proc/self/clear_refs) above its size
when the save starts, so every allocation counts, torch's and the writer's, however brief (run it with
MALLOC_MMAP_THRESHOLD_=65536, as the test does, so that glibc cannot serve a copy from memory freed earlier).
Rank 0 prints one JSON line: the full state's bytes (model + Sophia's m and h) and each rank's peak for both saves.
"""
import gc
import json
import os
import re
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import checkpoint  # noqa: E402
import parallel  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from sophia import SophiaG  # noqa: E402

# ~15M parameters: 59 MB of weights, 177 MB with m and h; each rank holds half
ARGS = dict(n_layer=2, n_head=4, n_embd=512, block_size=64, vocab_size=16384)


def status(key):
    return int(re.search(rf"{key}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def peak_above_start(fn):
    """Bytes the resident set grew to, at its highest, above its size when fn started."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")            # VmHWM := VmRSS
    start = status("VmRSS")
    fn()
    return status("VmHWM") - start


def main():
    dist.init_process_group("gloo")
    out = sys.argv[1]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**ARGS))
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    optimizer = SophiaG(model.param_groups(0.1), lr=1e-3)
    x = torch.randint(0, ARGS["vocab_size"], (1, ARGS["block_size"]))
    model(x, x)[1].backward()
    optimizer.step(bs=64)
    optimizer.update_hessian()
    optimizer.zero_grad(set_to_none=True)
    full_bytes = sum(p.numel() * 4 * 3 for p in model.parameters())      # weights, m, h in fp32

    def sharded():
        tensors, layout = checkpoint.sharded_state(model, optimizer)
        ckpt = checkpoint.make(model=None, optimizer=None, sharded=layout, model_args=ARGS, state=dict(iter_num=1),
                               rng=[checkpoint.rng_state(torch.device("cpu"))], config=dict(seed=0), code={})
        checkpoint.save_sharded(out, ckpt, tensors, keep_last=1, is_best=False)

    def gathered():
        model_sd, optimizer_sd = parallel.full_state_dicts(model, optimizer)
        if dist.get_rank() == 0:
            checkpoint.atomic_save(dict(model=model_sd, optimizer=optimizer_sd), os.path.join(out, "full.pt"))
        dist.barrier()

    peaks = {name: peak_above_start(fn) for name, fn in (("sharded", sharded), ("gathered", gathered))}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, peaks)
    if dist.get_rank() == 0:
        files = sorted(os.listdir(os.path.join(out, "ckpt_0000001.dcp")))
        print(json.dumps(dict(full_state_bytes=full_bytes, shard_files=files,
                              sharded_peak=[p["sharded"] for p in everyone],
                              gathered_peak=[p["gathered"] for p in everyone])), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
