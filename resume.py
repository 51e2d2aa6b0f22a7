"""
The training run's side of checkpoints: an out_dir ready to write, the latest checkpoint loaded and checked
against this run, its state restored, and new checkpoints saved. What a checkpoint holds and how it is written
(atomic files, DCP shards, checksums) is checkpoint.py's.

    checkpoints = Checkpointer(cfg, run, derived)
    checkpoints.prepare_out_dir()                           # locks out_dir; auto: resume if it holds a checkpoint
    ckpt = checkpoints.load(raw_model, model_args)          # when checkpoints.resuming, before the model is wrapped
    checkpoints.restore(ckpt, raw_model, optimizer, scaler, state)   # after the optimizer is built
    checkpoints.save(raw_model, optimizer, scaler, state, model_args, code, is_best)
    checkpoints.wait()                                      # async_checkpoint: until the write in flight is done

A resume may change how a run runs and is observed, never what it computes: the keys in the config class's
RESUMABLE_KEYS (train.py) change freely; any other changed key is refused unless --resume_override names it; the
model's shape and the optimizer (NEVER_OVERRIDDEN) never change.

init_from="auto" (the default) resumes when out_dir holds a checkpoint and starts fresh otherwise, so that the same
command continues a run after torchrun's elastic restart, a SLURM requeue or a crash. One run at a time writes an
out_dir: the master holds an exclusive flock on out_dir/.lock for the run's lifetime (the OS drops it when the
process dies, so a killed run does not block the next one).
"""

import errno
import fcntl
import os
import shutil
import socket
import sys

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
        self.resuming, self.lock = False, None
        self.background = checkpoint.BackgroundSave()

    def prepare_out_dir(self):
        """Lock out_dir (master), refuse a fresh run over saved checkpoints and a resume without any; the master
        makes sure out_dir is writable. init_from=auto (and hf:) resumes when out_dir holds a checkpoint. Returns
        whether this is a fresh run (nothing of it saved yet); self.resuming says the opposite."""
        cfg = self.cfg
        if cfg.init_from == "resume":
            checkpoint.require_checkpoint(cfg.out_dir)      # before anything is created there
        refusal = self._lock_out_dir() if self.run.master else None
        # every rank learns the master's outcome and a refusal ends them all alike, with one error line (without
        # this the other ranks would die in their first collective with a traceback once the master left)
        refusal = self.run.gather_objects(refusal)[0]
        if refusal is not None:
            raise UserError(refusal)
        saved = checkpoint.has_checkpoint(cfg.out_dir)
        if cfg.init_from == "scratch" and saved:
            raise UserError(f"out_dir {cfg.out_dir!r} already holds a run's checkpoints; continue it with "
                            f"--init_from=auto (the default) or --init_from=resume, or pass another --out_dir "
                            f"(delete the folder to start over)")
        # auto and hf:<model> continue a saved run (hf: starts from the pretrained weights only when there is none)
        self.resuming = cfg.init_from == "resume" or (cfg.init_from != "scratch" and saved)
        return not self.resuming

    def _lock_out_dir(self):
        """Master: create out_dir, lock it, check that it is writable. The lock comes before anything is written or
        decided, so that a second run never sees a half-written first one. Returns the refusal's message, or None."""
        out_dir = self.cfg.out_dir
        try:
            os.makedirs(out_dir, exist_ok=True)
            self.lock = OutDirLock(out_dir)
            probe = os.path.join(out_dir, f".write_test{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except UserError as err:
            return str(err)
        except OSError as err:
            return f"out_dir {out_dir!r} is not writable ({err.strerror}); pass a writable --out_dir"
        return None

    def release(self):
        """Unlock out_dir (at the end of the run; the OS does it if the process dies first)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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
        state.restarts += 1         # every resume, explicit or automatic (torchrun's restart, a requeue)
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
            needed = sum(parallel.local_tensor(t).nbytes for t in tensors.values())     # this rank's shards
        else:
            ckpt = checkpoint.make(model=model, optimizer=optimizer_state, **parts)
            needed = sum(t.nbytes for _, t in checkpoint._tensors(ckpt))
            if cfg.async_checkpoint:    # a snapshot in host memory, written while training goes on
                self.background.wait()      # the previous write first: one snapshot in memory at a time
                ckpt, iter_num = checkpoint.to_host(ckpt, pin=run.device.type == "cuda"), state.iter_num
                self.background.start(lambda: self._write(ckpt, None, needed, iter_num, is_best))
                return
        self._write(ckpt, tensors if run.fsdp else None, needed, state.iter_num, is_best)

    def wait(self):
        """Until a background save (async_checkpoint) is complete; its error is raised here."""
        self.background.wait()

    def _write(self, ckpt, tensors, needed, iter_num, is_best):
        """The checkpoint to disk (FSDP: `tensors`, this rank's shards); a full disk is one UserError."""
        run, cfg = self.run, self.cfg
        try:
            if run.fsdp:
                path = checkpoint.save_sharded(cfg.out_dir, ckpt, tensors, keep_last=cfg.keep_last,
                                               is_best=is_best)
            else:
                path = checkpoint.save(cfg.out_dir, ckpt, keep_last=cfg.keep_last, is_best=is_best)
        except (OSError, RuntimeError, *checkpoint.dcp_errors()) as err:
            free = shutil.disk_usage(cfg.out_dir).free
            if not disk_full(err, needed, free):
                raise
            if run.fsdp and run.master:     # the unfinished directory (a file's temporary is already gone)
                shutil.rmtree(checkpoint.numbered_dir(cfg.out_dir, iter_num) + ".tmp", ignore_errors=True)
            raise UserError(f"cannot write the checkpoint of iteration {iter_num} to out_dir {cfg.out_dir!r}: "
                            f"the disk is full ({needed / 2**20:,.1f} MiB needed, {free / 2**20:,.1f} MiB free); "
                            f"the previous checkpoint is intact. Free space there (or lower --keep_last), then run "
                            f"the same command again: it resumes from the previous checkpoint") from None
        run.print(f"saved checkpoint {path}")


def disk_full(err, needed, free):
    """Whether a failed save ran out of space: ENOSPC anywhere in the exception's chain, or an error of torch's
    zip writer ("file write failed", no errno) with less free space than the checkpoint needs."""
    seen = err
    while seen is not None:
        if getattr(seen, "errno", None) == errno.ENOSPC or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return "write failed" in str(err) and free < needed


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


class OutDirLock:
    """An exclusive flock on out_dir/.lock, holding "host pid" of its holder; a second holder is refused with a
    UserError naming the first. flock is released by the OS when the process exits or is killed. On NFS it is
    local to one client on some setups, and Lustre needs the -o flock mount option (docs/checkpoints.md)."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, ".lock")
        self.file = open(self.path, "a+")       # not truncated: a refused run reads the holder from it
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().split()
            self.file.close()
            who = f"host {holder[0]}, pid {holder[1]}" if len(holder) == 2 else "holder unknown"
            raise UserError(f"out_dir {out_dir!r} is in use by another run ({who}, which holds {self.path}); "
                            f"wait for it to end or stop it, or pass another --out_dir") from None
        except OSError as err:      # a filesystem without locks (some NFS setups): run unguarded, say so once
            print(f"warning: cannot lock {self.path} ({err.strerror}); nothing stops a second run from writing "
                  f"to this out_dir at the same time", file=sys.stderr, flush=True)
            return
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{socket.gethostname()} {os.getpid()}\n")
        self.file.flush()

    def release(self):
        if not self.file.closed:
            self.file.close()       # closing the descriptor drops the flock
