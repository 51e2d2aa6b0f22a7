"""
The one training loop, for every optimizer: Sophia-G, Sophia-H, AdamW, Lion and Muon.

    python train.py config/train_tiny_sophiag.py                          # 1 process (CPU or GPU)
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_sophiag.py
    python train.py config/train_tiny_adam.py --max_iters=50               # the AdamW baseline

(train_sophiag.py and train_adam.py are the same loop under upstream's script names.) Everything except the
optimizer is shared, so comparisons are fair by construction: the same batches (a pure function of seed and
iteration, whatever the world size), model, init, schedule, clipping, precision and token budget. One iteration:

    global batch of total_bs sequences -> micro-batches over ranks and gradient-accumulation steps
    -> mean loss (DDP all-reduces / FSDP reduce-scatters gradients on the last micro-step only)
    -> clip the global grad norm
    -> optimizer.step(bs = total_bs * block_size tokens for Sophia-G)
    -> Sophia, at iterations ≡ hess_interval - 1: a Hessian pass on a fresh batch, then update_hessian()

Who does what: optimizers.py builds the optimizer, hessian.py refreshes Sophia's Hessian, metrics.py records the
run (metrics.jsonl, wandb), resume.py saves and restores it (checkpoint.py's formats), parallel.py spreads it over
processes. Outputs in out_dir: metrics.jsonl (one JSON object per event), checkpoints and, with wandb_log=True, a
wandb run that a resumed run continues. The same command run again (after a crash, a preemption, torchrun's
restart) continues from the latest checkpoint: init_from=auto, the default.
"""

if __name__ == "__main__":   # Ctrl-C while torch loads: exit with status 130, quietly (run_cli takes over after)
    import configurator
    configurator.exit_quietly_on_ctrl_c()

import dataclasses
import gc
import math
import os
import re
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Literal

import numpy  # noqa: F401  (first: torch imports it midway, where a Ctrl-C would interrupt its C-extension init)
import torch
import torch.distributed as dist

import devices
from configurator import UserError, config_to_dict, load_config
from dataloader import EVAL_SEED, EVAL_TRAIN, EVAL_VAL, TRAIN, Sampler, TokenDataset, derive_seed
from export_hf import apply_hf_shape, load_hf_weights
from hessian import HessianRefresh
from metrics import MetricsLog, TimingWindow, code_info, fingerprint, param_and_momentum_norms, step_line
from model import GPT, GPTConfig
from optimizers import OPTIMIZER_DEFAULTS, SOPHIA, build_optimizer, describe_path, step_kwargs
from parallel import Run, full_tensor
from resume import Checkpointer
from tokenizer import tokenizer_from_meta


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"                    # checkpoints, metrics.jsonl, wandb files
    eval_interval: int = 2000               # evaluate (and checkpoint) every this many iterations
    log_interval: int = 1                   # print / metrics.jsonl / wandb every this many iterations
    eval_iters: int = 200                   # micro-batches of batch_size per split in each evaluation
    eval_sequences: int | None = None       # sequences per split in each evaluation, the same ones whatever
                                            # batch_size, world size and seed; None: eval_iters x batch_size
    eval_only: bool = False                 # evaluate once and exit
    eval_tasks: str = ""                    # SuperGLUE tasks scored in-context at each evaluation and logged as
                                            # icl/<task> (eval.py's --tasks names, e.g. "boolq,copa"); "": off.
                                            # Needs pip install -r requirements-eval.txt
    eval_tasks_limit: int = 100             # documents per task in that evaluation (the first ones)
    eval_tasks_data: str | None = None      # offline task files, as eval.py's --task_data; None: lm-eval's hub
    always_save_checkpoint: bool = True     # checkpoint at every eval, not only when val loss improves
    keep_last: int = 2                      # numbered checkpoints kept (ckpt.pt and ckpt_best.pt besides)
    async_checkpoint: bool = False          # write checkpoints on a background thread from a copy in host memory
                                            # (one in flight; the run waits for it at the next save and at exit).
                                            # Single-file format only (DDP, 1 process); FSDP saves stay synchronous
    init_from: str = "auto"                 # auto: resume when out_dir holds a checkpoint, else start fresh (the same
                                            # command continues after a crash, torchrun's restart or a requeue);
                                            # scratch refuses an out_dir with checkpoints; resume requires one;
                                            # hf:<gpt2|gpt2-medium|gpt2-large|gpt2-xl|dir>: start from a pretrained
                                            # GPT-2 (Hub or local GPT2LMHeadModel dir), or continue as auto does
    resume_override: str | None = None      # on resume: experiment keys allowed to differ from the checkpoint's,
                                            # comma-separated (e.g. "rho,learning_rate"); see RESUMABLE_KEYS below
    # wandb
    wandb_log: bool = False
    wandb_project: str = "sophia"
    wandb_run_name: str = "gpt2"
    wandb_init_timeout: float = 60.0        # seconds wandb.init may wait for its server; then the run goes on
                                            # without wandb (one warning; metrics.jsonl has everything)
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
    # optimizer (None: optimizers.OPTIMIZER_DEFAULTS of optimizer_name)
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
    dist_timeout_s: float = 600.0           # under torchrun: a collective that waits longer for a hung rank fails
                                            # (NCCL's default, 10 min; gloo's is 30). It must exceed the longest
                                            # time one rank works alone: rank 0's checkpoint write and eval_tasks
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

    # How a resume treats each key (resume.py). RESUMABLE_KEYS may change: how the run runs and is observed, not
    # what it computes (the batches are a function of the seed and the iteration, whatever the micro-batch and
    # process layout). Any other key changes the experiment and is refused on resume unless resume_override
    # names it; NEVER_OVERRIDDEN (the model's shape, the optimizer) never changes. DERIVED_FROM: what a key left
    # at None follows.
    RESUMABLE_KEYS = frozenset({
        "out_dir", "eval_interval", "log_interval", "eval_iters", "eval_sequences", "eval_only",
        "always_save_checkpoint", "keep_last", "async_checkpoint", "init_from", "resume_override", "eval_tasks",
        "eval_tasks_limit", "eval_tasks_data", "wandb_log", "wandb_project", "wandb_run_name", "wandb_init_timeout",
        "data_dir", "batch_size", "gradient_accumulation_steps", "max_iters", "optimizer_impl", "hess_batch_size",
        "nonfinite", "device", "dtype", "compile", "threads", "backend", "dist_timeout_s", "fsdp", "fsdp_shard_size",
        "fsdp_mixed_precision", "activation_checkpointing"})
    NEVER_OVERRIDDEN = frozenset({"optimizer_name", "n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                  "bias", "parallel_block", "rotary_dim", "tie_embeddings"})
    DERIVED_FROM = {"min_lr": "learning_rate", "lr_decay_iters": "max_iters", "hess_total_bs": "total_bs"}


# ----------------------------------------------------------------------------------------------------------
# configuration checks

INIT_FROM = ("auto", "scratch", "resume")   # init_from's plain values; besides them, hf:<Hub name or directory>


def resolve(cfg, world_size):
    """Fill the None defaults, check ranges and the batch arithmetic. Returns gradient accumulation steps."""
    if cfg.init_from not in INIT_FROM and not (cfg.init_from.startswith("hf:") and len(cfg.init_from) > 3):
        raise UserError(f"init_from={cfg.init_from!r}: use {', '.join(INIT_FROM)} or hf:<name or directory> "
                        f"(e.g. hf:gpt2, hf:gpt2-medium, hf:./my-export)")
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
    if cfg.eval_sequences is None:
        cfg.eval_sequences = cfg.eval_iters * cfg.batch_size
    cfg.device = devices.default_device(cfg.device)
    cfg.dtype = devices.resolve_dtype(cfg.dtype, cfg.device)
    cuda = cfg.device.startswith("cuda")
    if cfg.compile is None:
        cfg.compile = cuda
    if cfg.backend is None:
        cfg.backend = "nccl" if cuda else "gloo"

    positive = ["eval_interval", "log_interval", "eval_iters", "eval_sequences", "keep_last", "total_bs", "batch_size",
                "block_size", "max_iters", "lr_decay_iters", "hess_interval", "hess_total_bs", "hess_batch_size"]
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be a positive integer, got {getattr(cfg, key)}")
    if cfg.dist_timeout_s <= 0:
        raise UserError(f"dist_timeout_s must be > 0 seconds, got {cfg.dist_timeout_s}")
    if cfg.wandb_init_timeout <= 0:
        raise UserError(f"wandb_init_timeout must be > 0 seconds, got {cfg.wandb_init_timeout}")
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


@dataclass
class TrainState:
    """The loop's counters, saved in every checkpoint, so that a resumed run logs exactly what a straight run logs."""
    iter_num: int = 0                  # the next iteration to run
    tokens: int = 0                    # tokens trained on so far
    best_val_loss: float = float("inf")
    clipped_steps: int = 0             # steps whose gradient norm exceeded grad_clip
    skipped_steps: int = 0             # steps skipped for a non-finite loss or gradient
    train_time: float = 0.0            # seconds of training, compile time excluded
    compile_time: float = 0.0
    cpu_time: float = 0.0
    wandb_run_id: str | None = None    # a resumed run continues its wandb run
    restarts: int = 0                  # resumes so far (explicit, or automatic after a crash / torchrun restart)
    diagnostics: dict = dataclasses.field(default_factory=dict)   # Sophia's, from the last Hessian refresh

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, saved):
        for key, value in saved.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)


# ----------------------------------------------------------------------------------------------------------
# why a run stops: a signal, a non-finite loss, out of memory

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


def nonfinite_step(cfg, iter_num, loss, grad_norm, fp16, run):
    """A step with a NaN/Inf loss or gradient: an fp16 loss-scale overflow passes (the GradScaler skipped the
    step); otherwise stop with the last good checkpoint named, or, with nonfinite=skip, say the step was skipped."""
    if fp16 and math.isfinite(loss):
        return
    message = f"non-finite loss or gradient at iteration {iter_num} (loss {loss}, grad norm {grad_norm})"
    if cfg.nonfinite == "stop":
        raise UserError(f"{message}; the last good checkpoint is {cfg.out_dir}/ckpt.pt (if any). Lower "
                        f"--learning_rate, or pass --nonfinite=skip to skip such steps")
    run.print(f"{message}: step skipped")


def is_out_of_memory(err):
    """torch.OutOfMemoryError (CUDA, MPS) or the CPU allocator's RuntimeError."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def is_collective_failure(err):
    """A collective that timed out (a hung rank) or lost its peer (a dead one): NCCL raises DistError, gloo a
    plain RuntimeError ("Timed out waiting 600000ms for recv operation", "Connection closed by peer")."""
    return isinstance(err, dist.DistError) or re.search(r"timed out|connection (closed|reset)", str(err), re.I)


def collective_failed_message(err, cfg, iter_num, rank):
    """This rank, the iteration, the collective (the innermost Python call, e.g. dist.all_reduce(tensor); NCCL's
    own text names it too: OpType=ALLREDUCE) and torch's words."""
    frames = traceback.extract_tb(err.__traceback__)
    call = f" in {frames[-1].line}" if frames and frames[-1].line else ""
    text = " ".join(str(err).split())[:300]
    return (f"rank {rank}: a collective failed at iteration {iter_num}{call} ({type(err).__name__}: {text}); "
            f"another rank hung or died (its output says why). dist_timeout_s={cfg.dist_timeout_s:g} bounds the "
            f"wait: raise it if one rank may work alone longer (a large checkpoint, eval_tasks). Checkpoints on disk "
            f"are intact; the same command resumes from the latest")


def out_of_memory_message(err, cfg, iter_num, device):
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)|you tried to allocate (\d+) bytes", str(err))
    asked = "" if asked is None else f", asking for {asked.group(1) or f'{int(asked.group(2)) / 2**20:,.0f} MiB'}"
    return (f"out of memory at iteration {iter_num} on {device}, with micro-batches of {cfg.batch_size} x "
            f"{cfg.block_size} tokens{asked}: lower --batch_size (gradient accumulation is derived, so total_bs="
            f"{cfg.total_bs} stays), or shard the model with --fsdp=True under torchrun; docs/distributed.md, "
            f"'DDP or FSDP', says what each model size needs. The checkpoints on disk are intact")


# ----------------------------------------------------------------------------------------------------------
# the run

def main(argv=None, defaults=None):
    """Parse the configuration (defaults < config files < --key=value), then train."""
    trainer = None
    try:
        trainer = make_trainer(sys.argv[1:] if argv is None else argv, defaults)
        trainer.train()
        if trainer.run.distributed:
            dist.barrier()     # leave together: rank 0 may still be writing the last checkpoint
    finally:
        # the DDP / FSDP modules hold the process group: release them first, so that it is torn down now and
        # not during interpreter shutdown (where gloo's threads can abort the process)
        trainer = None
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


def given_keys(applied):
    """The keys a config file or the command line set (load_config's applied lines: "FILE: key = v", "--key = v")."""
    return {line.split(" = ", 1)[0].split()[-1].lstrip("-") for line in applied}


def make_trainer(argv, defaults=None):
    cfg, applied = load_config(TrainConfig, argv, defaults)
    derived = {key for key, value in vars(cfg).items() if value is None}    # filled in by resolve()
    run = Run()
    grad_accum = resolve(cfg, run.world)
    if cfg.init_from.startswith("hf:"):   # the model's shape from the pretrained GPT-2's config
        apply_hf_shape(cfg, given_keys(applied))
    run.setup_device(cfg)
    return Trainer(cfg, run, grad_accum, applied, derived)


class Trainer:
    def __init__(self, cfg, run, grad_accum, applied, derived=()):
        self.cfg, self.run = cfg, run
        for line in applied:
            run.print(f"config: {line}")
        self.sophia = cfg.optimizer_name in SOPHIA
        self.tokens_per_iter = cfg.total_bs * cfg.block_size
        self.step_kwargs = step_kwargs(cfg, self.tokens_per_iter)
        self.code = code_info()
        data_dir = cfg.data_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", cfg.dataset)
        self.dataset = TokenDataset(data_dir, cfg.block_size)
        if cfg.eval_tasks:     # fail now, not at the first evaluation: lm-eval installed, the task names known
            import lm_eval_adapter
            lm_eval_adapter.task_names(cfg.eval_tasks)
            self.tokenizer = tokenizer_from_meta(data_dir)
        self.sampler = Sampler(self.dataset, cfg.batch_size, run.rank, run.world, run.device)
        self.checkpoints, self.metrics = Checkpointer(cfg, run, derived), MetricsLog(cfg, run)
        try:
            self._set_up(cfg, run, grad_accum)
        except BaseException:
            self.checkpoints.release()      # a run that never started leaves its out_dir free at once
            raise

    def _set_up(self, cfg, run, grad_accum):
        """Everything after the Checkpointer, which may hold out_dir's lock from here on."""
        if self.checkpoints.prepare_out_dir() and run.master:
            self.metrics.set_aside_old()

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
        if cfg.init_from.startswith("hf:") and not self.checkpoints.resuming:   # a pretrained GPT-2's weights,
            load_hf_weights(self.raw_model, cfg.init_from[3:])                  # a fresh optimizer
        torch.manual_seed(derive_seed(cfg.seed, run.rank))   # dropout: a different stream on every rank
        self.state = TrainState()
        ckpt = self.checkpoints.load(self.raw_model, self.model_args) if self.checkpoints.resuming else None
        # self.model runs forward/backward (it syncs gradients), self.local_model the passes that sum their own
        # (parallel.Run.wrap); raw_model holds the parameters (FSDP: sharded in place)
        self.model, self.local_model = run.wrap(self.raw_model)
        self.optimizer = build_optimizer(cfg, self.raw_model)
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=cfg.dtype == "float16")
        if ckpt is not None:
            self.checkpoints.restore(ckpt, self.raw_model, self.optimizer, self.scaler, self.state)
        self.hessian_refresh = HessianRefresh(cfg, run, self.sampler, self.optimizer, self.scaler,
                                              self.local_model, self.raw_model) if self.sophia else None
        self.stop = StopRequest(announce=run.master)
        self.prefetched = None          # (iteration, its micro-batches), loaded ahead by train_step
        layout = f" ({run.layout})" if run.layout else ""
        run.print(f"{cfg.optimizer_name}: {self.raw_model.num_params() / 1e6:.2f}M parameters, "
                  f"{run.world} process(es){layout} x {cfg.batch_size} sequences x {grad_accum} accumulation "
                  f"steps = {cfg.total_bs} sequences = {self.tokens_per_iter:,} tokens per iteration; device "
                  f"{run.device}, {cfg.dtype}, compile={cfg.compile}, optimizer step: "
                  f"{describe_path(self.optimizer, self.raw_model)}")

    @property
    def resumed_from(self):
        return self.checkpoints.resumed_from

    # ---------------------------------------------------------------------------------------- steps

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

    @torch.no_grad()
    def estimate_loss(self):
        """Mean loss per split over eval_sequences fixed random windows: the same sequences for every run, seed,
        batch_size and world size (eval.py scores a whole split instead)."""
        cfg, run = self.cfg, self.run
        self.model.eval()
        out = {}
        for split, stream in (("train", EVAL_TRAIN), ("val", EVAL_VAL)):
            loss_sum = torch.zeros((), device=run.device)     # over this rank's sequences
            batches = self.sampler.micro_batches(EVAL_SEED, stream, 0, cfg.eval_sequences, split)
            for batch in run.in_lockstep(batches, cfg.eval_sequences, cfg.batch_size):
                x, y = (run.dummy_batch(cfg.batch_size, cfg.block_size),) * 2 if batch is None else batch[1:]
                with run.autocast:
                    loss = self.local_model(x, y)[1]    # the logits are freed here, not after the next forward
                if batch is not None:
                    loss_sum += loss.float() * len(x)
            out[split] = (run.sum_over_ranks([loss_sum])[0] / cfg.eval_sequences).item()
        self.model.train()
        run.after_eval(self.raw_model)
        return out

    def icl_metrics(self):
        """{"icl/<task>": accuracy} on the first eval_tasks_limit documents of each task, 0-shot, through
        lm-eval (lm_eval_adapter); the RNG states and the train/eval mode are left as they were."""
        import lm_eval_adapter       # an optional extra: imported only when eval_tasks is set
        cfg = self.cfg
        return lm_eval_adapter.icl_metrics(self.raw_model, self.tokenizer, cfg.eval_tasks.split(","),
                                           limit=cfg.eval_tasks_limit, task_data=cfg.eval_tasks_data,
                                           batch_size=cfg.batch_size, autocast=self.run.autocast)

    def save_checkpoint(self, is_best):
        self.checkpoints.save(self.raw_model, self.optimizer, self.scaler, self.state, self.model_args, self.code,
                              is_best)

    def eval_and_checkpoint(self, iter_num, final=False):
        losses = self.estimate_loss()
        improved = losses["val"] < self.state.best_val_loss
        if improved:
            self.state.best_val_loss = losses["val"]
        self.run.print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        record = {"val/loss": losses["val"], "eval/train_loss": losses["train"], "tokens": self.state.tokens,
                  "time": self.state.train_time, "lr": get_lr(iter_num, self.cfg)}
        if self.cfg.eval_tasks and self.run.master:    # the other ranks wait for it at their next collective
            record.update(self.icl_metrics())
            self.run.print("in-context: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                                      if k.startswith("icl/")))
        self.metrics.log("eval", iter_num, record)
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
            if self.run.distributed and is_collective_failure(err):
                raise UserError(collective_failed_message(err, self.cfg, self.state.iter_num, self.run.rank)) \
                    from None
            if not is_out_of_memory(err):
                raise
            raise UserError(out_of_memory_message(err, self.cfg, self.state.iter_num, self.run.device)) from None
        finally:
            self.stop.restore()
            try:
                self.checkpoints.wait()     # a background save: the run ends once its file is in place
            finally:
                self.metrics.finish()
                self.checkpoints.release()

    def _train(self):
        cfg, run, state = self.cfg, self.run, self.state
        if self.resumed_from is not None and self.resumed_from >= cfg.max_iters and not cfg.eval_only:
            run.print(f"{cfg.out_dir} is already at iteration {self.resumed_from}, max_iters={cfg.max_iters}: "
                      f"nothing to train (pass a larger --max_iters to continue it)")
            return
        self.metrics.start(state, config_to_dict(cfg), resumed_from=self.resumed_from,
                           resume_overrides=self.checkpoints.overrides, code=self.code,
                           fingerprint=fingerprint(self.raw_model, self.dataset, self.resumed_from is None, run))
        skipped_in_a_row, window = 0, None
        while True:
            iter_num = state.iter_num
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
                state.clipped_steps += finite and cfg.grad_clip > 0 and grad_norm > cfg.grad_clip
                self.scaler.step(self.optimizer, **self.step_kwargs)
                self.scaler.update()
            if not finite:
                nonfinite_step(cfg, iter_num, loss, grad_norm, self.scaler.is_enabled(), run)
                state.skipped_steps += 1
            skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
            self.optimizer.zero_grad(set_to_none=True)
            refreshed = self.sophia and finite and self.hessian_refresh.due(iter_num)
            if refreshed:
                state.diagnostics = self.hessian_refresh(iter_num)
            state.iter_num = iter_num + 1
            state.tokens += self.tokens_per_iter
            window.add(refreshed)
            # the window closes (one device synchronize) where its time is read: a log line, and before an
            # evaluation, a checkpoint or the end, so that state.train_time is exact when saved
            next_iter = iter_num + 1
            if (iter_num % cfg.log_interval == 0 or next_iter % cfg.eval_interval == 0 or
                    next_iter >= cfg.max_iters or stopping):
                self._close(window)
                if iter_num % cfg.log_interval == 0:
                    self._log_step(iter_num, loss, grad_norm, lr, window)
                window = None
            if skipped_in_a_row >= 20:
                raise UserError(f"20 consecutive steps had a non-finite loss or gradient (last at iteration "
                                f"{iter_num}); lower --learning_rate or check the data")
            # ranks agree through train_step's reduction; a single process also stops on a signal that came later
            if stopping or (not run.distributed and self.stop.signal is not None):
                if window is not None:       # not closed above: the signal came after train_step
                    self._close(window)
                self.save_checkpoint(is_best=False)
                run.print(f"stopped by {self.stop.signal or 'a signal on another rank'} after iteration {iter_num}; "
                          f"run the same command again to continue (init_from=auto resumes)")
                break

    def _close(self, window):
        wall, compiling, cpu = window.close()
        self.state.train_time += wall
        self.state.compile_time += compiling
        self.state.cpu_time += cpu

    def _log_step(self, iter_num, loss, grad_norm, lr, window):
        state, dt = self.state, window.seconds_per_iter
        tokens_per_sec = self.tokens_per_iter / dt
        mfu = self.raw_model.estimate_mfu(tokens_per_sec / self.run.world, self.run.device)
        record = {"train/loss": loss, "lr": lr, "grad_norm": grad_norm, "restarts": state.restarts,
                  "train/clip_rate": state.clipped_steps / (iter_num + 1), "train/skipped_steps": state.skipped_steps,
                  **param_and_momentum_norms(self.raw_model, self.optimizer, self.run)}
        if self.sophia:   # win_rate is 0 until the first refresh, as upstream logs it
            record.update({"train/win_rate": 0.0, "hessian_norm": 0.0, "hessian_norm2": 0.0}, **state.diagnostics)
        record.update(tokens=state.tokens, time=state.train_time, cpu_time=state.cpu_time,
                      compile_time=state.compile_time, tokens_per_sec=tokens_per_sec, iter_time_ms=dt * 1000, mfu=mfu)
        if self.sophia:   # with the Hessian passes' FLOPs too
            share = self.hessian_refresh.flops_share(window.refreshes, window.iters)
            record["mfu_with_hessian"] = None if mfu is None else mfu * (1 + share)
        self.metrics.log("train", iter_num, record)
        self.run.print(step_line(iter_num, record, window.iters))


if __name__ == "__main__":
    from configurator import run_cli
    run_cli(main)
