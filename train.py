"""
The one training loop, for every optimizer: Sophia-G, Sophia-H, AdamW, Lion and Muon (with AdamW, muon.py).

    python train_sophiag.py config/train_tiny_sophiag.py                  # 1 process (CPU or GPU)
    torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_small_sophiag.py
    python train_adam.py config/train_tiny_adam.py --max_iters=50          # the AdamW baseline

Everything except the optimizer is shared, so comparisons are fair by construction: the same batches
(a pure function of seed and iteration, whatever the world size), model, init, schedule, clipping,
precision and token budget. One iteration:

    global batch of total_bs sequences -> micro-batches over ranks and gradient-accumulation steps
    -> mean loss (DDP all-reduces / FSDP reduce-scatters gradients on the last micro-step only)
    -> clip the global grad norm
    -> optimizer.step(bs = total_bs * block_size tokens for Sophia-G)
    -> Sophia, at iterations ≡ hess_interval - 1: a Hessian pass on a fresh batch, then update_hessian()

Outputs in out_dir: metrics.jsonl (one JSON object per event), checkpoints (see checkpoint.py) and,
with wandb_log=True, a wandb run that a resumed run continues.
"""

import signal
import sys

if __name__ == "__main__":   # Ctrl-C while torch loads: exit with status 130, quietly (run_cli takes over after)
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import gc
import hashlib
import json
import math
import os
import platform
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from typing import Literal

import numpy  # noqa: F401  (first: torch imports it midway, where a Ctrl-C would interrupt its C-extension init)
import torch
import torch.distributed as dist

import checkpoint
import devices
import parallel
from configurator import UserError, config_to_dict, load_config
from dataloader import EVAL_SEED, EVAL_TRAIN, EVAL_VAL, HESSIAN, TRAIN, Sampler, TokenDataset, derive_seed
from lion import FOREACH_DEVICES as LION_FOREACH_DEVICES, Lion
from model import GPT, GPTConfig
from muon import MuonAdamW
from parallel import Run, full_tensor, local_tensor
from sophia import SophiaG, SophiaH, gnb_backward, hutchinson_estimate
from tokenizer import tokenizer_from_meta

# Each optimizer's hyperparameters, for the keys left at None: the one source of them for the training loop
# (config files set only the ones that differ, e.g. a larger model's lr). GPT-2 small values from the Sophia
# paper / upstream configs. Sophia-H's rho is the paper's γ for Hutchinson; Lion's weight decay is 10x AdamW's
# because its lr is ~6x smaller (decoupled decay scales with lr·wd), following the Lion paper's advice.
OPTIMIZER_DEFAULTS = {
    "sophiag": dict(learning_rate=6e-4, weight_decay=0.2, beta1=0.965, beta2=0.99, rho=0.05),
    "sophiah": dict(learning_rate=6e-4, weight_decay=0.2, beta1=0.965, beta2=0.99, rho=0.01),
    "adamw": dict(learning_rate=6e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, rho=0.0),
    "lion": dict(learning_rate=1e-4, weight_decay=1.0, beta1=0.9, beta2=0.99, rho=0.0),
    # Muon on the blocks' matrices, AdamW (these betas) on the rest; with muon_adjust_lr_fn="match_rms_adamw"
    # (muon.py) AdamW's lr and weight decay carry over to Muon's part
    "muon": dict(learning_rate=6e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, rho=0.0),
}


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"                    # checkpoints, metrics.jsonl, wandb files
    eval_interval: int = 2000               # evaluate (and checkpoint) every this many iterations
    log_interval: int = 1                   # print / metrics.jsonl / wandb every this many iterations
    eval_iters: int = 200                   # micro-batches per split in each evaluation (fixed batches)
    eval_only: bool = False                 # evaluate once and exit
    eval_tasks: str = ""                    # SuperGLUE tasks scored in-context at each evaluation and logged as
                                            # icl/<task> (eval.py's --tasks names, e.g. "boolq,copa"); "": off.
                                            # Needs pip install -r requirements-eval.txt
    eval_tasks_limit: int = 100             # documents per task in that evaluation (the first ones)
    eval_tasks_data: str | None = None      # offline task files, as eval.py's --task_data; None: lm-eval's hub
    always_save_checkpoint: bool = True     # checkpoint at every eval, not only when val loss improves
    keep_last: int = 2                      # numbered checkpoints kept (ckpt.pt and ckpt_best.pt besides)
    init_from: Literal["scratch", "resume"] = "scratch"
    resume_override: str | None = None      # on resume: experiment keys allowed to differ from the checkpoint's,
                                            # comma-separated (e.g. "rho,learning_rate"); see checkpoint.RESUMABLE_KEYS
    # wandb
    wandb_log: bool = False
    wandb_project: str = "sophia"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"            # data/<dataset>/train.bin, val.bin (+ meta.json)
    data_dir: str | None = None             # None: data/<dataset> next to this file
    total_bs: int = 480                     # global batch in sequences (all ranks, all micro-steps)
    batch_size: int = 12                    # micro-batch per process
    gradient_accumulation_steps: int | None = None  # None: total_bs / (batch_size * world size)
    block_size: int = 1024
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    scale_attn_by_inverse_layer_idx: bool = True   # as upstream Sophia's GPT-2 runs (since 2024-01)
    parallel_block: bool = False            # phi-1 style: x + attn(ln(x)) + mlp(ln(x)), one LayerNorm per block
    rotary_dim: int = 0                     # phi-1 style: rotary on this many channels of each head, no learned
                                            # positions; 0: GPT-2's learned positions
    tie_embeddings: bool = True             # False: an untied output head (with a bias when bias=True), as phi-1
    vocab_size: int | None = None           # None: the dataset's vocabulary rounded up to a multiple of 64
    # optimizer (None: OPTIMIZER_DEFAULTS of optimizer_name)
    optimizer_name: Literal["sophiag", "sophiah", "adamw", "lion", "muon"] = "sophiag"
    learning_rate: float | None = None      # peak learning rate
    weight_decay: float | None = None       # decoupled; Linear weights only (model.param_groups)
    beta1: float | None = None
    beta2: float | None = None
    rho: float | None = None                # Sophia's clipping scale
    grad_clip: float = 1.0                  # clip the global gradient norm; 0 disables
    hess_interval: int = 10                 # Sophia: refresh the Hessian EMA every k steps
    hessian_bias_correction: bool = False   # Sophia ablation: use h / (1 - beta2^n) after n refreshes (upstream: off)
    hess_total_bs: int | None = None        # sequences in the Hessian pass; None: total_bs (as upstream).
                                            # Smaller costs less (the pass is ~hess_total_bs/total_bs of a
                                            # step, every hess_interval steps) but gives a noisier estimate
    hess_batch_size: int | None = None      # sequences per Hessian micro-batch; None: min(batch_size,
                                            # hess_total_bs). Sophia-H's double backward holds more memory
                                            # per sequence than training: lower it there (same estimate)
    optimizer_impl: Literal["auto", "single", "foreach", "fused"] = "auto"  # optimizer code path
    muon_momentum: float = 0.95             # Muon (optimizer_name=muon): its Nesterov momentum on the blocks' matrices
    muon_adjust_lr_fn: Literal["match_rms_adamw", "original"] = "match_rms_adamw"  # Muon's lr scaling (muon.py):
                                            # match_rms_adamw lets AdamW's learning_rate and weight_decay carry over
    # learning-rate schedule: linear warmup, cosine decay to min_lr at lr_decay_iters
    max_iters: int = 600000                 # optimizer steps to run
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int | None = None       # None: max_iters
    min_lr: float | None = None             # None: 0.05 x learning_rate, as in the paper
    # robustness
    nonfinite: Literal["stop", "skip"] = "stop"   # a NaN/Inf loss or gradient: stop, or skip the step
    # system
    device: str = "auto"                    # auto: cuda if available, else cpu; or cpu, cuda, cuda:1, mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool | None = None             # None: torch.compile on CUDA only; False also keeps Sophia's step
                                            # off its compiled (fused) kernel
    threads: int | None = None              # CPU threads per process; None: torch's default (torchrun: 1).
                                            # 1 on a shared or busy machine, where tiny models on contended
                                            # threads run many times slower
    backend: str | None = None              # None: nccl on CUDA, gloo on CPU
    fsdp: bool = False                      # under torchrun: shard parameters, gradients and optimizer state
                                            # over the processes (FSDP2) instead of replicating them (DDP)
    fsdp_shard_size: int | None = None      # FSDP: shard within groups of this many processes and replicate across
                                            # the groups (HSDP, a 2-D mesh; e.g. the GPUs of one node); None: all
    fsdp_mixed_precision: Literal["off", "bf16", "bf16_reduce_fp32"] = "off"   # FSDP: weights all-gathered and
                                            # computed in bf16, gradients reduced in bf16 (or fp32); the sharded
                                            # master weights and the optimizer state (Sophia's m, h) stay fp32
    activation_checkpointing: bool = False  # keep only each block's input, recompute its activations in the
                                            # backward (~1/3 more compute, activation memory / ~n_layer)
    seed: int = 1337


# ----------------------------------------------------------------------------------------------------------
# configuration checks

def resolve(cfg, world_size):
    """Fill the None defaults, check ranges and the batch arithmetic. Returns gradient accumulation steps."""
    for key, value in OPTIMIZER_DEFAULTS[cfg.optimizer_name].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    if cfg.min_lr is None:
        cfg.min_lr = 0.05 * cfg.learning_rate
    if cfg.lr_decay_iters is None:
        cfg.lr_decay_iters = cfg.max_iters
    if cfg.hess_total_bs is None:
        cfg.hess_total_bs = cfg.total_bs
    if cfg.hess_batch_size is None:
        cfg.hess_batch_size = min(cfg.batch_size, cfg.hess_total_bs)
    cfg.device = devices.default_device(cfg.device)
    cfg.dtype = devices.resolve_dtype(cfg.dtype, cfg.device)
    cuda = cfg.device.startswith("cuda")
    if cfg.compile is None:
        cfg.compile = cuda
    if cfg.backend is None:
        cfg.backend = "nccl" if cuda else "gloo"

    positive = ["eval_interval", "log_interval", "eval_iters", "keep_last", "total_bs", "batch_size",
                "block_size", "max_iters", "lr_decay_iters", "hess_interval", "hess_total_bs", "hess_batch_size"]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be a positive integer, got {getattr(cfg, key)}")
    for key in ["warmup_iters", "learning_rate", "min_lr", "weight_decay", "grad_clip", "rho", "dropout"]:
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    for key in ["beta1", "beta2"]:
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.gradient_accumulation_steps is not None and cfg.gradient_accumulation_steps <= 0:
        raise UserError(f"gradient_accumulation_steps must be positive, got {cfg.gradient_accumulation_steps}")

    per_step = cfg.batch_size * world_size
    if cfg.total_bs % per_step:
        choices = [b for b in range(1, cfg.total_bs + 1) if cfg.total_bs % (b * world_size) == 0]
        raise UserError(f"total_bs={cfg.total_bs} sequences is not divisible by batch_size={cfg.batch_size} x "
                        f"{world_size} process(es); pick --batch_size from {choices[-8:]} "
                        f"(or change --total_bs)")
    grad_accum = cfg.total_bs // per_step
    if cfg.gradient_accumulation_steps is not None and cfg.gradient_accumulation_steps != grad_accum:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} x batch_size="
                        f"{cfg.batch_size} x {world_size} process(es) = "
                        f"{cfg.gradient_accumulation_steps * per_step} sequences, but total_bs={cfg.total_bs}; "
                        f"use --gradient_accumulation_steps={grad_accum} or leave it unset (derived)")
    if cfg.threads is not None and cfg.threads <= 0:
        raise UserError(f"threads must be a positive integer (or None: torch's default), got {cfg.threads}")
    if cfg.fsdp and cfg.optimizer_name == "muon":
        raise UserError("optimizer_name='muon' cannot run with fsdp=True: Muon orthogonalizes each whole weight "
                        "matrix, and under FSDP a process holds only a shard of it; use DDP (--fsdp=False)")
    if not 0 <= cfg.muon_momentum < 1:
        raise UserError(f"muon_momentum must be in [0, 1), got {cfg.muon_momentum}")
    if cfg.fsdp and cfg.optimizer_name == "sophiah":
        raise UserError("optimizer_name='sophiah' cannot run with fsdp=True: its Hessian-vector product needs a "
                        "double backward, which FSDP's gradient hooks do not support; use DDP (--fsdp=False)")
    if cfg.eval_tasks and cfg.fsdp:
        raise UserError("eval_tasks runs on rank 0 alone, but under fsdp=True every rank holds only a shard of the "
                        "model; leave eval_tasks empty and run eval.py --tasks=... on the checkpoints instead")
    if cfg.fsdp_mixed_precision != "off" and not cfg.fsdp:
        raise UserError(f"fsdp_mixed_precision={cfg.fsdp_mixed_precision!r} is an FSDP setting; add --fsdp=True "
                        f"(under torchrun), or use --dtype=bfloat16 (autocast) without FSDP")
    if cfg.fsdp_shard_size is not None:
        if not cfg.fsdp:
            raise UserError(f"fsdp_shard_size={cfg.fsdp_shard_size} is an FSDP setting; add --fsdp=True "
                            f"(under torchrun) or leave it unset")
        if cfg.fsdp_shard_size <= 0 or world_size % cfg.fsdp_shard_size:
            sizes = [n for n in range(1, world_size + 1) if world_size % n == 0]
            raise UserError(f"fsdp_shard_size={cfg.fsdp_shard_size} must divide the {world_size} process(es) into "
                            f"equal groups; pick one of {sizes} (or leave it unset: one group of all)")
    if cfg.fsdp and cfg.dtype == "float16":
        raise UserError("fsdp=True does not support dtype='float16' (its loss scaler would skip steps on some "
                        "shards only); use --dtype=bfloat16 or float32")
    if cfg.optimizer_name.startswith("sophia") and cfg.hess_total_bs % cfg.hess_batch_size:
        raise UserError(f"hess_total_bs={cfg.hess_total_bs} must be a multiple of hess_batch_size="
                        f"{cfg.hess_batch_size} (the Hessian pass runs in micro-batches of hess_batch_size "
                        f"sequences; it defaults to min(batch_size, hess_total_bs))")
    return grad_accum


def get_lr(it, cfg):
    """Linear warmup from 0 to learning_rate over warmup_iters, then cosine down to min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * it / cfg.warmup_iters
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def build_optimizer(cfg, model):
    """The optimizer over model.param_groups (weight decay on Linear weights only). optimizer_impl=auto leaves
    the code path to the optimizer, except that compile=False keeps Sophia off its compiled kernel."""
    groups = model.param_groups(cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    path = {"auto": {} if cfg.compile else dict(fused=False), "single": dict(foreach=False, fused=False),
            "foreach": dict(foreach=True), "fused": dict(fused=True)}[cfg.optimizer_impl]
    if cfg.optimizer_name in ("sophiag", "sophiah"):
        sophia_class = SophiaG if cfg.optimizer_name == "sophiag" else SophiaH
        return sophia_class(groups, lr=cfg.learning_rate, betas=betas, rho=cfg.rho,
                            hessian_bias_correction=cfg.hessian_bias_correction, **path)
    if cfg.optimizer_name == "lion":
        return Lion(groups, lr=cfg.learning_rate, betas=betas, foreach=path.get("foreach"))
    if cfg.optimizer_impl == "auto":   # torch's fused AdamW kernel (native, not compiled) exists on CPU and CUDA
        path = dict(fused=True) if all(p.device.type in ("cpu", "cuda") for p in model.parameters()) else {}
    if cfg.optimizer_name == "muon":   # Muon: the 2-D weights inside the blocks; AdamW (on `path`): the rest
        matrices = [p for block in model.transformer.h for p in block.parameters() if p.ndim == 2]
        return MuonAdamW(groups, matrices, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                         momentum=cfg.muon_momentum, adjust_lr_fn=cfg.muon_adjust_lr_fn, betas=betas,
                         adamw_options=path)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, **path)


# ----------------------------------------------------------------------------------------------------------
# the run

class StopRequest:
    """SIGTERM / SIGINT set a flag, said at once on stderr; the loop finishes the current step, checkpoints and
    exits cleanly. A second Ctrl-C interrupts at once (checkpoint files stay intact: writes are atomic)."""

    def __init__(self, announce=True):
        self.signal, self.announce = None, announce
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        if self.announce:
            print(f"{self.signal}: stopping after this step, then checkpointing (Ctrl-C again to stop at once; "
                  f"the checkpoints on disk stay intact)", file=sys.stderr, flush=True)

    def flag(self, like):
        """1.0 if this rank was asked to stop, as a tensor beside `like`: train_step reduces it over ranks with
        the loss (all ranks must leave the loop together), with no collective or host sync of its own."""
        return like.new_full((), float(self.signal is not None))


def main(argv=None, defaults=None):
    """Parse the configuration (defaults < config files < --key=value), then train."""
    trainer = None
    try:
        trainer = make_trainer(sys.argv[1:] if argv is None else argv, defaults)
        trainer.train()
        if trainer.run.ddp:
            dist.barrier()     # leave together: rank 0 may still be writing the last checkpoint
    finally:
        # the DDP / FSDP modules hold the process group: release them first, so that it is torn down now and
        # not during interpreter shutdown (where gloo's threads can abort the process)
        trainer = None
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def make_trainer(argv, defaults=None):
    cfg, applied = load_config(TrainConfig, argv, defaults)
    derived = {key for key, value in vars(cfg).items() if value is None}    # filled in by resolve()
    run = Run()
    grad_accum = resolve(cfg, run.world)
    run.setup_device(cfg)
    return Trainer(cfg, run, grad_accum, applied, derived)


class Trainer:
    def __init__(self, cfg, run, grad_accum, applied, derived=()):
        self.cfg, self.run, self.grad_accum, self.derived = cfg, run, grad_accum, set(derived)
        for line in applied:
            run.print(f"config: {line}")
        self.sophia = cfg.optimizer_name in ("sophiag", "sophiah")
        self.tokens_per_iter = cfg.total_bs * cfg.block_size
        # Sophia-G's bs: tokens behind one step's gradient, computed from the batch, never hard-coded
        self.step_kwargs = dict(bs=self.tokens_per_iter) if cfg.optimizer_name == "sophiag" else {}
        self.code = code_info()
        data_dir = cfg.data_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", cfg.dataset)
        self.dataset = TokenDataset(data_dir, cfg.block_size)
        if cfg.eval_tasks:     # fail now, not at the first evaluation: lm-eval installed, the task names known
            import lm_eval_adapter
            lm_eval_adapter.task_names(cfg.eval_tasks)
            self.tokenizer = tokenizer_from_meta(data_dir)
        self.sampler = Sampler(self.dataset, cfg.batch_size, run.rank, run.world, run.device)
        self._prepare_out_dir()

        # model: seeded identically on every rank, so all ranks start from the same weights
        torch.manual_seed(cfg.seed)
        vocab = cfg.vocab_size or -(-self.dataset.vocab_size // 64) * 64
        if vocab < self.dataset.vocab_size:
            raise UserError(f"vocab_size={vocab} is smaller than the dataset's vocabulary "
                            f"({self.dataset.vocab_size}); leave vocab_size unset")
        self.model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                               block_size=cfg.block_size, vocab_size=vocab, dropout=cfg.dropout, bias=cfg.bias,
                               scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx,
                               parallel_block=cfg.parallel_block, rotary_dim=cfg.rotary_dim,
                               tie_embeddings=cfg.tie_embeddings)
        try:
            self.raw_model = GPT(GPTConfig(**self.model_args)).to(run.device)
        except ValueError as err:
            raise UserError(str(err)) from None
        torch.manual_seed(derive_seed(cfg.seed, run.rank))   # dropout: a different stream on every rank
        # counters saved in checkpoints, so a resumed run logs exactly what a straight run logs
        self.state = dict(iter_num=0, tokens=0, best_val_loss=float("inf"), clipped_steps=0, skipped_steps=0,
                          train_time=0.0, compile_time=0.0, cpu_time=0.0, wandb_run_id=None, diagnostics={})
        self.resumed_from, self.resume_overrides = None, {}
        ckpt = self._load_checkpoint() if cfg.init_from == "resume" else None   # loads the weights
        # self.model runs forward/backward (it syncs gradients), self.compiled the passes that sum their own
        # (parallel.Run.wrap); raw_model holds the parameters (FSDP: sharded in place)
        self.model, self.compiled = run.wrap(self.raw_model)
        self.optimizer = build_optimizer(cfg, self.raw_model)
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=cfg.dtype == "float16")
        if ckpt is not None:
            self._restore(ckpt)
        self.stop = StopRequest(announce=run.master)
        self.prefetched = None          # (iteration, its micro-batches), loaded ahead by train_step
        self.wandb = None
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        layout = f" ({run.layout})" if run.layout else ""
        run.print(f"{cfg.optimizer_name}: {self.raw_model.num_params() / 1e6:.2f}M parameters, "
                  f"{run.world} process(es){layout} x {cfg.batch_size} sequences x "
                  f"{grad_accum} accumulation steps = "
                  f"{cfg.total_bs} sequences = {self.tokens_per_iter:,} tokens per iteration; device "
                  f"{run.device}, {cfg.dtype}, compile={cfg.compile}, optimizer step: {self._step_path()}")

    # ---------------------------------------------------------------------------------------- setup

    def _step_path(self):
        """The optimizer's code path, as the first line reports it (a compiled one costs time at the first step)."""
        if self.sophia:
            path = self.optimizer._choose_path(self.optimizer.param_groups[0])
            return "fused (torch.compile'd at the first step, not counted in `time`)" if path == "fused" else path
        if isinstance(self.optimizer, MuonAdamW):
            return self.optimizer.describe_path()
        if isinstance(self.optimizer, torch.optim.AdamW):
            return "fused" if self.optimizer.defaults.get("fused") else "foreach"
        foreach = self.optimizer.defaults["foreach"]     # Lion: None picks foreach on GPUs, as torch.optim does
        if foreach is None:
            foreach = all(p.device.type in LION_FOREACH_DEVICES for p in self.raw_model.parameters())
        return "foreach" if foreach else "single"

    def _prepare_out_dir(self):
        cfg = self.cfg
        if cfg.init_from == "scratch" and checkpoint.has_checkpoint(cfg.out_dir):
            raise UserError(f"out_dir {cfg.out_dir!r} already holds a run's checkpoints; continue it with "
                            f"--init_from=resume, or pass another --out_dir (delete the folder to start over)")
        if cfg.init_from == "resume":
            checkpoint.require_checkpoint(cfg.out_dir)      # before anything is created there
        if not self.run.master:
            return
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            probe = os.path.join(cfg.out_dir, f".write_test{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as err:
            raise UserError(f"out_dir {cfg.out_dir!r} is not writable ({err.strerror}); "
                            f"pass a writable --out_dir") from None
        metrics = os.path.join(cfg.out_dir, "metrics.jsonl")
        if cfg.init_from == "scratch" and os.path.exists(metrics):   # from a run that never checkpointed
            kept, n = os.path.join(cfg.out_dir, "metrics.old.jsonl"), 1
            while os.path.exists(kept):                              # never over an earlier one
                n += 1
                kept = os.path.join(cfg.out_dir, f"metrics.old{n}.jsonl")
            os.replace(metrics, kept)
            self.run.print(f"moved the metrics.jsonl of an earlier run in {cfg.out_dir} that wrote no checkpoint "
                           f"to {kept}")

    def _load_checkpoint(self):
        """The latest checkpoint, checked against this run; its weights go into raw_model (before any sharding),
        except those of a sharded checkpoint resumed under FSDP: each rank reads its shards in _restore."""
        ckpt, path = checkpoint.load_latest(self.cfg.out_dir, shards=self.run.fsdp)
        checkpoint.check_resumable(ckpt, path, self.model_args, self.cfg.optimizer_name)
        self.resume_overrides = checkpoint.check_resumed_config(ckpt["config"], config_to_dict(self.cfg), path,
                                                                self.cfg.resume_override, self.derived)
        if "model" in ckpt:
            self.raw_model.load_state_dict(ckpt["model"])
        ckpt["path"] = path
        return ckpt

    def _restore(self, ckpt):
        """Optimizer, scaler, counters and RNG states from the checkpoint."""
        if "sharded" in ckpt:       # FSDP from a sharded checkpoint (any world size): this rank's shards only
            checkpoint.load_sharded_into(ckpt["path"], self.raw_model, self.optimizer)
        else:                       # FSDP slices the full tensors every rank read; DDP / 1 process takes them
            self.optimizer.load_state_dict(parallel.shard_optimizer_state(self.optimizer, ckpt["optimizer"]))
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state.update(ckpt["state"])
        if "tokens" not in ckpt["state"]:    # written before the count was kept: every step had the saved batch
            self.state["tokens"] = self.state["iter_num"] * ckpt["config"]["total_bs"] * ckpt["config"]["block_size"]
        if not checkpoint.set_rng_state(ckpt["rng"], self.run.rank, self.run.device):
            # resumed on more processes than were saved: seed the new ones
            torch.manual_seed(derive_seed(self.cfg.seed, self.run.rank, self.state["iter_num"]))
        self.resumed_from = self.state["iter_num"]
        self.run.print(f"resuming from {ckpt['path']} at iteration {self.resumed_from}")

    # ---------------------------------------------------------------------------------------- steps

    def _dummy_batch(self, size):
        return torch.zeros((size, self.cfg.block_size), dtype=torch.long, device=self.run.device)

    def _train_batches(self, iter_num):
        """This rank's micro-batches of iteration iter_num, loaded by the previous train_step if it could."""
        if self.prefetched is not None and self.prefetched[0] == iter_num:
            return self.prefetched[1]
        return self.sampler.micro_batches(self.cfg.seed, TRAIN, iter_num, self.cfg.total_bs)

    def train_step(self, iter_num):
        """Forward/backward over this rank's micro-batches. Returns (mean loss over the global batch, global
        grad norm before clipping, whether any rank was asked to stop) as host values: the iteration's one
        host sync. The next iteration's batches are loaded before it, so that their host-side work (and, on
        CUDA, their copies) runs while the device is still busy with this one."""
        batches = self._train_batches(iter_num)
        loss_sum = torch.zeros((), device=self.run.device)
        for micro, (_, x, y) in enumerate(batches):
            self.run.set_grad_sync(self.model, micro == len(batches) - 1)
            with self.run.autocast:
                loss = self.model(x, y)[1]     # the logits are freed here, not after the next forward
            loss_sum += loss.detach()
            self.scaler.scale(loss / len(batches)).backward()
        self.prefetched = (iter_num + 1, self.sampler.micro_batches(self.cfg.seed, TRAIN, iter_num + 1,
                                                                    self.cfg.total_bs))
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # one all-reduce for the loss and the stop flag (its mean is > 0 when any rank was signalled)
        loss_mean, stop = self.run.all_mean(torch.stack([loss_sum / len(batches), self.stop.flag(loss_sum)]))
        loss_value, norm_value, stop_value = torch.stack([loss_mean, full_tensor(grad_norm).float(), stop]).tolist()
        return loss_value, norm_value, stop_value > 0

    def hessian_refresh(self, iter_num):
        """Sophia-G: backprop the loss against labels sampled from the model's own full logits (GNB) on a
        fresh batch of hess_total_bs sequences, sum the gradients over ranks, clip them like the training
        gradient (as upstream), then h <- β2 h + (1 - β2) ĝ⊙ĝ. Sophia-H: the Hutchinson estimate u⊙(∇²L u)
        with one probe u per refresh, averaged over micro-batches and ranks.
        The Hessian batch is cut into micro-batches of hess_batch_size rows whatever the world
        size (a rank may get none; under FSDP it joins with dummy passes), labels are seeded per global row and
        the probe per iteration: the estimate is the same on 1 or N processes, up to the order of float sums."""
        cfg, run = self.cfg, self.run
        size = cfg.hess_batch_size
        batches = self.sampler.micro_batches(cfg.seed, HESSIAN, iter_num, cfg.hess_total_bs, batch_size=size)
        n_micro = cfg.hess_total_bs // size                  # over all ranks
        seed = lambda *parts: derive_seed(cfg.seed, HESSIAN, iter_num, *parts)  # noqa: E731
        params = [p for group in self.optimizer.param_groups for p in group["params"]]   # the optimizer's order
        if cfg.optimizer_name == "sophiag":
            # E[ĝ⊙ĝ] = diag(GN) / (tokens behind ĝ), and step() multiplies h by bs = tokens per step: a
            # smaller Hessian batch is rescaled by sqrt(hess_total_bs / total_bs) so that bs·h stays unbiased
            scale = math.sqrt(cfg.hess_total_bs / cfg.total_bs) / n_micro
            if self.scaler.is_enabled():
                scale *= self.scaler.get_scale()
            batches = run.in_lockstep(batches, cfg.hess_total_bs, size)
            for micro, batch in enumerate(batches):
                run.set_grad_sync(self.compiled, micro == len(batches) - 1)   # FSDP: it is self.model
                if batch is None:           # FSDP padding: join the collectives, add nothing
                    x, weight, generators = self._dummy_batch(size), 0.0, torch.Generator(run.device)
                else:
                    first_row, x, _ = batch
                    weight = scale
                    generators = [torch.Generator(device=run.device).manual_seed(seed(first_row + r))
                                  for r in range(len(x))]
                with run.autocast:
                    logits = self.compiled(x)[0]      # not through DDP: the sum over ranks is below (FSDP: through it)
                # = (gnb_loss(logits) * weight).backward(), in the logits' own memory and one softmax
                gnb_backward(logits, generator=generators, scale=weight)
                del logits                          # before the next micro-batch's forward
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            grads = run.summed_grads(grads)     # the estimate is the sum over ranks
            if self.scaler.is_enabled():
                torch._foreach_div_(grads, self.scaler.get_scale())
            for p, g in zip(params, grads):
                p.grad = g
            norm = (torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0
                    else torch.nn.utils.get_total_norm(grads))
            if math.isfinite(full_tensor(norm).item()):
                self.optimizer.update_hessian()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            generator, total = torch.Generator(device=run.device), [torch.zeros_like(p) for p in params]
            # double backward needs the uncompiled module and the math attention kernel
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                for _, x, y in batches:
                    with run.autocast:
                        loss = self.raw_model(x, y)[1]
                    generator.manual_seed(seed())      # the same probe u for every micro-batch and rank
                    torch._foreach_add_(total, hutchinson_estimate(loss / n_micro, params, generator=generator))
            total = run.sum_over_ranks(total)       # DDP does not reduce second-order gradients
            if all(torch.isfinite(t).all() for t in total):
                self.optimizer.update_hessian(estimates=total)

    @torch.no_grad()
    def evaluate(self):
        """Mean loss over eval_iters fixed micro-batches per split (the same for every run and seed)."""
        self.model.eval()
        out = {}
        for split, stream in (("train", EVAL_TRAIN), ("val", EVAL_VAL)):
            total, count = torch.zeros(2, device=self.run.device), self.cfg.eval_iters * self.cfg.batch_size
            batches = self.sampler.micro_batches(EVAL_SEED, stream, 0, count, split)
            for batch in self.run.in_lockstep(batches, count, self.cfg.batch_size):
                x, y = (self._dummy_batch(self.cfg.batch_size),) * 2 if batch is None else batch[1:]
                with self.run.autocast:
                    loss = self.compiled(x, y)[1]       # the logits are freed here, not after the next forward
                if batch is not None:
                    total += torch.stack([loss.float(), torch.ones((), device=self.run.device)])
            total = self.run.sum_over_ranks([total])[0]
            out[split] = (total[0] / total[1]).item()
        self.model.train()
        self.run.after_eval(self.raw_model)
        return out

    def icl_metrics(self):
        """{"icl/<task>": accuracy} on the first eval_tasks_limit documents of each task, 0-shot, through
        lm-eval (lm_eval_adapter); the RNG states and the train/eval mode are left as they were."""
        import lm_eval_adapter       # an optional extra: imported only when eval_tasks is set
        cfg = self.cfg
        return lm_eval_adapter.icl_metrics(self.raw_model, self.tokenizer, cfg.eval_tasks.split(","),
                                           limit=cfg.eval_tasks_limit, task_data=cfg.eval_tasks_data,
                                           batch_size=cfg.batch_size, autocast=self.run.autocast)

    def hessian_stats(self):
        """Sophia's diagnostics right after a refresh, as upstream computes them (held until the next one)."""
        stats = self.optimizer.stats(**self.step_kwargs)
        names = {"train/win_rate": "win_rate", "hessian_norm": "hessian_norm", "hessian_norm2": "hessian_norm2"}
        values = torch.stack([stats[key].float() for key in names.values()]).tolist()    # one host sync
        return dict(zip(names, values))

    def norms(self):
        """L2 norms of the parameters and of the momentum (exp_avg; Muon's part: momentum_buffer), on the device."""
        moments = [s["exp_avg"] if "exp_avg" in s else s["momentum_buffer"] for s in self.optimizer.state.values()
                   if "exp_avg" in s or "momentum_buffer" in s]
        params = list(self.raw_model.parameters())

        def squared_norm(tensors):    # of this rank's tensors (FSDP: its shards, summed over ranks below)
            if not tensors:
                return torch.zeros((), device=self.run.device)
            return torch.stack(torch._foreach_norm([local_tensor(t) for t in tensors])).square().sum()
        values = torch.stack([squared_norm(params), squared_norm(moments).to(self.run.device)])
        values = self.run.sum_of_shards(values)
        return dict(zip(("param_norm", "momentum_norm"), values.sqrt().tolist()))

    # ---------------------------------------------------------------------------------------- output

    def log(self, event, iter_num, values):
        """One JSON line in metrics.jsonl (master only), and wandb when on."""
        if not self.run.master:
            return
        record = {"event": event, "iter": iter_num, **values}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")   # NaN / Inf are written as null
        if self.wandb is not None and event != "run":
            self.wandb.log({k: v for k, v in values.items() if v is not None}, step=iter_num)

    def start_logging(self):
        cfg, run = self.cfg, self.run
        config = config_to_dict(cfg)
        if self.run.master and cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True needs the wandb package: pip install wandb") from None
            run_id = self.state["wandb_run_id"] or secrets.token_hex(4)   # kept in checkpoints: resume continues it
            self.state["wandb_run_id"] = run_id
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, id=run_id, resume="allow",
                                    config=config, dir=cfg.out_dir)
        # fingerprints that let a comparison check it used the same initial weights and data
        fingerprint = dict(data=dict(dir=os.path.abspath(self.dataset.data_dir), **self.dataset.lengths))
        if self.resumed_from is None and (run.master or run.fsdp):   # only the master logs it
            digest = hashlib.sha256()
            for tensor in self.raw_model.state_dict().values():     # FSDP: gathered on every rank
                digest.update(full_tensor(tensor).detach().cpu().numpy().tobytes())
            fingerprint["init_sha256"] = digest.hexdigest()[:16]
        if self.resume_overrides:
            run.print("resuming with changed settings (--resume_override): " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in self.resume_overrides.items()))
            if self.wandb is not None:
                self.wandb.config.update({f"resume_override/{self.resumed_from}": self.resume_overrides},
                                         allow_val_change=True)
        self.log("run", self.state["iter_num"], dict(name=cfg.wandb_run_name, config=config,
                                                      resumed_from=self.resumed_from, world_size=run.world,
                                                      resume_overrides=self.resume_overrides or None,
                                                      code=self.code, **fingerprint))

    def save_checkpoint(self, is_best):
        """All ranks call this (the RNG states are gathered). FSDP: every rank writes its own shards (a sharded
        checkpoint, torch.distributed.checkpoint); DDP and 1 process: the master writes one file."""
        run, cfg = self.run, self.cfg
        rng = run.gather_objects(checkpoint.rng_state(run.device))
        parts = dict(model_args=self.model_args, state=self.state, rng=rng, config=config_to_dict(cfg),
                     code=self.code, scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None)
        if run.fsdp:
            tensors, layout = checkpoint.sharded_state(self.raw_model, self.optimizer)
            weights = [t for k, t in tensors.items() if k.startswith("model/")]
        elif run.master:
            model, optimizer = parallel.full_state_dicts(self.raw_model, self.optimizer)
            weights = list(model.values())
        else:
            return
        if not run.all_finite(weights):     # FSDP: every rank checks its shards, and all agree
            run.print("not saving a checkpoint: the model has non-finite weights (the previous one is kept)")
            return
        if run.fsdp:
            ckpt = checkpoint.make(model=None, optimizer=None, sharded=layout, **parts)
            path = checkpoint.save_sharded(cfg.out_dir, ckpt, tensors, keep_last=cfg.keep_last, is_best=is_best)
        else:
            ckpt = checkpoint.make(model=model, optimizer=optimizer, **parts)
            path = checkpoint.save(cfg.out_dir, ckpt, keep_last=cfg.keep_last, is_best=is_best)
        run.print(f"saved checkpoint {path}")

    def eval_and_checkpoint(self, iter_num, final=False):
        losses = self.evaluate()
        improved = losses["val"] < self.state["best_val_loss"]
        if improved:
            self.state["best_val_loss"] = losses["val"]
        self.run.print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        record = {"val/loss": losses["val"], "eval/train_loss": losses["train"], "tokens": self.state["tokens"],
                  "time": self.state["train_time"], "lr": get_lr(iter_num, self.cfg)}
        if self.cfg.eval_tasks and self.run.master:    # the other ranks wait for it at their next collective
            record.update(self.icl_metrics())
            self.run.print("in-context: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("icl/")))
        self.log("eval", iter_num, record)
        # a resumed run re-evaluates where it starts; the checkpoint it came from is already on disk
        if iter_num > 0 and iter_num != self.resumed_from and (final or improved or self.cfg.always_save_checkpoint):
            if math.isfinite(losses["val"]):
                self.save_checkpoint(improved)
            else:   # a diverged model must not rotate good checkpoints out under keep_last
                self.run.print(f"not saving a checkpoint at iteration {iter_num}: the val loss is {losses['val']} "
                               f"(the previous checkpoints are kept)")

    # ---------------------------------------------------------------------------------------- loop

    def train(self):
        try:
            self._train()
        except RuntimeError as err:       # torch.OutOfMemoryError (CUDA) is one; the CPU allocator raises a plain one
            if not is_out_of_memory(err):
                raise
            raise UserError(self._out_of_memory_message(err)) from None
        finally:
            self.stop.restore()
            if self.wandb is not None:
                self.wandb.finish()

    def _out_of_memory_message(self, err):
        cfg = self.cfg
        asked = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)|you tried to allocate (\d+) bytes", str(err))
        asked = "" if asked is None else f", asking for {asked.group(1) or f'{int(asked.group(2)) / 2**20:,.0f} MiB'}"
        return (f"out of memory at iteration {self.state['iter_num']} on {self.run.device}, with micro-batches of "
                f"{cfg.batch_size} x {cfg.block_size} tokens{asked}: lower --batch_size (gradient accumulation is "
                f"derived, so total_bs={cfg.total_bs} stays), or shard the model with --fsdp=True under torchrun; "
                f"the README's 'DDP or FSDP' says what each model size needs. The checkpoints on disk are intact")

    def _train(self):
        cfg, run, state = self.cfg, self.run, self.state
        if self.resumed_from is not None and self.resumed_from >= cfg.max_iters and not cfg.eval_only:
            run.print(f"{cfg.out_dir} is already at iteration {self.resumed_from}, max_iters={cfg.max_iters}: "
                      f"nothing to train (pass a larger --max_iters to continue it)")
            return
        self.start_logging()
        skipped_in_a_row, window = 0, None
        while True:
            iter_num = state["iter_num"]
            if iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters or cfg.eval_only:
                self.eval_and_checkpoint(iter_num, final=iter_num >= cfg.max_iters)
            if iter_num >= cfg.max_iters or cfg.eval_only:
                break
            window = window or TimingWindow(run.device)
            lr = get_lr(iter_num, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, grad_norm, stopping = self.train_step(iter_num)
            finite = math.isfinite(loss) and math.isfinite(grad_norm)
            if finite or (self.scaler.is_enabled() and math.isfinite(loss)):
                # fp16: an overflowing gradient is routine, the GradScaler skips that step and lowers its scale
                state["clipped_steps"] += finite and cfg.grad_clip > 0 and grad_norm > cfg.grad_clip
                self.scaler.step(self.optimizer, **self.step_kwargs)
                self.scaler.update()
            if not finite:
                self._nonfinite(iter_num, loss, grad_norm)
                state["skipped_steps"] += 1
            skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
            self.optimizer.zero_grad(set_to_none=True)
            refreshed = self.sophia and finite and iter_num % cfg.hess_interval == cfg.hess_interval - 1
            if refreshed:
                self.hessian_refresh(iter_num)
                state["diagnostics"] = self.hessian_stats()
            state["iter_num"] = iter_num + 1
            state["tokens"] += self.tokens_per_iter
            window.add(refreshed)
            # the window closes (one device synchronize) where its time is read: a log line, and before an
            # evaluation, a checkpoint or the end, so that state["train_time"] is exact when saved
            next_iter = iter_num + 1
            if (iter_num % cfg.log_interval == 0 or next_iter % cfg.eval_interval == 0 or
                    next_iter >= cfg.max_iters or stopping):
                window.close(state)
                if iter_num % cfg.log_interval == 0:
                    self._log_step(iter_num, loss, grad_norm, lr, window)
                window = None
            if skipped_in_a_row >= 20:
                raise UserError(f"20 consecutive steps had a non-finite loss or gradient (last at iteration "
                                f"{iter_num}); lower --learning_rate or check the data")
            # ranks agree through train_step's reduction; a single process also stops on a signal that came later
            if stopping or (not run.ddp and self.stop.signal is not None):
                if window is not None:       # not closed above: the signal came after train_step
                    window.close(state)
                self.save_checkpoint(is_best=False)
                run.print(f"stopped by {self.stop.signal or 'a signal on another rank'} after iteration {iter_num}; "
                          f"continue with --init_from=resume")
                break

    def _nonfinite(self, iter_num, loss, grad_norm):
        message = f"non-finite loss or gradient at iteration {iter_num} (loss {loss}, grad norm {grad_norm})"
        if self.scaler.is_enabled() and math.isfinite(loss):
            return   # the fp16 loss scale overflowed; the scaler already skipped this step
        if self.cfg.nonfinite == "stop":
            raise UserError(f"{message}; the last good checkpoint is {self.cfg.out_dir}/ckpt.pt (if any). Lower "
                            f"--learning_rate, or pass --nonfinite=skip to skip such steps")
        self.run.print(f"{message}: step skipped")

    def _log_step(self, iter_num, loss, grad_norm, lr, window):
        state, steps, cfg = self.state, iter_num + 1, self.cfg
        dt = window.seconds_per_iter
        tokens_per_sec = self.tokens_per_iter / dt
        mfu = self.raw_model.estimate_mfu(tokens_per_sec / self.run.world, self.run.device)
        mfu_with_hessian = None
        if mfu is not None and self.sophia:
            # the Hessian pass's FLOPs too: a forward-backward per sequence (Sophia-H: about twice that, for the
            # Hessian-vector product's second backward), on hess_total_bs sequences per refresh
            passes = 1 if cfg.optimizer_name == "sophiag" else 2
            hessian_tokens = window.refreshes * passes * cfg.hess_total_bs * cfg.block_size / window.iters
            mfu_with_hessian = mfu * (1 + hessian_tokens / self.tokens_per_iter)
        record = {"train/loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "train/clip_rate": state["clipped_steps"] / steps, "train/skipped_steps": state["skipped_steps"],
                  **self.norms()}
        if self.sophia:   # win_rate is 0 until the first refresh, as upstream logs it
            record.update({"train/win_rate": 0.0, "hessian_norm": 0.0, "hessian_norm2": 0.0}, **state["diagnostics"])
        record.update(tokens=state["tokens"], time=state["train_time"], cpu_time=state["cpu_time"],
                      compile_time=state["compile_time"], tokens_per_sec=tokens_per_sec, iter_time_ms=dt * 1000,
                      mfu=mfu, **({"mfu_with_hessian": mfu_with_hessian} if self.sophia else {}))
        self.log("train", iter_num, record)
        extra = f", win_rate {record['train/win_rate']:.3f}" if self.sophia else ""
        self.run.print(f"iter {iter_num}: loss {loss:.4f}, lr {lr:.2e}, grad_norm {grad_norm:.3f}{extra}, "
                       f"{dt * 1000:.0f} ms{f' (mean of {window.iters})' if window.iters > 1 else ''}, "
                       f"{tokens_per_sec:,.0f} tok/s, "
                       f"mfu {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}")


class TimingWindow:
    """Wall, CPU and compile time over consecutive iterations, read with one device synchronize when it closes
    (not one per iteration: the queue of device work stays full). Time spent compiling (the model's first
    passes, Sophia's fused step) is kept out of the training time."""

    def __init__(self, device):
        self.device, self.iters, self.refreshes = device, 0, 0
        self.start, self.cpu_start, self.compile_start = time.perf_counter(), time.process_time(), compile_seconds()

    def add(self, refreshed):
        self.iters += 1
        self.refreshes += bool(refreshed)

    def close(self, state):
        devices.synchronize(self.device)
        compiling = compile_seconds() - self.compile_start
        elapsed = max(time.perf_counter() - self.start - compiling, 1e-9)
        self.seconds_per_iter = elapsed / self.iters
        state["train_time"] += elapsed
        state["compile_time"] += compiling
        state["cpu_time"] += time.process_time() - self.cpu_start


def compile_seconds():
    """Seconds torch.compile has spent compiling in this process so far (dynamo's own count; 0 if unavailable)."""
    try:
        return torch._dynamo.utils.calculate_time_spent().get("total_wall_time", 0.0)
    except Exception:   # a private counter: never let it break a run
        return 0.0


def is_out_of_memory(err):
    """torch.OutOfMemoryError (CUDA, MPS) or the CPU allocator's RuntimeError."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def json_safe(value):
    """value with every non-finite float replaced by None, so that metrics.jsonl is strict JSON (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def code_info():
    """Versions and source hashes, so a checkpoint or metrics file tells which code produced it."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    hashes = {}
    for name in ("train.py", "sophia.py", "model.py", "dataloader.py", "lion.py", "muon.py"):
        with open(os.path.join(root, name), "rb") as f:
            hashes[name] = hashlib.sha256(f.read()).hexdigest()[:16]
    return dict(git_commit=commit, torch=str(torch.__version__), python=platform.python_version(), sha256=hashes)


if __name__ == "__main__":
    from configurator import run_cli
    run_cli(main)
