"""
Checkpoint files that survive preemption and kill -9.

out_dir/
    ckpt_0001000.pt   numbered checkpoints; the newest `keep_last` are kept
    ckpt.pt           the latest (a hard link to the newest numbered file); --init_from=resume reads it
    ckpt_best.pt      the one with the lowest val loss so far

Every file is written to a temporary name, flushed and fsynced, then renamed over the target: a rename is
atomic, so a reader (or a crash at any instant) sees either the old complete file or the new complete file.
Checkpoints hold only tensors, numbers, strings, lists and dicts, and load with
torch.load(weights_only=True, map_location="cpu"): no arbitrary pickled objects. Every tensor's bytes are
checksummed (CRC-32) when saved and checked when loaded, so a file altered on disk is refused, not trained from;
resuming then falls back to the previous checkpoint and says so.

For inference (eval.py, sample.py): load_model() builds the checkpoint's GPT, dataset_dir() finds the data it was
trained on and load_tokenizer() the tokenizer that data was made with.
"""

import glob
import os
import random
import re
import shutil
import sys
import zlib

import numpy as np
import torch

from configurator import UserError
from model import GPT, GPTConfig
from tokenizer import GPT2_VOCAB_SIZE, TokenizerError, tokenizer_from_meta

ROOT = os.path.dirname(os.path.abspath(__file__))
LATEST, BEST = "ckpt.pt", "ckpt_best.pt"
FORMAT = "sophia-gpt-checkpoint"
CHECKSUMS = "checksums"     # {path of a tensor in the checkpoint: CRC-32 of its bytes}


def numbered(out_dir, iter_num):
    return os.path.join(out_dir, f"ckpt_{iter_num:07d}.pt")


def atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(path))


def _atomic_link(src, dst):
    """dst becomes the same file as src (a hard link; a copy where links are unsupported), atomically."""
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(dst))


def _fsync_dir(directory):
    try:   # make the rename itself durable (POSIX); not possible on every platform
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors(obj, prefix=""):
    """(path, tensor) for every tensor in a nested dict / list, e.g. ('optimizer/state/0/exp_avg', tensor)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}/{index}")


def checksums(checkpoint):
    """{path: CRC-32 of the tensor's bytes} for every tensor of the checkpoint (~3 GB/s; a copy per tensor
    from the GPU). Tied weights appear under both names."""
    result = {}
    for path, tensor in _tensors({k: v for k, v in checkpoint.items() if k != CHECKSUMS}):
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        result[path] = zlib.crc32(data.numpy())
    return result


def save(out_dir, checkpoint, *, keep_last, is_best):
    """Write checkpoint (a dict with 'iter_num'), with its tensors' checksums, as the newest numbered file, point
    ckpt.pt (and ckpt_best.pt when is_best) at it, then delete numbered files beyond the newest keep_last."""
    path = numbered(out_dir, checkpoint["iter_num"])
    checkpoint[CHECKSUMS] = checksums(checkpoint)
    atomic_save(checkpoint, path)
    _atomic_link(path, os.path.join(out_dir, LATEST))
    if is_best:
        _atomic_link(path, os.path.join(out_dir, BEST))
    for old in numbered_files(out_dir)[:-keep_last]:
        os.remove(old)
    return path


def numbered_files(out_dir):
    """Numbered checkpoint files, oldest first."""
    files = [f for f in glob.glob(os.path.join(out_dir, "ckpt_*.pt")) if re.search(r"ckpt_\d+\.pt$", f)]
    return sorted(files)


def has_checkpoint(out_dir):
    return os.path.exists(os.path.join(out_dir, LATEST)) or bool(numbered_files(out_dir))


def require_checkpoint(out_dir):
    """The UserError of --init_from=resume in an out_dir without checkpoints (before anything is created there)."""
    if not has_checkpoint(out_dir):
        raise UserError(f"--init_from=resume: no checkpoint in {out_dir!r} (expected {LATEST}); "
                        f"start a run there first, or check --out_dir")


def _short(err):
    """An exception's message on one line: terminal colour codes removed, the first line, at most ~300 characters
    cut at a word."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    text = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return text if len(text) <= 300 else text[:300].rsplit(" ", 1)[0] + " ..."


def load(path):
    """Load one checkpoint file; a corrupt, altered or foreign file is a UserError naming it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found") from None
    except Exception as err:   # truncated zip, wrong format, pickled objects: all mean "not ours / damaged"
        raise UserError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {_short(err)}); it is "
                        f"corrupt or not a checkpoint of this repo: delete it or pick another out_dir") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this repo's train.py (no '{FORMAT}' marker)")
    if CHECKSUMS in checkpoint:        # (files written before checksums existed have none to check)
        saved, found = checkpoint[CHECKSUMS], checksums(checkpoint)
        damaged = sorted(k for k in saved.keys() | found.keys() if saved.get(k) != found.get(k))
        if damaged:
            raise UserError(f"checkpoint {path} is damaged: the bytes of {len(damaged)} tensor(s) ("
                            f"{', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''}) do not match the "
                            f"checksums saved with them, so the file was altered after it was written; delete it")
    return checkpoint


def _distinct_files(paths):
    """paths without the repeats of one file under another name (ckpt.pt is a hard link to a numbered file)."""
    seen, result = set(), []
    for path in paths:
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            result.append(path)
    return result


def load_latest(out_dir):
    """The newest loadable checkpoint in out_dir: ckpt.pt, else the numbered files newest first. Each file passed
    over is named on stderr with the reason (once, on rank 0 under torchrun). Returns (checkpoint, path)."""
    require_checkpoint(out_dir)
    candidates = [os.path.join(out_dir, LATEST)] + numbered_files(out_dir)[::-1]
    candidates = _distinct_files([c for c in candidates if os.path.exists(c)])
    errors = []
    for path in candidates:
        try:
            checkpoint = load(path)
        except UserError as err:
            errors.append(str(err))
            if os.environ.get("RANK", "0") == "0":
                print(f"warning: {err}; trying the previous checkpoint", file=sys.stderr, flush=True)
            continue
        return checkpoint, path
    raise UserError("no loadable checkpoint in " + repr(out_dir) + ":\n  " + "\n  ".join(errors))


# ----------------------------------------------------------------------------------------------------------
# what a checkpoint holds: its keys, the RNG states, and the checks a resume makes

# Keys a resumed run may change: how it runs and is observed, not what it computes (the batches are a function
# of the seed and the iteration, whatever the micro-batch and process layout). Any other key changes the
# experiment and is refused on resume, unless resume_override names it; the model's shape and the optimizer
# never change.
RESUMABLE_KEYS = {"out_dir", "eval_interval", "log_interval", "eval_iters", "eval_only", "always_save_checkpoint",
                  "keep_last", "init_from", "resume_override", "eval_tasks", "eval_tasks_limit", "eval_tasks_data", "wandb_log", "wandb_project", "wandb_run_name",
                  "data_dir", "batch_size", "gradient_accumulation_steps", "max_iters", "optimizer_impl",
                  "hess_batch_size", "nonfinite", "device", "dtype", "compile", "threads", "backend", "fsdp"}
NEVER_OVERRIDDEN = {"optimizer_name", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias",
                    "parallel_block", "rotary_dim", "tie_embeddings"}
DERIVED_FROM = {"min_lr": "learning_rate", "lr_decay_iters": "max_iters", "hess_total_bs": "total_bs"}  # when None



def make(*, model, optimizer, model_args, state, rng, config, code, scaler=None):
    """A training checkpoint as a dict of its parts: the model's and the optimizer's state dicts (full
    tensors), the GPT's constructor arguments, the loop's counters (`state`, with iter_num), every rank's RNG
    states, the data position (the sampler is a pure function of seed and iteration, so the next iteration is
    all it needs), the resolved config and the code's versions."""
    ckpt = dict(format=FORMAT, model=model, optimizer=optimizer, model_args=model_args,
                iter_num=state["iter_num"], state=dict(state), rng=rng,
                sampler=dict(scheme="global-batch = f(seed, stream, iteration)", seed=config["seed"],
                             next_iteration=state["iter_num"]),
                config=config, code=code)
    if scaler is not None:
        ckpt["scaler"] = scaler
    return ckpt


def rng_state(device):
    """This process's RNG states (only dropout draws from them: data and sampling use derived seeds)."""
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=list(random.getstate()[1]),
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2])))


def set_rng_state(saved, rank, device):
    """Restore rank `rank`'s saved RNG states. Returns False when the checkpoint has none for this rank (it was
    written by fewer processes): the caller seeds that rank itself."""
    if rank >= len(saved):
        return False
    state = saved[rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"]))
    return True


def check_resumable(ckpt, path, model_args, optimizer_name):
    """Refuse to resume a checkpoint of another model shape or optimizer (UserError naming the difference)."""
    # a key a checkpoint lacks (written before that switch existed) had GPTConfig's default, GPT-2's
    saved_args = {**{k: f.default for k, f in GPTConfig.__dataclass_fields__.items()}, **ckpt["model_args"]}
    differ = [f"{k}={saved_args.get(k)!r} in the checkpoint but {v!r} now" for k, v in model_args.items()
              if saved_args.get(k) != v]
    if differ:
        raise UserError(f"cannot resume from {path}: the model differs ({'; '.join(differ)}); use the "
                        f"checkpoint's settings, or a new --out_dir to start another run")
    if ckpt["config"]["optimizer_name"] != optimizer_name:
        raise UserError(f"cannot resume from {path}: it was trained with optimizer_name="
                        f"{ckpt['config']['optimizer_name']!r}, not {optimizer_name!r}")


def check_resumed_config(saved, now, path, resume_override, derived):
    """Refuse a resume that changes the experiment (any key outside RESUMABLE_KEYS, compared after the None
    defaults are filled), unless resume_override names those keys. `derived`: the keys this run left at None.
    Returns {key: [saved, now]} allowed."""
    allowed = {k.strip() for k in (resume_override or "").split(",") if k.strip()}
    unknown = sorted(k for k in allowed if k not in now or k in RESUMABLE_KEYS | NEVER_OVERRIDDEN)
    if unknown:
        raise UserError(f"--resume_override={resume_override}: {', '.join(unknown)} cannot be named "
                        f"there (only keys that change the experiment, and not the model's shape or the "
                        f"optimizer); the others may change on resume anyway")
    changed = {k: [saved[k], v] for k, v in now.items() if k in saved and k not in RESUMABLE_KEYS and saved[k] != v}
    # a key left at None follows its source (min_lr = 0.05 x learning_rate): allowing the source allows it
    source = {k: DERIVED_FROM.get(k, k) if k in derived else k for k in changed}
    refused = {k: v for k, v in changed.items() if source[k] not in allowed}
    if refused:
        listed = ", ".join(f"{k}={old!r} in the checkpoint, {new!r} now" + (
            f" (it follows {source[k]})" if source[k] != k else "") for k, (old, new) in refused.items())
        hint = " (lr_decay_iters follows max_iters when unset: pass the checkpoint's value)" \
            if "lr_decay_iters" in refused else ""
        names = ",".join(dict.fromkeys(source[k] for k in refused if source[k] not in RESUMABLE_KEYS))
        raise UserError(f"cannot resume from {path}: it would change the experiment: {listed}{hint}; resume "
                        f"with the checkpoint's values" + (f", allow the change with --resume_override={names}"
                                                           if names else "") +
                        ", or start a new run in another --out_dir")
    return changed


# ----------------------------------------------------------------------------------------------------------
# loading for inference (eval.py, sample.py)

def load_model(out_dir, ckpt_path, device):
    """The checkpoint at ckpt_path (else out_dir's latest) and its GPT, in eval mode on device.
    Returns (model, checkpoint dict, path)."""
    if ckpt_path:
        ckpt, path = load(ckpt_path), ckpt_path
    elif not os.path.isdir(out_dir):
        raise UserError(f"out_dir {out_dir!r} does not exist; pass the out_dir of a training run (--out_dir=DIR) "
                        f"or a checkpoint file (--ckpt=PATH)")
    elif not has_checkpoint(out_dir):
        raise UserError(f"no checkpoint in out_dir {out_dir!r} (expected {LATEST}); train there first, "
                        f"or pass another --out_dir or a checkpoint file with --ckpt=PATH")
    else:
        ckpt, path = load_latest(out_dir)
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} does not hold a model this model.py can build "
                        f"({type(err).__name__}: {_short(err)}); it was written by another version of the repo") \
            from None
    return model.to(device).eval(), ckpt, path


def dataset_dir(ckpt, data_dir):
    """--data_dir, else the dataset the checkpoint was trained on: its data_dir, or data/<dataset> here."""
    config = ckpt["config"]
    return data_dir or config.get("data_dir") or os.path.join(ROOT, "data", config["dataset"])


def load_tokenizer(data_dir, model_vocab_size):
    """The tokenizer named by data_dir/meta.json (GPT-2 without one), checked against the model's vocabulary."""
    meta = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(meta) and model_vocab_size < GPT2_VOCAB_SIZE:
        raise UserError(f"{meta} not found, so the tokenizer is unknown (a vocabulary of {model_vocab_size} is "
                        f"not GPT-2's); pass --data_dir=DIR, the prepared dataset the checkpoint was trained on")
    try:
        tokenizer = tokenizer_from_meta(data_dir)
    except TokenizerError as err:
        raise UserError(str(err)) from None
    if tokenizer.vocab_size > model_vocab_size:
        raise UserError(f"{data_dir} uses the {tokenizer.name} tokenizer ({tokenizer.vocab_size} tokens) but the "
                        f"model knows only {model_vocab_size}: it was trained on another dataset; pass --data_dir=DIR "
                        f"of that dataset")
    return tokenizer
