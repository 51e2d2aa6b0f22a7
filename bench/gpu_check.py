"""
The GPU path in one command: environment, the fused Sophia kernel, the compiled model, the Hessian pass and
(with --e2e) the real training entry point under torchrun, each line PASS / FAIL / INFO with its numbers.

    python bench/gpu_check.py --e2e                 # one GPU, GPT-2 small shapes (a few minutes cold)
    python bench/gpu_check.py --device=cpu --tiny   # the same checks on tiny shapes on CPU (the tests run it)

Sections:
 1. environment: torch, CUDA, triton, the GPU and its compute capability, whether its MFU peak is known,
    native bf16;
 2. the fused Sophia step on the model's shapes: its compile time, agreement with the single-tensor path
    after 3 steps, no recompilation when lr changes, no host sync in step() (CUDA sync debug mode), kernels
    per step, and step time against AdamW(fused=True) and AdamW(foreach=True) (bench/optimizer_step.py);
 3. the compiled model (bf16 on GPU), one training micro-batch: forward + backward ms, tokens/s, MFU, peak
    memory;
 4. the Hessian micro-batch exactly as train.py runs it (bench/hessian_pass.py): time and peak memory against
    a training micro-step, and no host sync;
 5. --e2e: torchrun --nproc_per_node=1 of the GPT-2 small config (tiny: the tiny config) on random tokens,
    12 iterations with a Hessian refresh every 5, with DDP and then with --fsdp=True: the process group got
    its device, DDP / FSDP and compile as asked, the fused step was used, a refresh, an eval and a checkpoint
    happened, mfu is in metrics.jsonl, and no recompile-limit warning appeared.
Agreement tolerances hold on GPU: inductor's Triton division and its flushing of subnormals make the fused path
differ from the single-tensor one by a few ulp there (on CPU by about one), so parameters are compared to 1e-3
of one step's size. Timing and memory targets are PASS / FAIL on GPT-2 shapes only, INFO on
tiny ones. Exit status 1 when any line FAILs.
"""

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import devices  # noqa: E402
from bench import hessian_pass, optimizer_step  # noqa: E402
from bench.measure import peak_extra_bytes, timed  # noqa: E402
from devices import peak_flops  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from sophia import SophiaG  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402
from metrics import compile_seconds  # noqa: E402

BS = optimizer_step.BS
SHAPES = {  # model, training micro-batch, the config of the end-to-end run
    "gpt2": dict(model="gpt2", batch_size=12, block_size=1024, config="config/train_gpt2_small_sophiag.py"),
    "tiny": dict(model="tiny", batch_size=4, block_size=64, config="config/train_tiny_sophiag.py"),
}
RECOMPILE_WARNINGS = ("recompile_limit", "cache_size_limit", "hit config.recompile_limit")
NO_DEVICE_ID_WARNING = "devices used by this process are currently unknown"


class Report:
    def __init__(self):
        self.failures = 0

    def line(self, status, name, detail):
        print(f"{status:<4} {name}: {detail}", flush=True)

    def check(self, name, ok, detail):
        self.failures += not ok
        self.line("PASS" if ok else "FAIL", name, detail)
        return ok

    def info(self, name, detail):
        self.line("INFO", name, detail)

    def target(self, name, ok, detail, graded):
        """A timing or memory target: graded on GPT-2 shapes, informational on tiny ones."""
        if graded:
            self.check(name, ok, detail)
        else:
            self.info(name, detail + " (tiny shapes: not graded)")


def syncs_in(fn, device):
    """None when fn() makes no host sync (CUDA sync debug mode set to error), else the error's first line."""
    if device.type != "cuda":
        return "n/a"
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return None
    except RuntimeError as err:
        return str(err).splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode(0)


def quiet(fn, *args):
    """fn(*args) with its own table kept off stdout (the summary lines below report it)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def check_environment(report, device):
    import importlib.util
    triton = importlib.util.find_spec("triton")
    report.info("torch", f"{torch.__version__}, CUDA {torch.version.cuda}, triton "
                         f"{__import__('triton').__version__ if triton else 'absent'}")
    if device.type != "cuda":
        report.info("device", f"{device}: no GPU peak, no native-bf16 question")
        return
    name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    report.info("gpu", f"{name}, compute capability {capability[0]}.{capability[1]}, "
                       f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
    peak = peak_flops(device)
    report.check("mfu peak known", peak is not None, f"{peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else
                 f"'{name}' is not in devices.PEAK_BF16_FLOPS: add its datasheet figure")
    report.check("native bf16", devices.has_native_bf16(device), f"dtype=auto resolves to "
                 f"{devices.resolve_dtype('auto', device)}")


def check_fused_step(report, device, shapes, graded):
    """Section 2, on the model's parameter shapes with fixed random gradients."""
    model = optimizer_step.build_model(shapes["model"], device)
    twin = copy.deepcopy(model)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    lr = optimizer_step.SOPHIA["lr"]
    single = SophiaG(model.param_groups(optimizer_step.SOPHIA_WD), **optimizer_step.SOPHIA, foreach=False,
                     fused=False)
    fused = SophiaG(twin.param_groups(optimizer_step.SOPHIA_WD), **optimizer_step.SOPHIA, fused=True)
    for opt in (single, fused):
        opt.update_hessian()
    compiling = compile_seconds()
    first = timed(lambda: fused.step(bs=BS), device)
    report.info("fused step compile", f"{compile_seconds() - compiling:.1f} s (first step {first:.1f} s)")
    for _ in range(3):
        single.step(bs=BS)
    for _ in range(2):
        fused.step(bs=BS)
    worst = max(((p - q).abs().max() / lr).item() for p, q in zip(model.parameters(), twin.parameters()))
    report.check("fused = single-tensor after 3 steps", worst <= 1e-3,
                 f"max |Δθ| = {worst:.1e} x lr (tolerance 1e-3 x lr)")

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for group in fused.param_groups:
        group["lr"] = lr * 0.37
    fused.step(bs=BS)
    new = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    report.check("no recompilation when lr changes", new == 0, f"{new} new graph(s)")
    sync = syncs_in(lambda: fused.step(bs=BS), device)
    if device.type == "cuda":
        report.check("no host sync in step()", sync is None, sync or "none")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fused.step(bs=BS)
            torch.cuda.synchronize(device)
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        report.info("kernels per fused step", f"{kernels} for {len(list(twin.parameters()))} parameter tensors")
    else:
        report.info("host syncs / kernels per step", "CUDA only")
    del model, twin, single, fused

    repeats = "--repeats=20" if graded else "--repeats=3"
    results = quiet(optimizer_step.main, [f"--model={shapes['model']}", f"--device={device}", repeats,
                                          "--paths=fused,adamw_foreach"])
    r = results["fused"]
    report.target("fused step vs AdamW(fused=True)", r["paired_ratio"] <= optimizer_step.TARGET,
                  f"{r['median_ms']:.2f} ms = {r['paired_ratio']:.2f}x (paired; target <= {optimizer_step.TARGET}x), "
                  f"{r['bandwidth'] / 1e9:.1f} GB/s = {r['of_stream_bandwidth']:.0%} of the streaming bandwidth", graded)
    report.info("fused step vs AdamW(foreach=True)", f"{r['median_ms'] / results['adamw_foreach']['median_ms']:.2f}x")


def check_model(report, device, shapes, dtype):
    """Section 3: the compiled model, one training micro-batch."""
    config = GPTConfig(**{**optimizer_step.SIZES[shapes["model"]], "block_size": shapes["block_size"],
                          "dropout": 0.0})
    with torch.device(device):
        model = GPT(config)
    compiled = torch.compile(model)
    autocast = devices.autocast(device, dtype)
    shape = (shapes["batch_size"], shapes["block_size"])
    x = torch.randint(0, config.vocab_size, shape, device=device)
    y = torch.randint(0, config.vocab_size, shape, device=device)

    def micro_step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = compiled(x, y)[1]
        loss.backward()
    compiling = compile_seconds()
    timed(micro_step, device)
    report.info("compiled model", f"{model.num_params() / 1e6:.1f}M parameters, {dtype}, compiled in "
                                  f"{compile_seconds() - compiling:.1f} s")
    seconds = float(np.median([timed(micro_step, device) for _ in range(5)]))
    tokens_per_sec = x.numel() / seconds
    mfu = model.estimate_mfu(tokens_per_sec, device)
    peak = peak_extra_bytes(micro_step, device) + sum(p.numel() * p.element_size() for p in model.parameters())
    report.info("forward + backward", f"micro-batch {shape[0]} x {shape[1]}: {seconds * 1e3:.1f} ms, "
                                      f"{tokens_per_sec:,.0f} tokens/s, MFU "
                                      f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%'}, peak {peak / 2**30:.2f} GiB")


def check_hessian_pass(report, device, shapes, dtype, graded):
    """Section 4: bench/hessian_pass.py's comparison, and no host sync in a Hessian micro-step."""
    argv = [f"--model={shapes['model']}", f"--batch_size={shapes['batch_size']}",
            f"--block_size={shapes['block_size']}", f"--device={device}", f"--dtype={dtype}", "--compile",
            "--repeats=3"]
    results = quiet(hessian_pass.main, argv)
    r = results["hessian"]
    report.target("Hessian micro-step time", r["paired_ratio"] <= hessian_pass.TARGETS["time"],
                  f"{r['median_ms']:.1f} ms = {r['paired_ratio']:.2f}x a training micro-step (target <= "
                  f"{hessian_pass.TARGETS['time']}x)", graded)
    report.target("Hessian micro-step peak memory", r["memory_ratio"] <= hessian_pass.TARGETS["memory"],
                  f"{r['peak_bytes'] / 2**30:.2f} GiB = {r['memory_ratio']:.2f}x a training micro-step (target <= "
                  f"{hessian_pass.TARGETS['memory']}x)", graded)
    if device.type == "cuda":
        config = GPTConfig(**{**optimizer_step.SIZES[shapes["model"]], "block_size": shapes["block_size"]})
        with torch.device(device):
            model = GPT(config)
        x = torch.randint(0, config.vocab_size, (shapes["batch_size"], shapes["block_size"]), device=device)
        step = hessian_pass.micro_steps(model, model, x, x, devices.autocast(device, dtype))["hessian"]
        step()                                  # warm-up: first-call allocations
        sync = syncs_in(step, device)
        report.check("no host sync in a Hessian micro-step", sync is None, sync or "none")


def random_tokens(directory, n_tokens, tokenizer):
    """train.bin / val.bin of random token ids of `tokenizer`, and its meta.json (for bytes; GPT-2 needs none)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_tokens), ("val", n_tokens // 10)):
        rng.integers(0, tokenizer.vocab_size, size=n, dtype=np.uint16).tofile(os.path.join(directory, f"{split}.bin"))
    if tokenizer.name != "gpt2":
        with open(os.path.join(directory, "meta.json"), "w") as f:
            json.dump(dict(tokenizer=tokenizer.name, vocab_size=tokenizer.vocab_size, eot_token=tokenizer.eot_token), f)


def check_e2e(report, device, shapes, fsdp, work):
    """Section 5: the real entry point under torchrun, 12 iterations, a Hessian refresh every 5."""
    label = "e2e " + ("FSDP" if fsdp else "DDP")
    out_dir = os.path.join(work, "fsdp" if fsdp else "ddp")
    micro = shapes["batch_size"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_sophiag.py",
           shapes["config"], f"--data_dir={work}", f"--out_dir={out_dir}", f"--device={device.type}",
           "--max_iters=12", "--hess_interval=5", "--eval_interval=10", f"--eval_sequences={2 * micro}",
           "--log_interval=1", "--warmup_iters=2", f"--batch_size={micro}", f"--total_bs={4 * micro}",
           f"--hess_total_bs={micro}", "--wandb_log=False", f"--fsdp={fsdp}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    if not report.check(f"{label} run", proc.returncode == 0, f"exit {proc.returncode} after {wall:.0f} s" + (
            "" if proc.returncode == 0 else "\n" + output[-2000:])):
        return
    start = next((line for line in proc.stdout.splitlines() if "process(es)" in line), "")
    compiled = "compile=True" in start
    report.check(f"{label} layout", ("(FSDP)" if fsdp else "(DDP)") in start, start.strip()[:160])
    if device.type == "cuda":
        report.check(f"{label} process group has its device", NO_DEVICE_ID_WARNING not in output,
                     "init_process_group(device_id=...)" if NO_DEVICE_ID_WARNING not in output else
                     "NCCL did not know the process's GPU")
        report.check(f"{label} compile and fused step", compiled and "optimizer step: fused" in start,
                     f"compile={compiled}, {start.split('optimizer step: ')[-1][:60]}")
    else:
        report.info(f"{label} compile and fused step", f"compile={compiled} (train.py compiles on CUDA only); "
                                                       f"step: {start.split('optimizer step: ')[-1][:40]}")
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    train_rows = [r for r in records if r["event"] == "train"]
    refreshed = [r["iter"] for r in train_rows if r.get("hessian_norm", 0) > 0]
    evals = [r["iter"] for r in records if r["event"] == "eval"]
    report.check(f"{label} Hessian refresh, eval, checkpoint",
                 refreshed[:1] == [4] and 10 in evals and os.path.exists(os.path.join(out_dir, "ckpt.pt")),
                 f"h > 0 from iteration {refreshed[:1]}, evals at {evals}, ckpt.pt "
                 f"{'written' if os.path.exists(os.path.join(out_dir, 'ckpt.pt')) else 'missing'}")
    last = train_rows[-1]
    mfu = last.get("mfu")
    if device.type == "cuda":
        report.check(f"{label} mfu logged", mfu is not None,
                     f"mfu {mfu:.1%}, with the Hessian pass {last['mfu_with_hessian']:.1%}, "
                     f"{last['iter_time_ms']:.0f} ms/iteration" if mfu is not None else "mfu is null")
    else:
        report.info(f"{label} mfu", f"null on CPU (no peak); {last['iter_time_ms']:.0f} ms/iteration")
    warned = [w for w in RECOMPILE_WARNINGS if w in output]
    report.check(f"{label} no recompile-limit warning", not warned, "none" if not warned else ", ".join(warned))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--device", default="cuda", help="cuda (the check's purpose) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: seconds, for CPU and tests")
    parser.add_argument("--e2e", action="store_true", help="also run train_sophiag.py under torchrun (DDP, FSDP)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: no CUDA device is visible to torch; on CPU use --device=cpu --tiny")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device={args.device}: use cuda or cpu")
    return args


def main(argv=None):
    args = parse_args(argv)
    device, shapes = args.device, SHAPES["tiny" if args.tiny else "gpt2"]
    graded = not args.tiny
    dtype = devices.resolve_dtype("auto", device)
    report, t0 = Report(), time.perf_counter()
    check_environment(report, device)
    check_fused_step(report, device, shapes, graded)
    check_model(report, device, shapes, dtype)
    check_hessian_pass(report, device, shapes, dtype, graded)
    if args.e2e:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
            # tiny: byte-level tokens, as the tiny config's own data (a 50k vocabulary would dwarf the model)
            random_tokens(work, 2_000_000 if graded else 200_000, get_tokenizer("gpt2" if graded else "bytes"))
            for fsdp in (False, True):
                check_e2e(report, device, shapes, fsdp, work)
    print(f"{'FAILED' if report.failures else 'passed'}: {report.failures} failure(s) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return report.failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
