"""
What a run records: one JSON object per event in out_dir/metrics.jsonl (and wandb when on), the time it spends,
and which code and data produced it.

    log = MetricsLog(cfg, run)
    log.set_aside_old()                 # a fresh run: an earlier run's metrics.jsonl (with no checkpoint) is kept
    log.start(state, config, ...)       # a resume: metrics.jsonl cut back to the checkpoint, a "restart" event;
                                        # wandb (continuing a resumed run's), then the "run" event
    log.log("train", iter_num, {...})   # master only; wandb's names (train/loss, val/loss, lr, train/win_rate)
    log.finish()
    window = TimingWindow(device); window.add(refreshed); wall, compiling, cpu = window.close()
"""

import hashlib
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import time

import torch

import checkpoint
import devices
from configurator import UserError
from parallel import full_tensor, local_tensor

ROOT = os.path.dirname(os.path.abspath(__file__))


class MetricsLog:
    """metrics.jsonl and wandb, written by the master process only."""

    def __init__(self, cfg, run):
        self.cfg, self.run, self.wandb = cfg, run, None
        self.path = os.path.join(cfg.out_dir, "metrics.jsonl")

    def set_aside_old(self):
        """A fresh run in an out_dir whose earlier run never checkpointed: move its metrics.jsonl to
        metrics.old.jsonl (never over an earlier one), so that one file holds one run."""
        if not os.path.exists(self.path):
            return
        kept, n = os.path.join(self.cfg.out_dir, "metrics.old.jsonl"), 1
        while os.path.exists(kept):
            n += 1
            kept = os.path.join(self.cfg.out_dir, f"metrics.old{n}.jsonl")
        os.replace(self.path, kept)
        self.run.print(f"moved the metrics.jsonl of an earlier run in {self.cfg.out_dir} that wrote no checkpoint "
                       f"to {kept}")

    def cut_back(self, resumed_from, restarts):
        """On resume: the rows an earlier attempt logged from the resumed iteration on are run again, so
        metrics.jsonl is rewritten (atomically) without them; "run" and "restart" events stay. Then a "restart"
        event. A last line cut short by a kill is dropped too."""
        kept, dropped = [], 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        dropped += 1
                        continue
                    if record.get("event") in ("run", "restart") or record.get("iter", 0) < resumed_from:
                        kept.append(line if line.endswith("\n") else line + "\n")
                    else:
                        dropped += 1
            def write(tmp):
                with open(tmp, "w") as f:
                    f.writelines(kept)
                    f.flush()
                    os.fsync(f.fileno())
            checkpoint.atomically(self.path, write)
        self.log("restart", resumed_from, dict(restarts=restarts, rows_dropped=dropped))

    def log(self, event, iter_num, values):
        """One JSON line in metrics.jsonl (master only), and wandb when on."""
        if not self.run.master:
            return
        record = {"event": event, "iter": iter_num, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")   # NaN / Inf are written as null
        if self.wandb is not None and event not in ("run", "restart"):
            try:
                self.wandb.log({k: v for k, v in values.items() if v is not None}, step=iter_num)
            except Exception as err:    # logging never costs the run: metrics.jsonl has every row
                self.wandb_failed("log", err)

    def wandb_failed(self, what, err):
        """wandb is off from here on, said in one line on stderr."""
        self.wandb = None
        text = " ".join(str(err).split())[:200]
        print(f"warning: wandb {what} failed ({type(err).__name__}: {text}); continuing without wandb "
              f"(metrics.jsonl has every row). Without network, run with WANDB_MODE=offline and `wandb sync` "
              f"{os.path.join(self.cfg.out_dir, 'wandb')} later", file=sys.stderr, flush=True)

    def start(self, state, config, *, resumed_from, resume_overrides, fingerprint, code):
        """wandb (a resumed run continues the checkpoint's wandb run: its id is in `state`), then the "run" event:
        the config, where it resumed from, the world size, the code's versions and the init/data fingerprint."""
        cfg, run = self.cfg, self.run
        if run.master and resumed_from is not None:
            self.cut_back(resumed_from, state.restarts)
        if run.master and cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True needs the wandb package: pip install wandb") from None
            state.wandb_run_id = state.wandb_run_id or secrets.token_hex(4)   # kept in checkpoints
            # an unreachable server: init retries for init_timeout seconds, then raises; the run goes on without
            # wandb. (A resume re-logs the steps after the checkpoint: wandb's resume="allow" ignores a step it
            # has seen; its rewind, resume_from, is a private preview, so not used: docs/metrics.md)
            try:
                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, id=state.wandb_run_id,
                                        resume="allow", config=config, dir=cfg.out_dir,
                                        settings=wandb.Settings(init_timeout=cfg.wandb_init_timeout))
            except Exception as err:
                self.wandb_failed("init", err)
        if resume_overrides:
            run.print("resuming with changed settings (--resume_override): " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in resume_overrides.items()))
            if self.wandb is not None:
                try:
                    self.wandb.config.update({f"resume_override/{resumed_from}": resume_overrides},
                                             allow_val_change=True)
                except Exception as err:
                    self.wandb_failed("config update", err)
        self.log("run", state.iter_num, dict(name=cfg.wandb_run_name, config=config, resumed_from=resumed_from,
                                             restarts=state.restarts, world_size=run.world,
                                             resume_overrides=resume_overrides or None,
                                             code=code, **fingerprint))

    def finish(self):
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as err:
                self.wandb_failed("finish", err)


def fingerprint(raw_model, dataset, fresh, run):
    """What lets a comparison check that its runs used the same data and initial weights: the data's folder and
    sizes, and (a fresh run) a hash of the initial weights. All ranks call it (FSDP gathers the weights)."""
    info = dict(data=dict(dir=os.path.abspath(dataset.data_dir), **dataset.lengths))
    if fresh and (run.master or run.fsdp):
        digest = hashlib.sha256()
        for tensor in raw_model.state_dict().values():
            digest.update(full_tensor(tensor).detach().cpu().numpy().tobytes())
        info["init_sha256"] = digest.hexdigest()[:16]
    return info


def param_and_momentum_norms(raw_model, optimizer, run):
    """L2 norms of the parameters and of the momentum (exp_avg; Muon's part: momentum_buffer)."""
    moments = [s["exp_avg"] if "exp_avg" in s else s["momentum_buffer"] for s in optimizer.state.values()
               if "exp_avg" in s or "momentum_buffer" in s]

    def squared_norm(tensors):    # of this rank's tensors (FSDP: its shards, summed over ranks below)
        if not tensors:
            return torch.zeros((), device=run.device)
        return torch.stack(torch._foreach_norm([local_tensor(t) for t in tensors])).square().sum()
    values = torch.stack([squared_norm(list(raw_model.parameters())), squared_norm(moments).to(run.device)])
    return dict(zip(("param_norm", "momentum_norm"), run.sum_of_shards(values).sqrt().tolist()))


def step_line(iter_num, record, window_iters):
    """The line a logged training step prints."""
    mfu = record["mfu"]
    win_rate = f", win_rate {record['train/win_rate']:.3f}" if "train/win_rate" in record else ""
    mean = f" (mean of {window_iters})" if window_iters > 1 else ""
    return (f"iter {iter_num}: loss {record['train/loss']:.4f}, lr {record['lr']:.2e}, grad_norm "
            f"{record['grad_norm']:.3f}{win_rate}, {record['iter_time_ms']:.0f} ms{mean}, "
            f"{record['tokens_per_sec']:,.0f} tok/s, mfu {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}")


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

    def close(self):
        """(training seconds, compiling seconds, CPU seconds) since the window opened; sets seconds_per_iter."""
        devices.synchronize(self.device)
        compiling = compile_seconds() - self.compile_start
        elapsed = max(time.perf_counter() - self.start - compiling, 1e-9)
        self.seconds_per_iter = elapsed / self.iters
        return elapsed, compiling, time.process_time() - self.cpu_start


def compile_seconds():
    """Seconds torch.compile has spent compiling in this process so far (dynamo's own count; 0 if unavailable)."""
    try:
        return torch._dynamo.utils.calculate_time_spent().get("total_wall_time", 0.0)
    except Exception:   # a private counter: never let it break a run
        return 0.0


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
    """Versions and source hashes, so a checkpoint or metrics file tells which code produced it: every module of
    this repo that the process has imported (the ones that shape the run), by file name."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    files = {getattr(module, "__file__", None) or "" for module in list(sys.modules.values())}
    hashes = {}
    for path in sorted(f for f in files if os.path.isabs(f) and os.path.dirname(f) == ROOT and f.endswith(".py")):
        with open(path, "rb") as f:
            hashes[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()[:16]
    return dict(git_commit=commit, torch=str(torch.__version__), python=platform.python_version(), sha256=hashes)
