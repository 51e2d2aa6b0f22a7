"""
The training run's side of checkpoints: an out_dir ready to write, the latest checkpoint loaded and checked
against this run, its state restored, and new checkpoints saved. What a checkpoint holds and how it is written
(atomic files, DCP shards, checksums) is checkpoint.py's.

    checkpoints = Checkpointer(cfg, run, derived)
    checkpoints.prepare_out_dir()                           # refuses a fresh run over saved checkpoints
    ckpt = checkpoints.load(raw_model, model_args)          # --init_from=resume, before the model is wrapped
    checkpoints.restore(ckpt, raw_model, optimizer, scaler, state)   # after the optimizer is built
    checkpoints.save(raw_model, optimizer, scaler, state, model_args, code, is_best)

A resume may change how a run runs and is observed, never what it computes: the keys in the config class's
RESUMABLE_KEYS (train.py) change freely; any other changed key is refused unless --resume_override names it; the
model's shape and the optimizer (NEVER_OVERRIDDEN) never change.
"""

import os

import torch

import checkpoint
import parallel
from configurator import UserError, config_to_dict
from dataloader import derive_seed
from model import GPTConfig


class Checkpointer:
    def __init__(self, cfg, run, derived=()):
        """derived: the config keys this run left at None (filled in from others, e.g. min_lr from learning_rate)."""
        self.cfg, self.run, self.derived = cfg, run, set(derived)
        self.resumed_from, self.overrides = None, {}

    def prepare_out_dir(self):
        """Refuse a fresh run over saved checkpoints and a resume without any; the master makes sure out_dir is
        writable. Returns whether this is a fresh run (nothing of it saved yet)."""
        cfg = self.cfg
        if cfg.init_from != "resume" and checkpoint.has_checkpoint(cfg.out_dir):   # scratch or hf:...: a new run
            raise UserError(f"out_dir {cfg.out_dir!r} already holds a run's checkpoints; continue it with "
                            f"--init_from=resume, or pass another --out_dir (delete the folder to start over)")
        if cfg.init_from == "resume":
            checkpoint.require_checkpoint(cfg.out_dir)      # before anything is created there
        if self.run.master:
            try:
                os.makedirs(cfg.out_dir, exist_ok=True)
                probe = os.path.join(cfg.out_dir, f".write_test{os.getpid()}")
                with open(probe, "w") as f:
                    f.write("ok")
                os.remove(probe)
            except OSError as err:
                raise UserError(f"out_dir {cfg.out_dir!r} is not writable ({err.strerror}); "
                                f"pass a writable --out_dir") from None
        return cfg.init_from != "resume"

    def load(self, raw_model, model_args):
        """The latest checkpoint, checked against this run; its weights go into raw_model (before any sharding),
        except those of a sharded checkpoint resumed under FSDP: each rank reads its shards in restore()."""
        cfg = self.cfg
        ckpt, path = checkpoint.load_latest(cfg.out_dir, shards=self.run.fsdp)
        check_resumable(ckpt, path, model_args, cfg.optimizer_name)
        self.overrides = check_resumed_config(ckpt["config"], cfg, path, self.derived)
        if "model" in ckpt:
            raw_model.load_state_dict(ckpt["model"])
        ckpt["path"] = path
        return ckpt

    def restore(self, ckpt, raw_model, optimizer, scaler, state):
        """Optimizer, scaler, counters and RNG states from the checkpoint."""
        if "sharded" in ckpt:       # FSDP from a sharded checkpoint (any world size): this rank's shards only
            checkpoint.load_sharded_into(ckpt["path"], raw_model, optimizer)
        else:                       # FSDP slices the full tensors every rank read; DDP / 1 process takes them
            optimizer.load_state_dict(parallel.shard_optimizer_state(optimizer, ckpt["optimizer"]))
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        state.load_state_dict(ckpt["state"])
        if "tokens" not in ckpt["state"]:    # written before the count was kept: every step had the saved batch
            state.tokens = state.iter_num * ckpt["config"]["total_bs"] * ckpt["config"]["block_size"]
        if not checkpoint.set_rng_state(ckpt["rng"], self.run.rank, self.run.device):
            # resumed on more processes than were saved: seed the new ones
            torch.manual_seed(derive_seed(self.cfg.seed, self.run.rank, state.iter_num))
        self.resumed_from = state.iter_num
        self.run.print(f"resuming from {ckpt['path']} at iteration {self.resumed_from}")

    def save(self, raw_model, optimizer, scaler, state, model_args, code, is_best):
        """All ranks call this (the RNG states are gathered). FSDP: every rank writes its own shards (a sharded
        checkpoint, torch.distributed.checkpoint); DDP and 1 process: the master writes one file."""
        run, cfg = self.run, self.cfg
        rng = run.gather_objects(checkpoint.rng_state(run.device))
        parts = dict(model_args=model_args, state=state.state_dict(), rng=rng, config=config_to_dict(cfg),
                     code=code, scaler=scaler.state_dict() if scaler.is_enabled() else None)
        if run.fsdp:
            tensors, layout = checkpoint.sharded_state(raw_model, optimizer)
            weights = [t for k, t in tensors.items() if k.startswith("model/")]
        elif run.master:
            model, optimizer_state = parallel.full_state_dicts(raw_model, optimizer)
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
            ckpt = checkpoint.make(model=model, optimizer=optimizer_state, **parts)
            path = checkpoint.save(cfg.out_dir, ckpt, keep_last=cfg.keep_last, is_best=is_best)
        run.print(f"saved checkpoint {path}")


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


def check_resumed_config(saved, cfg, path, derived):
    """Refuse a resume that changes the experiment (any key outside cfg's RESUMABLE_KEYS, compared after the None
    defaults are filled), unless cfg.resume_override names those keys. `derived`: the keys this run left at None.
    Returns {key: [saved, now]} allowed."""
    resumable, never, derived_from = cfg.RESUMABLE_KEYS, cfg.NEVER_OVERRIDDEN, cfg.DERIVED_FROM
    now = config_to_dict(cfg)
    allowed = {k.strip() for k in (cfg.resume_override or "").split(",") if k.strip()}
    unknown = sorted(k for k in allowed if k not in now or k in resumable | never)
    if unknown:
        raise UserError(f"--resume_override={cfg.resume_override}: {', '.join(unknown)} cannot be named "
                        f"there (only keys that change the experiment, and not the model's shape or the "
                        f"optimizer); the others may change on resume anyway")
    changed = {k: [saved[k], v] for k, v in now.items() if k in saved and k not in resumable and saved[k] != v}
    # a key left at None follows its source (min_lr = 0.05 x learning_rate): allowing the source allows it
    source = {k: derived_from.get(k, k) if k in derived else k for k in changed}
    refused = {k: v for k, v in changed.items() if source[k] not in allowed}
    if refused:
        listed = ", ".join(f"{k}={old!r} in the checkpoint, {new!r} now" + (
            f" (it follows {source[k]})" if source[k] != k else "") for k, (old, new) in refused.items())
        hint = " (lr_decay_iters follows max_iters when unset: pass the checkpoint's value)" \
            if "lr_decay_iters" in refused else ""
        names = ",".join(dict.fromkeys(source[k] for k in refused if source[k] not in resumable))
        raise UserError(f"cannot resume from {path}: it would change the experiment: {listed}{hint}; resume "
                        f"with the checkpoint's values" + (f", allow the change with --resume_override={names}"
                                                           if names else "") +
                        ", or start a new run in another --out_dir")
    return changed
