"""
A fair comparison of AdamW, Lion, Sophia-G, Sophia-H and Muon at a scale a 2-core CPU can run, and the paper's
headline metric: how many steps each optimizer needs to reach tuned AdamW's final validation loss.

    python bench/compare_optimizers.py                  # the full study into bench/results/compare (git-ignored)
    python bench/compare_optimizers.py --out assets/compare   # the same, over the committed results (docs/results.md)
    python bench/compare_optimizers.py --quick          # a minute-long smoke version (used by the tests)
    python bench/compare_optimizers.py --study=ablations --out assets/ablations   # Sophia-G's variants (24 runs)
    python bench/compare_optimizers.py --study=scale --out assets/scale           # 3 sizes x 3 optimizers (36 runs)
    python bench/compare_optimizers.py --runs out-gpt2-small-adam out-gpt2-small-sophiag --out cmp
                                                        # the same report for runs made elsewhere (e.g. GPT-2 on GPUs)

Protocol (every run goes through train.py with config/parts/compare_tiny.py; only the optimizer's own
hyperparameters differ, and the script asserts it):
  1. sweep: each optimizer over its learning-rate grid (and rho for Sophia), seed 0;
  2. seeds: each optimizer's best setting (lowest final val loss) with the other seeds;
  3. report: final val loss mean ± std over seeds; the paper's headline metric, paired with AdamW's run of
     the same seed (same init, same batches): the steps AdamW needs over the steps the optimizer needs to
     reach the loss both reach (interpolated between evaluations), with a 95% t-interval over seeds, the
     same in wall time, and the wall-clock per run.
Runs execute `--jobs` at a time, one CPU thread each. Results go to --out: results.json, results.md
(the table), sweep.png and, through plot.py, val_loss.png, train_loss.png and win_clip_rate.png.
With --runs, steps 1-2 are skipped: the given out_dirs (any optimizers, any seeds, an AdamW run among them)
go through the same fairness checks and report, grouped by optimizer_name.

--study=ablations: Sophia-G at its tuned setting (TUNED), 3 seeds per variant: as tuned (no bias correction, k = 10,
full Hessian batch), with hessian_bias_correction, with k = 1, with a quarter Hessian batch (hess_total_bs = 4),
and with twice the steps; each paired by seed with AdamW at the same budget (at twice the steps AdamW's lr is swept
again). --study=scale: AdamW, Sophia-G and Muon at SCALE_SIZES (0.12M to 4.8M parameters) with token budgets that
grow with the size, a 3-point lr sweep at seed 0 then the best at seed 1; the steps-to-AdamW-loss ratio and the same
in FLOPs, against parameters (scale.png). Both print their planned run count and time first, and write <study>.md
and <study>.json; --quick runs either on a tiny budget.
"""

import argparse
import concurrent.futures
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import plot  # noqa: E402

BASE_CONFIG = "config/parts/compare_tiny.py"
OPTIMIZER_KEYS = {"optimizer_name", "learning_rate", "min_lr", "weight_decay", "beta1", "beta2", "rho",
                  "hess_interval", "hess_total_bs", "hessian_bias_correction", "optimizer_impl",
                  "muon_momentum", "muon_adjust_lr_fn"}
RUN_KEYS = {"out_dir", "wandb_run_name", "seed"}
# how a run is executed, not what it computes (batches do not depend on the process layout)
LAYOUT_KEYS = {"batch_size", "gradient_accumulation_steps", "hess_batch_size", "compile", "backend", "fsdp",
               "fsdp_shard_size", "activation_checkpointing", "threads", "data_dir", "wandb_log", "wandb_project",
               "log_interval", "always_save_checkpoint", "keep_last", "init_from", "eval_iters", "eval_tasks",
               "eval_tasks_limit", "eval_tasks_data", "wandb_init_timeout", "dist_timeout_s", "async_checkpoint"}

# name: (optimizer_name, grid of (learning_rate, rho)). Betas and weight decay are each optimizer's published
# defaults, optimizers.py's OPTIMIZER_DEFAULTS; the grids bracket each optimizer's best in pilot runs.
STUDY = {
    "adamw": ("adamw", [(lr, None) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]),
    "lion": ("lion", [(lr, None) for lr in (1.5e-4, 3e-4, 6e-4, 1.2e-3)]),
    "sophiag": ("sophiag", [(lr, rho) for lr in (1.25e-4, 2.5e-4, 5e-4, 1e-3) for rho in (0.01, 0.05, 0.5)]),
    "sophiah": ("sophiah", [(lr, rho) for lr in (1.25e-4, 2.5e-4, 5e-4, 1e-3) for rho in (0.1, 1.0, 10.0)]),
    # Muon's match_rms_adamw scaling carries AdamW's lr over (muon.py): the same grid, around AdamW's best
    "muon": ("muon", [(lr, None) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]),
}
SEEDS = (0, 1, 2)
QUICK = dict(max_iters=20, eval_interval=5, seeds=(0, 1),
             grids={"adamw": [(4e-3, None)], "lion": [(6e-4, None)], "sophiag": [(1e-3, 0.05)],
                    "sophiah": [(1e-3, 0.1)], "muon": [(4e-3, None)]})
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run_name(name, lr, rho, seed, tag=""):
    return f"{name}{tag}_lr{lr:g}" + (f"_rho{rho:g}" if rho is not None else "") + f"_seed{seed}"


def train_run(out, data_dir, name, lr, rho, seed, extra, tag="", own=()):
    """One training run in its own process and one CPU thread. Returns its summary. `own`: this run's extra
    settings (a study's variant, e.g. --hess_interval=1), named by `tag` in its folder and its summary."""
    optimizer, _ = STUDY[name]
    run_dir = os.path.join(out, "runs", run_name(name, lr, rho, seed, tag))
    if os.path.exists(os.path.join(run_dir, "summary.json")):      # finished earlier: reuse
        return json.load(open(os.path.join(run_dir, "summary.json")))
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [sys.executable, "train.py", BASE_CONFIG, f"--out_dir={run_dir}", f"--data_dir={data_dir}",
            f"--optimizer_name={optimizer}", f"--learning_rate={lr}", f"--seed={seed}", *extra, *own]
    if rho is not None:
        args.append(f"--rho={rho}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run {run_dir} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    for stale in os.listdir(run_dir):   # the comparison needs metrics only; checkpoints just take disk
        if stale.endswith(".pt"):
            os.remove(os.path.join(run_dir, stale))
    summary = dict(load_run(run_dir), wall_s=wall, tag=tag)
    json.dump(summary, open(os.path.join(run_dir, "summary.json"), "w"))
    return summary


def load_run(run_dir):
    """A finished run's summary from its metrics.jsonl: its settings, val-loss curve and timings."""
    train_rows, eval_rows, info = plot.load_metrics(run_dir)
    if not eval_rows or "config" not in info:
        raise plot.MetricsError(f"{run_dir}: no evaluation or run record in its metrics.jsonl")
    cfg = info["config"]
    sophia = cfg["optimizer_name"] in ("sophiag", "sophiah")
    iteration_ms = [r["iter_time_ms"] for r in train_rows if r.get("iter_time_ms") is not None]
    return dict(name=cfg["optimizer_name"], lr=cfg["learning_rate"], rho=cfg["rho"] if sophia else None,
                seed=cfg["seed"], dir=run_dir, wall_s=None, train_s=train_rows[-1]["time"],
                cpu_s=train_rows[-1].get("cpu_time"), iterations=train_rows[-1]["iter"] + 1,
                median_iteration_ms=statistics.median(iteration_ms) if iteration_ms else None,
                final_val=eval_rows[-1]["val/loss"], curve=[(r["iter"], r["val/loss"]) for r in eval_rows],
                win_rate=train_rows[-1].get("train/win_rate"), config=cfg, init=info.get("init_sha256"),
                data=info.get("data"))


def run_all(jobs, tasks, out, data_dir, extra):
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(train_run, out, data_dir, *task[:4], extra, *task[4:]) for task in tasks]
        results = []
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results.append(r)
            print(f"  {run_name(r['name'], r['lr'], r['rho'], r['seed'], r.get('tag', '')):34s} "
                  f"final val {r['final_val']:.4f}  "
                  f"wall {r['wall_s']:5.1f} s" + (f"  win_rate {r['win_rate']:.3f}" if r["win_rate"] is not None
                                                  else ""), flush=True)
    return results


def check_fairness(runs):
    """Everything but the optimizer's own hyperparameters (and the seed) must be identical across runs; the
    same seed must give the same initial weights; the schedule shape and token budget must match."""
    def shared(r):
        return {k: v for k, v in r["config"].items() if k not in OPTIMIZER_KEYS | RUN_KEYS | LAYOUT_KEYS}
    reference = shared(runs[0])
    for r in runs:
        differ = {k for k in reference if shared(r).get(k) != reference[k]}
        assert not differ, f"{r['dir']} differs from {runs[0]['dir']} in {sorted(differ)}"
        ratio = r["config"]["min_lr"] / r["config"]["learning_rate"]
        assert abs(ratio - 0.05) < 1e-9, f"{r['dir']}: min_lr / learning_rate = {ratio}, not 0.05"
        assert r["data"] == runs[0]["data"], f"{r['dir']} trained on other data"
    for seed in {r["seed"] for r in runs}:
        inits = {r["init"] for r in runs if r["seed"] == seed}
        assert len(inits) == 1, f"seed {seed}: runs started from different weights {inits}"
    budget = {r["config"]["max_iters"] * r["config"]["total_bs"] * r["config"]["block_size"] for r in runs}
    assert len(budget) == 1, f"token budgets differ: {budget}"
    return reference


def steps_to_reach(curve, target):
    """First iteration at which the val-loss curve [(iter, loss)] reaches target, linearly interpolated
    between evaluations; None if it never does."""
    for (i0, v0), (i1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return i1 if v0 <= target or v0 == v1 else i0 + (i1 - i0) * (v0 - target) / (v0 - v1)
    return None


def speedup(adamw_curve, curve):
    """The paper's metric, made symmetric: at the loss both runs reach, L = max(their final val losses),
    the steps AdamW needs over the steps this optimizer needs. If the optimizer reaches AdamW's final loss
    at step s of N, that is ~N/s (the paper's "2x"); if it ends worse, it is the share of its steps that
    AdamW needs to match it (< 1)."""
    target = max(adamw_curve[-1][1], curve[-1][1])
    return steps_to_reach(adamw_curve, target) / steps_to_reach(curve, target)


def mean_ci(values):
    """Mean and the half-width of its 95% t-interval (None for a single value: there is no interval)."""
    if len(values) < 2:
        return values[0], None
    return statistics.mean(values), T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


NOISE_LIMIT = 1.25   # a run whose mean iteration time exceeds its median by more than this was slowed by stalls


def timing_is_noisy(run):
    """Whether a run's wall time is not its own steady pace: its mean iteration time (the logged training time
    over the iterations) against the median of its logged iteration times. Machine load shows up as long
    stalls, which move the mean and not the median."""
    if not run.get("median_iteration_ms"):
        return False
    mean_ms = 1000 * run["train_s"] / run["iterations"]
    return mean_ms > NOISE_LIMIT * run["median_iteration_ms"]


def plus_minus(value, half_width, unit=""):
    return f"{value:.2f}{unit}" + (" (one seed)" if half_width is None else f" ± {half_width:.2f}")


def analyse(best_runs):
    """best_runs: {name: [run per seed]}, AdamW's included. Each optimizer is compared with AdamW seed by
    seed: the same seed means the same initial weights and the same batches."""
    adamw = {r["seed"]: r for r in best_runs["adamw"]}
    rows = {}
    for name, runs in best_runs.items():
        finals = [r["final_val"] for r in runs]
        steps = [speedup(adamw[r["seed"]]["curve"], r["curve"]) for r in runs]
        wall = [s * adamw[r["seed"]]["train_s"] / r["train_s"] for s, r in zip(steps, runs)]
        rows[name] = dict(lr=runs[0]["lr"], rho=runs[0]["rho"], seeds=[r["seed"] for r in runs],
                          final_mean=statistics.mean(finals),
                          final_std=statistics.stdev(finals) if len(finals) > 1 else None,
                          speedup_per_seed=steps, speedup=mean_ci(steps), wall_speedup=mean_ci(wall),
                          train_s=statistics.mean(r["train_s"] for r in runs),
                          cpu_s=statistics.mean(r["cpu_s"] for r in runs) if runs[0].get("cpu_s") else None,
                          noisy_timing=sorted({os.path.basename(r["dir"]) for r in runs + list(adamw.values())
                                               if timing_is_noisy(r)}),
                          wall_s=statistics.mean(r["wall_s"] for r in runs) if runs[0]["wall_s"] else None,
                          win_rate=statistics.mean(r["win_rate"] for r in runs) if runs[0]["win_rate"] is not None
                          else None)
    return rows


def markdown(rows, cfg):
    tokens = cfg["max_iters"] * cfg["total_bs"] * cfg["block_size"]
    lines = [f"GPT ({cfg['n_layer']} layers, {cfg['n_embd']} wide, block {cfg['block_size']}) on {cfg['dataset']}, "
             f"{cfg['max_iters']} steps x {cfg['total_bs']} sequences = {tokens:,} tokens per run; "
             f"seeds {rows['adamw']['seeds']}. Speed-up: steps AdamW needs / steps "
             f"this optimizer needs to reach the loss both reach (> 1: faster than AdamW), paired by seed.",
             "",
             "| optimizer | best lr | ρ | final val loss (mean ± std) | speed-up in steps, per seed "
             "| speed-up in steps (95% CI) | speed-up in wall time | win rate | train s / run | CPU s / run "
             "| wall s / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    noisy = []
    for name, r in rows.items():
        per_seed = ", ".join(f"{x:.2f}" for x in r["speedup_per_seed"])
        rho = "" if r["rho"] is None else f"{r['rho']:g}"
        win = "" if r["win_rate"] is None else f"{r['win_rate']:.3f}"
        wall = "" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        cpu = "" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
        std = "n/a" if r["final_std"] is None else f"{r['final_std']:.4f}"
        mark = " †" if r.get("noisy_timing") else ""
        noisy += r.get("noisy_timing") or []
        lines.append(f"| {name} | {r['lr']:g} | {rho} | {r['final_mean']:.4f} ± {std} | {per_seed} "
                     f"| {plus_minus(*r['speedup'], 'x')} | {plus_minus(*r['wall_speedup'], 'x')}{mark} | {win} "
                     f"| {r['train_s']:.1f} | {cpu} | {wall} |")
    if noisy:
        lines += ["", f"† The wall time of {', '.join(sorted(set(noisy)))} is not its steady pace: the mean "
                      f"iteration time exceeds the run's own median by more than {NOISE_LIMIT:g}x (stalls from "
                      f"machine load), so that wall-time speed-up is noise; trust the speed-up in steps, or rerun "
                      f"the runs on an idle machine."]
    return "\n".join(lines) + "\n"


def sweep_figure(sweep, path):
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name in STUDY:
        by_rho = {}
        for r in sweep:
            if r["name"] == name:
                by_rho.setdefault(r["rho"], []).append((r["lr"], r["final_val"]))
        for rho, points in sorted(by_rho.items(), key=lambda item: item[0] or 0):
            points.sort()
            ax.plot(*zip(*points), marker="o", label=name + ("" if rho is None else f" rho={rho:g}"))
    log_axes(ax, "peak learning rate", "final val loss (seed 0)")
    ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def log_axes(ax, xlabel, ylabel):
    """A log x axis, labels, a light grid and a small legend: the harness's figures' common style."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def study(args, out):
    """Steps 1-2: the sweep at the first seed, then the best settings at the other seeds.
    Returns (every run, {name: [best setting's runs by seed]}, the sweep)."""
    data_dir = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={data_dir}"], cwd=ROOT, check=True)
    grids = {name: grid for name, (_, grid) in STUDY.items()}
    seeds, extra = SEEDS, []
    if args.quick:
        grids, seeds = QUICK["grids"], QUICK["seeds"]
        extra = [f"--max_iters={QUICK['max_iters']}", f"--lr_decay_iters={QUICK['max_iters']}",
                 f"--eval_interval={QUICK['eval_interval']}", "--warmup_iters=5"]
    print(f"sweep: {sum(map(len, grids.values()))} runs, seed {seeds[0]}")
    sweep = run_all(args.jobs, [(name, lr, rho, seeds[0]) for name, grid in grids.items() for lr, rho in grid],
                    out, data_dir, extra)
    best = {name: min((r for r in sweep if r["name"] == name), key=lambda r: r["final_val"]) for name in grids}
    for name, grid in grids.items():
        for i, key in enumerate(("lr", "rho")):
            values = sorted({setting[i] for setting in grid if setting[i] is not None})
            if len(values) > 1 and best[name][key] in (values[0], values[-1]):
                print(f"note: {name}'s best {key} {best[name][key]:g} is at the edge of its grid {values}")
    print(f"seeds: best settings x seeds {list(seeds[1:])}")
    more = run_all(args.jobs, [(name, b["lr"], b["rho"], seed) for name, b in best.items() for seed in seeds[1:]],
                   out, data_dir, extra)
    best_runs = {name: sorted([best[name]] + [r for r in more if r["name"] == name], key=lambda r: r["seed"])
                 for name in grids}
    return sweep + more, best_runs, sweep


# ----------------------------------------------------------------------------------------------------------
# --study=ablations and --study=scale: further questions on the same loop, sampler and fairness checks

TUNED = {"adamw": (4e-3, None), "sophiag": (2.5e-4, 0.01)}   # the comparison's best (assets/compare/results.md)
# the Sophia-G ablations: tag -> what differs from the tuned run (k = 10, full Hessian batch, no bias correction)
ABLATIONS = {"": [], "_bias_corrected": ["--hessian_bias_correction=True"], "_k1": ["--hess_interval=1"],
             "_quarter_hessian": ["--hess_total_bs=4"], "_2x_steps": None}    # None: twice max_iters
# the scale study: model sizes (0.1M to 4.8M non-embedding parameters, 48x), each with a token budget that grows
# with it, a 3-point lr sweep per optimizer (x0.5, x1, x2 of the tuned tiny setting), then a second seed
SCALE_SIZES = [dict(n_layer=2, n_head=2, n_embd=64, max_iters=200),
               dict(n_layer=4, n_head=4, n_embd=128, max_iters=400),
               dict(n_layer=6, n_head=8, n_embd=256, max_iters=600)]
SCALE_GRIDS = {"adamw": [(lr, None) for lr in (2e-3, 4e-3, 8e-3)],
               "sophiag": [(lr, 0.01) for lr in (1.25e-4, 2.5e-4, 5e-4)],
               "muon": [(lr, None) for lr in (2e-3, 4e-3, 8e-3)]}
SCALE_SEEDS = (0, 1)
QUICK_STUDY = dict(seeds=(0, 1), max_iters=10, sizes=[dict(n_layer=1, n_head=2, n_embd=32, max_iters=10),
                                                    dict(n_layer=2, n_head=2, n_embd=64, max_iters=12),
                                                    dict(n_layer=2, n_head=4, n_embd=128, max_iters=14)])
# per-run times of the comparison (assets/compare/results.md), the basis of the time estimates: a 400-step AdamW
# run of the 0.84M model trains 27.5 s, Sophia-G (k = 10, full Hessian batch) 31.3 s; ~9 s more per run of start-up
# and evaluation. Other sizes and optimizers are scaled by their FLOPs per step.
REFERENCE_RUN = dict(train_s=27.5, overhead_s=9.0, steps=400, sophiag_train_s=31.3, n_layer=4, n_head=4, n_embd=128)


def model_flops(size, vocab, block_size=64):
    """(training FLOPs per token, parameters, [(rows, cols) of each Muon matrix]) of a GPT of this size."""
    return _model_flops(size["n_layer"], size["n_head"], size["n_embd"], vocab, block_size)


@functools.lru_cache(maxsize=None)
def _model_flops(n_layer, n_head, n_embd, vocab, block_size):
    import torch
    from model import GPT, GPTConfig
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                              vocab_size=vocab, bias=False))
    matrices = [tuple(p.shape) for block in model.transformer.h for p in block.parameters() if p.ndim == 2]
    return model.flops_per_token(), model.num_params(), matrices


def flops_per_step(cfg, name, vocab):
    """Training FLOPs of one optimizer step: 6N + attention per token over the batch; Sophia-G adds the Hessian
    pass (a forward and a backward over hess_total_bs sequences every hess_interval steps, the same FLOPs per token);
    Muon adds Newton-Schulz, per matrix a x b (a <= b) and iteration X·Xᵀ (2a²b), A·A (2a³), B·X (2a²b)."""
    per_token, _, matrices = model_flops(cfg, vocab, cfg["block_size"])
    flops = per_token * cfg["total_bs"] * cfg["block_size"]
    if name == "sophiag":
        flops += per_token * cfg["hess_total_bs"] * cfg["block_size"] / cfg["hess_interval"]
    if name == "muon":
        flops += 5 * sum(4 * min(m) ** 2 * max(m) + 2 * min(m) ** 3 for m in matrices)
    return flops


def estimate_seconds(tasks, base_cfg, vocab, jobs, extra=()):
    """The planned tasks' wall time on `jobs` cores, from REFERENCE_RUN scaled by FLOPs per step and steps."""
    ref = dict(base_cfg, **{k: REFERENCE_RUN[k] for k in ("n_layer", "n_head", "n_embd")}, hess_total_bs=16,
               hess_interval=10)
    ref_flops = flops_per_step(ref, "adamw", vocab) * REFERENCE_RUN["steps"]
    sophia_factor = REFERENCE_RUN["sophiag_train_s"] / REFERENCE_RUN["train_s"] / (
        flops_per_step(ref, "sophiag", vocab) / flops_per_step(ref, "adamw", vocab))   # its step's own overhead
    total = 0.0
    for task in tasks:
        cfg = dict(ref)
        for arg in [*extra, *(task[5] if len(task) > 5 else ())]:     # as train.py reads them: the last wins
            key, value = arg.lstrip("-").split("=")
            cfg[key] = value == "True" if value in ("True", "False") else int(float(value)) \
                if isinstance(ref.get(key, 0), int) else float(value)
        steps = cfg.get("max_iters", REFERENCE_RUN["steps"])
        flops = flops_per_step(cfg, task[0], vocab) * steps * (sophia_factor if task[0] == "sophiag" else 1.0)
        total += REFERENCE_RUN["overhead_s"] + REFERENCE_RUN["train_s"] * flops / ref_flops
    return total / jobs


def print_plan(tasks, data_dir, jobs, extra):
    from dataloader import TokenDataset
    vocab = -(-TokenDataset(data_dir, 64).vocab_size // 64) * 64
    base = dict(total_bs=16, block_size=64, max_iters=REFERENCE_RUN["steps"])
    print(f"planned: {len(tasks)} runs, about {estimate_seconds(tasks, base, vocab, jobs, extra) / 60:.1f} min with "
          f"--jobs={jobs} (estimated from the per-run times in assets/compare/results.md, scaled by FLOPs)",
          flush=True)


def size_args(size):
    steps = size["max_iters"]
    return [f"--n_layer={size['n_layer']}", f"--n_head={size['n_head']}", f"--n_embd={size['n_embd']}",
            f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--warmup_iters={steps // 10}",
            f"--eval_interval={max(1, steps // 16)}"]


def ablation_tasks(quick):
    """(name, lr, rho, seed, tag, own) for every planned run but AdamW's second-phase seeds at twice the steps."""
    seeds, steps = (QUICK_STUDY["seeds"], QUICK_STUDY["max_iters"]) if quick else (SEEDS, 400)
    long = [f"--max_iters={2 * steps}", f"--lr_decay_iters={2 * steps}"]
    lr, rho = TUNED["sophiag"]
    tasks = [("adamw", TUNED["adamw"][0], None, seed, "", []) for seed in seeds]
    grid = [(TUNED["adamw"][0], None)] if quick else STUDY["adamw"][1]
    tasks += [("adamw", adamw_lr, None, seeds[0], "_2x_steps", long) for adamw_lr, _ in grid]
    tasks += [("sophiag", lr, rho, seed, tag, long if own is None else own) for tag, own in ABLATIONS.items()
              for seed in seeds]
    return tasks, seeds


def ablations(args, out, data_dir, extra):
    """Sophia-G at its tuned setting, 3 seeds per variant; AdamW at the same budget (re-tuned at twice the steps)."""
    tasks, seeds = ablation_tasks(args.quick)
    second = [t for t in tasks if t[0] == "adamw" and t[4]][:1] * (len(seeds) - 1)   # AdamW's re-tuned 2x seeds
    print_plan(tasks + second, data_dir, args.jobs, extra)
    runs = run_all(args.jobs, tasks, out, data_dir, extra)
    long_adamw = min((r for r in runs if r["name"] == "adamw" and r["tag"]), key=lambda r: r["final_val"])
    long = next(t[5] for t in tasks if t[4] == "_2x_steps")
    runs += run_all(args.jobs, [("adamw", long_adamw["lr"], None, seed, "_2x_steps", long) for seed in seeds[1:]],
                    out, data_dir, extra)
    baselines = {tag: {r["seed"]: r for r in runs if r["name"] == "adamw" and r["tag"] == tag
                       and r["lr"] == (long_adamw["lr"] if tag else TUNED["adamw"][0])} for tag in ("", "_2x_steps")}
    for tag in baselines:      # each budget's runs share everything but the optimizer's own settings
        check_fairness([r for r in runs if (r["tag"] == "_2x_steps") == bool(tag)])
    rows = {}
    for tag in ABLATIONS:
        variant = sorted((r for r in runs if r["name"] == "sophiag" and r["tag"] == tag), key=lambda r: r["seed"])
        adamw = baselines["_2x_steps" if tag == "_2x_steps" else ""]
        steps = [speedup(adamw[r["seed"]]["curve"], r["curve"]) for r in variant]
        rows["sophiag" + tag] = dict(seeds=[r["seed"] for r in variant], speedup_per_seed=steps, speedup=mean_ci(steps),
                                     final_mean=statistics.mean(r["final_val"] for r in variant),
                                     adamw_lr=adamw[variant[0]["seed"]]["lr"],
                                     win_rate=statistics.mean(r["win_rate"] for r in variant))
    lines = [f"Sophia-G at lr {TUNED['sophiag'][0]:g}, rho {TUNED['sophiag'][1]:g}; seeds {list(seeds)}; speed-up in "
             f"steps against AdamW of the same seed and budget (AdamW lr {TUNED['adamw'][0]:g}; at twice the steps "
             f"re-tuned: {long_adamw['lr']:g}).", "",
             "| variant | final val loss (mean) | speed-up per seed | speed-up (95% CI) | win rate | AdamW lr |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['final_mean']:.4f} | {', '.join(f'{x:.2f}' for x in r['speedup_per_seed'])} "
                     f"| {plus_minus(*r['speedup'], 'x')} | {r['win_rate']:.3f} | {r['adamw_lr']:g} |")
    return runs, rows, "\n".join(lines) + "\n"


def scale_tasks(quick, size_list=None):
    sizes = QUICK_STUDY["sizes"] if quick else SCALE_SIZES
    seeds = QUICK_STUDY["seeds"] if quick else SCALE_SEEDS
    grids = {name: grid[1:2] if quick else grid for name, grid in SCALE_GRIDS.items()}
    tags = [f"_L{s['n_layer']}d{s['n_embd']}" for s in sizes]
    return sizes, seeds, grids, tags


def scale(args, out, data_dir, extra):
    """AdamW, Sophia-G and Muon at each size: the lr sweep at the first seed, then the best at the other seeds;
    per size and seed, steps AdamW needs / steps the optimizer needs to reach the loss both reach, and the same in
    FLOPs (the optimizer's FLOPs per step counted, flops_per_step)."""
    from dataloader import TokenDataset
    vocab = -(-TokenDataset(data_dir, 64).vocab_size // 64) * 64
    sizes, seeds, grids, tags = scale_tasks(args.quick)
    sweep = [(name, lr, rho, seeds[0], tag, size_args(size)) for size, tag in zip(sizes, tags)
             for name, grid in grids.items() for lr, rho in grid]
    second = [(name, grid[0][0], grid[0][1], seed, tag, size_args(size)) for size, tag in zip(sizes, tags)
              for name, grid in grids.items() for seed in seeds[1:]]
    print_plan(sweep + second, data_dir, args.jobs, extra)
    runs = run_all(args.jobs, sweep, out, data_dir, extra)
    best = {(r["tag"], r["name"]): r for r in sorted(runs, key=lambda r: -r["final_val"])}   # lowest loss wins
    more = [(name, best[tag, name]["lr"], best[tag, name]["rho"], seed, tag, size_args(size))
            for size, tag in zip(sizes, tags) for name in grids for seed in seeds[1:]]
    runs += run_all(args.jobs, more, out, data_dir, extra)
    rows = {}
    for size, tag in zip(sizes, tags):
        group = [r for r in runs if r["tag"] == tag]
        check_fairness(group)
        chosen = {name: {r["seed"]: r for r in group if r["name"] == name and r["lr"] == best[tag, name]["lr"]}
                  for name in grids}
        _, n_params, _ = model_flops(size, vocab)
        for name in grids:
            cfg = chosen[name][seeds[0]]["config"]
            flop_ratio = flops_per_step(cfg, "adamw", vocab) / flops_per_step(cfg, name, vocab)
            steps = [speedup(chosen["adamw"][seed]["curve"], chosen[name][seed]["curve"]) for seed in seeds]
            rows[f"{name}{tag}"] = dict(name=name, size=tag.lstrip("_"), params=n_params, tokens=cfg["max_iters"] *
                                        cfg["total_bs"] * cfg["block_size"], lr=best[tag, name]["lr"],
                                        speedup_per_seed=steps, speedup=mean_ci(steps),
                                        flops_speedup=mean_ci([x * flop_ratio for x in steps]),
                                        final_mean=statistics.mean(chosen[name][s]["final_val"] for s in seeds))
    lines = [f"Steps-to-AdamW-loss ratio (steps AdamW needs / steps the optimizer needs, paired by seed, seeds "
             f"{list(seeds)}) and the same in FLOPs (Sophia-G's Hessian pass, forward and backward, and Muon's "
             f"Newton-Schulz counted).", "",
             "| optimizer | size | parameters | tokens | best lr | final val loss | ratio in steps (95% CI) "
             "| ratio in FLOPs (95% CI) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['name']} | {r['size']} | {r['params']:,} | {r['tokens']:,} | {r['lr']:g} | "
                     f"{r['final_mean']:.4f} | {plus_minus(*r['speedup'], 'x')} "
                     f"| {plus_minus(*r['flops_speedup'], 'x')} |")
    return runs, rows, "\n".join(lines) + "\n"


def scale_figure(rows, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.6))
    for ax, key, label in zip(fig.subplots(1, 2), ("speedup", "flops_speedup"), ("steps", "FLOPs")):
        for name in dict.fromkeys(r["name"] for r in rows.values()):
            points = sorted((r["params"], *r[key]) for r in rows.values() if r["name"] == name)
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=[0.0 if e is None else e for e in err], marker="o", capsize=3, label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        log_axes(ax, "parameters", f"AdamW's {label} / optimizer's {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def run_study(args, out):
    """--study=ablations or scale: runs, fairness checks, the table (stdout and <study>.md, <study>.json)."""
    data_dir = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={data_dir}"], cwd=ROOT, check=True)
    extra = ["--eval_sequences=32"] if args.quick else []
    if args.quick and args.study == "ablations":
        steps = QUICK_STUDY["max_iters"]
        extra += [f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--eval_interval=2", "--warmup_iters=2"]
    runs, rows, table = (ablations if args.study == "ablations" else scale)(args, out, data_dir, extra)
    with open(os.path.join(out, f"{args.study}.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, f"{args.study}.json"), "w") as f:
        json.dump(dict(rows=rows, runs=[portable(r, out) for r in runs]), f, indent=1)
    figures = [scale_figure(rows, os.path.join(out, "scale.png"))] if args.study == "scale" else []
    print("\n" + table)
    print(f"fairness checks passed: {len(runs)} runs" + (f"; figure: {figures[0]}" if figures else ""))


def given_runs(run_dirs):
    """--runs: finished runs grouped by optimizer, each group sorted by seed."""
    runs = [load_run(d) for d in run_dirs]
    best_runs = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        best_runs.setdefault(r["name"], []).append(r)
    if "adamw" not in best_runs:
        raise plot.MetricsError("--runs needs an AdamW run (optimizer_name=adamw) to compare against")
    adamw_seeds = {r["seed"] for r in best_runs["adamw"]}
    for name, group in best_runs.items():
        if len({r["seed"] for r in group}) < len(group):
            raise plot.MetricsError(f"--runs: two {name} runs share a seed; give one setting per optimizer")
        unpaired = sorted({r["seed"] for r in group} - adamw_seeds)
        if unpaired:
            raise plot.MetricsError(f"--runs: {name} has seeds {unpaired} with no AdamW run of the same seed "
                                    f"to pair with (AdamW seeds: {sorted(adamw_seeds)})")
    return runs, {"adamw": best_runs.pop("adamw"), **best_runs}


def portable(run, out):
    """A run's summary for results.json: without its config (shared_config holds it), and with its folders
    relative to --out, so that the file names no path of the machine that made it."""
    record = {k: v for k, v in run.items() if k != "config"}
    record["dir"] = os.path.relpath(run["dir"], out)
    if record.get("data") and "dir" in record["data"]:
        record["data"] = {**record["data"], "dir": os.path.relpath(record["data"]["dir"], out)}
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "compare"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (1 thread each)")
    parser.add_argument("--quick", action="store_true", help="tiny budget, 2 settings per optimizer, 2 seeds")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    parser.add_argument("--runs", nargs="+", metavar="OUT_DIR", help="report on these finished runs instead")
    parser.add_argument("--study", choices=("compare", "ablations", "scale"), default="compare",
                        help="compare: the optimizer comparison; ablations: Sophia-G's variants; scale: AdamW, "
                             "Sophia-G and Muon at three model sizes")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    t0 = time.perf_counter()
    try:
        if args.study != "compare":
            if args.runs:
                raise plot.MetricsError("--runs reports a comparison; it does not combine with --study")
            if args.fresh:
                shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)
            os.makedirs(out, exist_ok=True)
            run_study(args, out)
            print(f"total wall time {time.perf_counter() - t0:.0f} s")
            return
        if args.runs:
            runs, best_runs = given_runs(args.runs)
            sweep = []
        else:
            if args.fresh:
                shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)
            os.makedirs(out, exist_ok=True)
            runs, best_runs, sweep = study(args, out)
        cfg = check_fairness(runs)
    except (plot.MetricsError, AssertionError) as err:
        sys.exit(f"error: {err}")
    rows = analyse(best_runs)
    table = markdown(rows, cfg)
    os.makedirs(out, exist_ok=True)
    figures = [sweep_figure(sweep, os.path.join(out, "sweep.png"))] if sweep else []
    figures += plot.plot_runs([group[0]["dir"] for group in best_runs.values()], out,
                              labels=[f"{name} lr={group[0]['lr']:g}" + ("" if group[0]["rho"] is None
                                                                         else f" rho={group[0]['rho']:g}")
                                      for name, group in best_runs.items()])
    open(os.path.join(out, "results.md"), "w").write(table)
    json.dump(dict(rows=rows, runs=[portable(r, out) for r in runs], shared_config=cfg),
              open(os.path.join(out, "results.json"), "w"), indent=1)
    print("\n" + table)
    print(f"fairness checks passed: {len(runs)} runs share data, init per seed, model, schedule "
          f"shape, clipping, precision and token budget")
    print(f"figures: {', '.join(os.path.relpath(f, ROOT) for f in figures)}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
