"""
A fair comparison of AdamW, Lion, Sophia-G, Sophia-H and Muon at a scale a 2-core CPU can run, and the paper's
headline metric: how many steps each optimizer needs to reach tuned AdamW's final validation loss.

    python bench/compare_optimizers.py                  # the full comparison into bench/results/compare (git-ignored)
    python bench/compare_optimizers.py --out assets/compare --runs_dir assets/runs   # the committed one
    python bench/compare_optimizers.py --quick          # a short smoke version (used by the tests)
    python bench/compare_optimizers.py --study=curvature --out assets/curvature --runs_dir assets/runs
    python bench/compare_optimizers.py --study=tokens --arms "1x tokens" "4x tokens" --plan   # what it would run
    python bench/compare_optimizers.py --runs out-gpt2-small-adam out-gpt2-small-sophiag --out cmp
                                                        # the same report for runs made elsewhere (e.g. GPT-2 on GPUs)

Protocol (every run goes through train.py with config/parts/compare_tiny.py; only the optimizer's own
hyperparameters differ within a setting, and the script asserts it):
  1. sweep: each optimizer over its learning-rate grid (and rho for Sophia), seed 0;
  2. seeds: each optimizer's best setting (lowest final val loss) with the other seeds;
  3. report: final val loss mean ± std over seeds; the paper's headline metric, paired with AdamW's run of
     the same seed (same init, same batches): the steps AdamW needs over the steps the optimizer needs to
     reach the loss both reach (interpolated between evaluations), with a 95% t-interval over seeds, the
     same in wall time, and the wall-clock per run.
Runs execute `--jobs` at a time, one CPU thread each, into --runs_dir (default OUT/runs). A run that finished earlier
with the same command is reused, so studies given one runs folder share the runs they have in common: every study's
main setting is the comparison's. Results go to --out: results.json (each run with the command that reproduces it
alone, and the Python, torch, CPU and commit behind it), results.md (the table), sweep.png and, through plot.py,
val_loss.png, train_loss.png and win_clip_rate.png. With --runs, steps 1-2 are skipped: the given out_dirs (any
optimizers, any seeds, an AdamW run among them) go through the same fairness checks and report, grouped by
optimizer_name.

--study=...: the same protocol over settings ("arms") that differ from the main one, each optimizer re-tuned in each
and paired by seed with that setting's AdamW; the table gives per setting the final-loss gap to AdamW in nats and the
speed-up in steps and in FLOPs, with 95% CIs, and Sophia's share of clipped coordinates. Each prints its planned runs
and time first (--plan: only that), and writes <study>.md, <study>.json and <study>.png.
  ablations  Sophia-G as tuned (TUNED) with bias correction, k = 1, a quarter Hessian batch; and at twice the steps
  warmup     AdamW and Sophia-G with warmup at 10% (the main setting), 40% and 80% of the steps
  tokens     1x, 4x and 16x the main setting's 1,024 tokens per step, at the same 400 steps
  curvature  Sophia-G's rho grid extended below 0.01, and its control with h held at 0 (every coordinate clipped:
             sign momentum with Sophia-G's betas), against AdamW
  scale      AdamW, Sophia-G and Muon at 0.12M, 0.83M and 4.8M parameters with budgets that grow with the size
             (Muon not at 4.8M), and AdamW and Sophia-G at 4.8M with the warmup study's best warmup, 80%
--arms picks some of a study's settings. --quick runs any of them on a tiny budget, one grid point per optimizer.
"""

import argparse
import concurrent.futures
import dataclasses
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
# defaults, optimizers.py's OPTIMIZER_DEFAULTS; the grids bracket each optimizer's best in earlier sweeps (lr 1.5e-4 for
# Lion, 1e-3 for Sophia-G and 1.25e-4 for Sophia-H lost by 0.1-0.7 nats there and were dropped).
STUDY = {
    "adamw": ("adamw", [(lr, None) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]),
    "lion": ("lion", [(lr, None) for lr in (3e-4, 6e-4, 1.2e-3)]),
    "sophiag": ("sophiag", [(lr, rho) for lr in (1.25e-4, 2.5e-4, 5e-4) for rho in (0.01, 0.05, 0.5)]),
    "sophiah": ("sophiah", [(lr, rho) for lr in (2.5e-4, 5e-4, 1e-3) for rho in (0.1, 1.0, 10.0)]),
    # Muon's match_rms_adamw scaling carries AdamW's lr over (muon.py): AdamW's grid shifted up, since its best sat
    # at the top of AdamW's (8e-3) in the scale study, and widened to 3.2e-2 when it sat at 1.6e-2
    "muon": ("muon", [(lr, None) for lr in (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)]),
}
SEEDS = (0, 1, 2)
QUICK = dict(max_iters=20, eval_interval=5, seeds=(0, 1),
             grids={"adamw": [(4e-3, None)], "lion": [(6e-4, None)], "sophiag": [(2.5e-4, 0.05)],
                    "sophiah": [(1e-3, 0.1)], "muon": [(4e-3, None)]})
REUSE_FINISHED = True     # --fresh: False
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run_name(name, lr, rho, seed, tag=""):
    return f"{name}{tag}_lr{lr:g}" + (f"_rho{rho:g}" if rho is not None else "") + f"_seed{seed}"


def run_command(runs_dir, name, lr, rho, seed, extra, tag="", own=()):
    """(the run's folder, its exact command as run from the repository root). `own`: this run's extra settings
    (a study's variant, e.g. --hess_interval=1), named by `tag` in its folder and its summary."""
    run_dir = os.path.join(runs_dir, run_name(name, lr, rho, seed, tag))
    args = ["python", "train.py", BASE_CONFIG, f"--out_dir={repo_path(run_dir)}",
            f"--data_dir={repo_path(os.path.join(runs_dir, 'data'))}", f"--optimizer_name={STUDY[name][0]}",
            f"--learning_rate={lr}", f"--seed={seed}", "--threads=1", *extra, *own]
    return run_dir, args + ([f"--rho={rho}"] if rho is not None else [])


def finished(run_dir, command):
    """The run's wall time if it finished earlier with this very command (and --fresh was not given), else None."""
    summary_file = os.path.join(run_dir, "summary.json")
    if REUSE_FINISHED and os.path.exists(summary_file):
        done = json.load(open(summary_file))
        if done.get("command") == command:
            return done["wall_s"]
    return None


def train_run(runs_dir, name, lr, rho, seed, extra, tag="", own=()):
    """One training run in its own process and one CPU thread; a finished run of the same command is reused.
    Returns its summary, with the command that reproduces it alone."""
    run_dir, args = run_command(runs_dir, name, lr, rho, seed, extra, tag, own)
    command = " ".join(args)
    wall = finished(run_dir, command)
    if wall is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"run {run_dir} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        for stale in os.listdir(run_dir):   # the comparison needs metrics only; checkpoints just take disk
            if stale.endswith(".pt"):
                os.remove(os.path.join(run_dir, stale))
        json.dump(dict(command=command, wall_s=wall), open(os.path.join(run_dir, "summary.json"), "w"))
    return dict(load_run(run_dir), wall_s=wall, tag=tag, command=command)


def runs_dir(args, out):
    return os.path.abspath(args.runs_dir) if args.runs_dir else os.path.join(out, "runs")


def repo_path(path):
    """A path as the recorded commands give it: relative to the repository root, where they run, if it lies in the
    repository (as assets/runs does), else absolute."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(os.path.join(ROOT, "")) else path


def load_run(run_dir):
    """A finished run's summary from its metrics.jsonl: its settings, val-loss curve and timings."""
    train_rows, eval_rows, info = plot.load_metrics(run_dir)
    if not eval_rows or "config" not in info:
        raise plot.MetricsError(f"{run_dir}: no evaluation or run record in its metrics.jsonl")
    cfg = info["config"]
    sophia = cfg["optimizer_name"] in ("sophiag", "sophiah")
    iteration_ms = [r["iter_time_ms"] for r in train_rows if r.get("iter_time_ms") is not None]
    # Sophia's share of clipped coordinates, 1 - win rate, averaged over the logged steps after the first Hessian
    # refresh (over all of them if none came: h = 0 clips every coordinate, and the loop logs a win rate of 0)
    refreshed = [r for r in train_rows if r["iter"] >= cfg["hess_interval"] - 1] or train_rows
    return dict(name=cfg["optimizer_name"], lr=cfg["learning_rate"], rho=cfg["rho"] if sophia else None,
                seed=cfg["seed"], dir=run_dir, wall_s=None, train_s=train_rows[-1]["time"],
                cpu_s=train_rows[-1].get("cpu_time"), iterations=train_rows[-1]["iter"] + 1,
                median_iteration_ms=statistics.median(iteration_ms) if iteration_ms else None,
                final_val=eval_rows[-1]["val/loss"], curve=[(r["iter"], r["val/loss"]) for r in eval_rows],
                win_rate=train_rows[-1].get("train/win_rate"), config=cfg, init=info.get("init_sha256"),
                data=info.get("data"), code=info.get("code"),
                clip_share=1 - statistics.mean(r["train/win_rate"] for r in refreshed) if sophia else None)


def prepare_data(runs_dir):
    """The byte-level stdlib corpus every run trains on, written once into runs_dir/data."""
    data_dir = os.path.join(runs_dir, "data")
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={data_dir}"], cwd=ROOT, check=True)
    return data_dir


def run_all(jobs, tasks, runs_dir, extra):
    """The tasks, (name, lr, rho, seed[, tag, own]), `jobs` at a time; their summaries in the order of the tasks."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(train_run, runs_dir, *task[:4], extra, *task[4:]) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            print(f"  {os.path.basename(r['dir']):34s} "
                  f"final val {r['final_val']:.4f}  "
                  f"wall {r['wall_s']:5.1f} s" + (f"  win_rate {r['win_rate']:.3f}" if r["win_rate"] is not None
                                                  else ""), flush=True)
    return [future.result() for future in futures]


def data_identity(run):
    """What a run trained and evaluated on: the token counts of its train and val splits (not the folder they lay
    in, which differs between checkouts of the same data)."""
    return {k: v for k, v in (run["data"] or {}).items() if k != "dir"}


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
        assert data_identity(r) == data_identity(runs[0]), f"{r['dir']} trained on other data"
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


def plus_minus(value, half_width, unit="", digits=2):
    return f"{value:.{digits}f}{unit}" + (" (one seed)" if half_width is None else f" ± {half_width:.{digits}f}")


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


def grid_edges(grid, point):
    """Which of (lr, rho) of the chosen grid point sit at an edge of a grid that has more than one value."""
    edges = []
    for i, key in enumerate(("lr", "rho")):
        values = sorted({setting[i] for setting in grid if setting[i] is not None})
        if len(values) > 1 and point[i] in (values[0], values[-1]):
            edges.append(key)
    return edges


@dataclasses.dataclass
class Variant:
    """An optimizer in a study: its grid of (learning_rate, rho or None), and its own flags, named by tag."""
    name: str                   # the optimizer, a key of STUDY
    grid: list
    tag: str = ""               # e.g. "_h0": runs named apart from the optimizer's plain ones
    args: tuple = ()


@dataclasses.dataclass
class Arm:
    """A setting of a study (e.g. a longer warmup): its flags over the base config, named by tag, and its variants,
    {label: Variant}, among them "adamw", the baseline. The main setting has no tag and no flags, so that every
    study shares its runs (and the comparison's) through one runs folder."""
    label: str
    variants: dict
    tag: str = ""
    args: tuple = ()

    def task(self, label, point, seed):
        v = self.variants[label]
        return (v.name, point[0], point[1], seed, self.tag + v.tag, [*self.args, *v.args])


def tune(jobs, runs_dir, extra, arms, seeds, plan_only=False):
    """Each arm's variants over their grids at seeds[0], then each one's best (lowest final val loss) at the other
    seeds. Returns (every run, {(arm label, variant label): [the best setting's runs by seed]}, {same: best point});
    each run is labelled with its arm and variant."""
    sweep = [(arm, label, point) for arm in arms for label, v in arm.variants.items() for point in v.grid]
    later = [arm.task(label, v.grid[0], seed) for arm in arms for label, v in arm.variants.items()
             for seed in seeds[1:]]
    print_plan([arm.task(label, point, seeds[0]) for arm, label, point in sweep] + later, runs_dir, jobs, extra)
    if plan_only:
        return None
    print(f"sweep: {len(sweep)} runs, seed {seeds[0]}", flush=True)
    runs = run_all(jobs, [arm.task(label, point, seeds[0]) for arm, label, point in sweep], runs_dir, extra)
    best = {}
    for (arm, label, point), r in zip(sweep, runs):
        r.update(arm=arm.label, variant=label)
        if (arm.label, label) not in best or r["final_val"] < best[arm.label, label][1]["final_val"]:
            best[arm.label, label] = (point, r)
    for arm in arms:
        for label, v in arm.variants.items():
            point = best[arm.label, label][0]
            for key in grid_edges(v.grid, point):
                print(f"note: {arm.label}, {label}: the best {key} {point[('lr', 'rho').index(key)]:g} is at the "
                      f"edge of its grid")
    more = [(arm, label, seed) for arm in arms for label in arm.variants for seed in seeds[1:]]
    print(f"seeds: best settings x seeds {list(seeds[1:])}", flush=True)
    again = run_all(jobs, [arm.task(label, best[arm.label, label][0], seed) for arm, label, seed in more],
                    runs_dir, extra)
    chosen = {key: [r] for key, (_, r) in best.items()}
    for (arm, label, _), r in zip(more, again):
        r.update(arm=arm.label, variant=label)
        chosen[arm.label, label].append(r)
    return runs + again, chosen, {key: point for key, (point, _) in best.items()}


def study(args, runs_dir):
    """The comparison: every optimizer of STUDY in one arm, the base config.
    Returns (every run, {name: [best setting's runs by seed]}, the sweep)."""
    prepare_data(runs_dir)
    grids = QUICK["grids"] if args.quick else {name: grid for name, (_, grid) in STUDY.items()}
    arm = Arm("main", {name: Variant(name, grid) for name, grid in grids.items()})
    seeds = QUICK["seeds"] if args.quick else SEEDS
    runs, chosen, _ = tune(args.jobs, runs_dir, quick_args(args.quick), [arm], seeds)
    return runs, {name: chosen["main", name] for name in grids}, [r for r in runs if r["seed"] == seeds[0]]


def quick_args(quick):
    """--quick's budget (the same settings, fewer steps and evaluation sequences); none for the full studies."""
    steps = QUICK["max_iters"]
    return [f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={QUICK['eval_interval']}",
            f"--warmup_iters={steps // 10}", "--eval_sequences=32"] if quick else []


# ----------------------------------------------------------------------------------------------------------
# --study=...: further questions on the same loop, sampler and fairness checks, each a list of arms (tune())

TUNED = {"adamw": (4e-3, None), "sophiag": (2.5e-4, 0.05)}   # the comparison's best (assets/compare/results.md)
MAIN_STEPS = 400                                              # config/parts/compare_tiny.py's max_iters


def ablation_arms(quick):
    """Sophia-G at its tuned setting and its variants (bias correction, k = 1, a quarter Hessian batch), and both at
    twice the steps, where each one's lr is swept again (Sophia-G's at its tuned rho)."""
    steps = QUICK["max_iters"] if quick else MAIN_STEPS
    tuned = {name: [point] for name, point in TUNED.items()}
    variants = {"adamw": Variant("adamw", tuned["adamw"]), "sophiag": Variant("sophiag", tuned["sophiag"]),
                "sophiag_bias_corrected": Variant("sophiag", tuned["sophiag"], "_bias_corrected",
                                                  ("--hessian_bias_correction=True",)),
                "sophiag_k1": Variant("sophiag", tuned["sophiag"], "_k1", ("--hess_interval=1",)),
                "sophiag_quarter_hessian": Variant("sophiag", tuned["sophiag"], "_quarter_hessian",
                                                   ("--hess_total_bs=4",))}
    rho = TUNED["sophiag"][1]
    sophia_lrs = sorted({lr for lr, _ in STUDY["sophiag"][1]})
    long = Arm(f"{2 * steps} steps", {"adamw": Variant("adamw", tuned["adamw"] if quick else STUDY["adamw"][1]),
                                      "sophiag": Variant("sophiag", tuned["sophiag"] if quick else
                                                         [(lr, rho) for lr in sophia_lrs])},
               "_2x_steps", (f"--max_iters={2 * steps}", f"--lr_decay_iters={2 * steps}"))
    return [Arm(f"{steps} steps", variants), long]


# the warmup study: 10% (the main setting), 40% and 80% of the steps; each optimizer re-tuned at each. The lr grids
# reach 1.6e-2 for AdamW and 1e-3 for Sophia-G: in the first grids AdamW's best at 40% (8e-3) and Sophia-G's at 80%
# (5e-4) sat at the top
WARMUP_PERCENTS = (10, 40, 80)
WARMUP_GRIDS = {"adamw": [(lr, None) for lr in (2e-3, 4e-3, 8e-3, 1.6e-2)],
                "sophiag": [(lr, rho) for lr in (1.25e-4, 2.5e-4, 5e-4, 1e-3) for rho in (0.01, 0.05)]}


def warmup_arms(quick):
    steps, arms = QUICK["max_iters"] if quick else MAIN_STEPS, []
    for percent in WARMUP_PERCENTS:
        if percent == 10:       # the base config's 40 of 400 steps: the comparison's runs
            arms.append(Arm("warmup 10%", {name: Variant(name, STUDY[name][1]) for name in ("adamw", "sophiag")}))
        else:
            arms.append(Arm(f"warmup {percent}%", {name: Variant(name, grid) for name, grid in WARMUP_GRIDS.items()},
                            f"_warm{percent}", (f"--warmup_iters={steps * percent // 100}",)))
    return arms


# the tokens-per-step study: 1x (the main setting, 16 sequences of 64 tokens), 4x and 16x at the same 400 steps; the
# Hessian batch follows total_bs (hess_total_bs is derived from it), one micro-batch per step as at 1x. The lr grids
# bracket the 1x best (down to 2e-3 and 1.25e-4: at 4x both bests first sat at the bottom); Sophia-G's rho stays at
# its 1x best, 0.05, since rho moves the 1x loss by < 0.03 nats from 0.01 to 0.5 at the best lr (curvature study)
TOKEN_SCALES = (1, 4, 16)
TOKEN_GRIDS = {scale: {"adamw": [(lr, None) for lr in (2e-3, 4e-3, 8e-3, 1.6e-2)],
                       "sophiag": [(lr, 0.05) for lr in (1.25e-4, 2.5e-4, 5e-4, 1e-3)]} for scale in TOKEN_SCALES[1:]}


def token_arms(quick):
    arms = [Arm("1x tokens", {name: Variant(name, STUDY[name][1]) for name in ("adamw", "sophiag")})]
    for scale in TOKEN_SCALES[1:2] if quick else TOKEN_SCALES[1:]:
        sequences = 16 * scale
        arms.append(Arm(f"{scale}x tokens", {name: Variant(name, grid) for name, grid in TOKEN_GRIDS[scale].items()},
                        f"_{scale}x_tokens", (f"--total_bs={sequences}", f"--batch_size={sequences}")))
    return arms


# the curvature study: Sophia-G's rho grid extended below 0.01, and its control: the same update with h held at 0
# (no Hessian refresh in the run), which clips every coordinate: sign momentum with Sophia-G's betas and decay
SIGN_CONTROL = ("--hess_interval=1000000",)
CURVATURE_RHOS = (0.001, 0.003, 0.01, 0.05, 0.5)


def curvature_arms(quick):
    lrs = sorted({lr for lr, _ in STUDY["sophiag"][1]})
    return [Arm("main", {"adamw": Variant("adamw", STUDY["adamw"][1]),
                         "sophiag": Variant("sophiag", [(lr, rho) for lr in lrs for rho in CURVATURE_RHOS]),
                         "sign_momentum": Variant("sophiag", [(lr, None) for lr in (*lrs, 2 * lrs[-1])], "_h0",
                                                  SIGN_CONTROL)})]


# the scale study: model sizes from 0.12M to 4.8M non-embedding parameters (40x), each with a token budget that grows
# with it (steps x 1,024 tokens); per size and optimizer an lr grid around its best, widened where a best sat at an
# edge (AdamW and Sophia-G move down with size, Muon up); Sophia-G's rho is the main setting's best, 0.05. Muon is left
# out at L6d256: torch's Muon runs Newton-Schulz in bf16, which CPUs without bf16 instructions (AVX-512) multiply
# about 30x slower than fp32 (docs/results.md), so that one run would take hours on such a machine.
SCALE_SIZES = {"L2d64": (dict(n_layer=2, n_head=2, n_embd=64, max_iters=200),
                         {"adamw": (2e-3, 4e-3, 8e-3), "sophiag": (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3),
                          "muon": (4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2)}),
               "L4d128": (None, {}),       # the main setting: the comparison's grids and runs
               "L6d256": (dict(n_layer=6, n_head=8, n_embd=256, max_iters=600),
                          {"adamw": (1e-3, 2e-3, 4e-3), "sophiag": (6.25e-5, 1.25e-4, 2.5e-4)})}
# the warmup study's best warmup (80% of the steps, assets/warmup) at the largest size, both optimizers re-tuned; at
# L4d128 it moved Sophia-G's best lr up one step and left AdamW's
SCALE_WARMUP = ("L6d256", 80, {"adamw": (1e-3, 2e-3, 4e-3), "sophiag": (1.25e-4, 2.5e-4, 5e-4)})
QUICK_SIZES = {"L1d32": dict(n_layer=1, n_head=2, n_embd=32, max_iters=10)}


def size_args(size, quick=False, warmup_percent=10):
    steps = size["max_iters"]
    return (f"--n_layer={size['n_layer']}", f"--n_head={size['n_head']}", f"--n_embd={size['n_embd']}",
            f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--warmup_iters={steps * warmup_percent // 100}",
            f"--eval_interval={QUICK['eval_interval'] if quick else max(1, steps // 16)}")


def scale_arms(quick):
    """Per size, AdamW, Sophia-G and Muon over their grids (the main size's runs are the comparison's); then the
    largest size at the best warmup, where Sophia-G is labelled apart (sophiag_warmN) to be plotted apart."""
    arms = []
    for tag, (size, grids) in SCALE_SIZES.items():
        if size is None:
            arms.append(Arm(tag, {name: Variant(name, STUDY[name][1]) for name in ("adamw", "sophiag", "muon")}))
        elif not quick:
            arms.append(Arm(tag, {name: Variant(name, [(lr, TUNED["sophiag"][1] if name == "sophiag" else None)
                                                       for lr in lrs]) for name, lrs in grids.items()},
                            f"_{tag}", size_args(size)))
    if quick:
        return arms + [Arm(tag, dict(arms[0].variants), f"_{tag}", size_args(size, quick))
                       for tag, size in QUICK_SIZES.items()]
    tag, percent, grids = SCALE_WARMUP
    return arms + [Arm(f"{tag} warmup {percent}%",
                       {"adamw": Variant("adamw", [(lr, None) for lr in grids["adamw"]]),
                        f"sophiag_warm{percent}": Variant("sophiag", [(lr, TUNED["sophiag"][1])
                                                                      for lr in grids["sophiag"]])},
                       f"_{tag}_warm{percent}", size_args(SCALE_SIZES[tag][0], warmup_percent=percent))]


STUDIES = {"ablations": ablation_arms, "warmup": warmup_arms, "tokens": token_arms, "curvature": curvature_arms,
           "scale": scale_arms}


def quick_arms(arms):
    """--quick: each variant on one point of its grid (the tuned one where the grid has it)."""
    for arm in arms:
        for v in arm.variants.values():
            tuned = [p for p in v.grid if p == TUNED.get(v.name) or p == QUICK["grids"].get(v.name, [None])[0]]
            v.grid = tuned[:1] or v.grid[len(v.grid) // 2:][:1]
    return arms


def arm_rows(arms, runs, chosen, points, vocab):
    """Per arm and variant: its best setting, final val loss, and, paired by seed with the arm's AdamW, the speed-up
    in steps and in FLOPs and the final-loss gap in nats, each with its 95% CI; Sophia's share of clipped
    coordinates. Each arm's runs pass the fairness checks among themselves."""
    rows = []
    for arm in arms:
        check_fairness([r for r in runs if r["arm"] == arm.label])
        adamw = {r["seed"]: r for r in chosen[arm.label, "adamw"]}
        for label, v in arm.variants.items():
            group = sorted(chosen[arm.label, label], key=lambda r: r["seed"])
            cfg, point = group[0]["config"], points[arm.label, label]
            steps = [speedup(adamw[r["seed"]]["curve"], r["curve"]) for r in group]
            flop_ratio = flops_per_step(cfg, "adamw", vocab) / flops_per_step(cfg, v.name, vocab)
            finals = [r["final_val"] for r in group]
            clipped = [r["clip_share"] for r in group if r.get("clip_share") is not None]
            rows.append(dict(arm=arm.label, variant=label, optimizer=v.name, lr=point[0], rho=point[1],
                             edge=grid_edges(v.grid, point), seeds=[r["seed"] for r in group],
                             params=model_flops(cfg, vocab)[1], tokens=cfg["max_iters"] * cfg["total_bs"] *
                             cfg["block_size"], final_mean=statistics.mean(finals),
                             final_std=statistics.stdev(finals) if len(finals) > 1 else None,
                             speedup_per_seed=steps, speedup=mean_ci(steps),
                             flops_speedup=mean_ci([x * flop_ratio for x in steps]),
                             gap=mean_ci([r["final_val"] - adamw[r["seed"]]["final_val"] for r in group]),
                             clip_share=statistics.mean(clipped) if clipped else None))
    return rows


def arm_table(rows, seeds):
    lines = [f"Per setting, each optimizer at its best point of its grid (seed {seeds[0]}), then seeds {list(seeds)}; "
             f"paired by seed with that setting's AdamW: the final-loss gap (its final val loss − AdamW's) and the "
             f"speed-up (steps AdamW needs / steps it needs to reach the loss both reach; in FLOPs, Sophia-G's Hessian "
             f"pass and Muon's Newton-Schulz counted), with 95% t-intervals. * the value sits at an edge of its grid. "
             f"Clipped: Sophia's share of clipped coordinates (1 − win rate), mean over the run.", "",
             "| setting | optimizer | best lr | ρ | final val loss (mean ± std) | gap to AdamW, nats (95% CI) "
             "| speed-up in steps (95% CI) | speed-up in FLOPs (95% CI) | clipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = f"{r['lr']:g}" + ("*" if "lr" in r["edge"] else "")
        rho = "" if r["rho"] is None else f"{r['rho']:g}" + ("*" if "rho" in r["edge"] else "")
        std = "n/a" if r["final_std"] is None else f"{r['final_std']:.4f}"
        clipped = "" if r["clip_share"] is None else f"{r['clip_share']:.3f}"
        lines.append(f"| {r['arm']} | {r['variant']} | {lr} | {rho} | {r['final_mean']:.4f} ± {std} "
                     f"| {plus_minus(*r['gap'], digits=3)} | {plus_minus(*r['speedup'], 'x')} "
                     f"| {plus_minus(*r['flops_speedup'], 'x')} | {clipped} |")
    return "\n".join(lines) + "\n"


def against_control(runs, control_runs):
    """An optimizer's runs against another's (e.g. Sophia-G against its sign-momentum control), paired by seed: the
    final-loss difference in nats and the speed-up in steps, each with its 95% CI."""
    control = {r["seed"]: r for r in control_runs}
    return dict(gap=mean_ci([r["final_val"] - control[r["seed"]]["final_val"] for r in runs]),
                speedup=mean_ci([speedup(control[r["seed"]]["curve"], r["curve"]) for r in runs]))


def sweep_table(runs):
    """Every seed-0 run of a study: its final val loss and, for Sophia, its share of clipped coordinates."""
    lines = ["| setting | optimizer | lr | ρ | final val loss | clipped |", "|---|---|---|---|---|---|"]
    first = min(r["seed"] for r in runs)
    for r in sorted((r for r in runs if r["seed"] == first), key=lambda r: (r["arm"], r["variant"], r["lr"],
                                                                             r["rho"] or 0)):
        rho = "" if r["rho"] is None or r["variant"] == "sign_momentum" else f"{r['rho']:g}"
        clipped = "" if r["clip_share"] is None else f"{r['clip_share']:.3f}"
        lines.append(f"| {r['arm']} | {r['variant']} | {r['lr']:g} | {rho} | {r['final_val']:.4f} | {clipped} |")
    return "\n".join(lines) + "\n"


def arm_figure(rows, path, by_params=False):
    """The speed-up in steps and the final-loss gap of each variant against AdamW, per setting (or against the
    number of parameters), with 95% CIs."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.6))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for ax, key, label, level in zip(fig.subplots(1, 2), ("speedup", "gap"),
                                     ("AdamW's steps / its steps", "final val loss − AdamW's (nats)"), (1.0, 0.0)):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "adamw"):
            points = sorted((r["params"] if by_params else arms.index(r["arm"]), *r[key]) for r in rows
                            if r["variant"] == variant)
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=[0.0 if e is None else e for e in err], marker="o", capsize=3, label=variant)
        ax.axhline(level, color="grey", lw=0.8)
        if by_params:
            log_axes(ax, "parameters", label)
        else:
            ax.set_xticks(range(len(arms)), arms)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


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


def reference_times():
    """The comparison's per-run times (assets/compare/results.json), the basis of the time estimates: a 400-step
    AdamW and Sophia-G run of the main setting, training seconds and the rest of their wall time (start-up and
    evaluation). Other sizes, budgets and optimizers are scaled by their FLOPs per step."""
    try:
        rows = json.load(open(os.path.join(ROOT, "assets", "compare", "results.json")))["rows"]
        return dict(train_s=rows["adamw"]["train_s"], overhead_s=rows["adamw"]["wall_s"] - rows["adamw"]["train_s"],
                    sophiag_train_s=rows["sophiag"]["train_s"])
    except (OSError, KeyError, TypeError, ValueError):
        return dict(train_s=27.5, overhead_s=9.0, sophiag_train_s=31.3)     # an idle 2-core machine, 2 jobs


def estimate_seconds(tasks, vocab, jobs, extra=()):
    """The planned tasks' wall time on `jobs` cores, from reference_times() scaled by FLOPs per step and steps."""
    times = reference_times()
    ref = dict(n_layer=4, n_head=4, n_embd=128, total_bs=16, block_size=64, max_iters=MAIN_STEPS, hess_total_bs=16,
               hess_interval=10)
    ref_flops = flops_per_step(ref, "adamw", vocab) * MAIN_STEPS
    sophia_factor = times["sophiag_train_s"] / times["train_s"] / (
        flops_per_step(ref, "sophiag", vocab) / flops_per_step(ref, "adamw", vocab))   # its step's own overhead
    total = 0.0
    for task in tasks:
        cfg = dict(ref, hess_total_bs=None)          # None: derived from total_bs, as train.py does
        for arg in [*extra, *(task[5] if len(task) > 5 else ())]:     # as train.py reads them: the last wins
            key, value = arg.lstrip("-").split("=")
            if key in ref:
                cfg[key] = int(float(value))
        cfg["hess_total_bs"] = cfg["hess_total_bs"] or cfg["total_bs"]
        flops = flops_per_step(cfg, task[0], vocab) * cfg["max_iters"] * (sophia_factor if task[0] == "sophiag"
                                                                           else 1.0)
        total += times["overhead_s"] + times["train_s"] * flops / ref_flops
    return total / jobs


def print_plan(tasks, runs_dir, jobs, extra):
    """The planned runs and their estimated wall time (runs that finished earlier with the same command excluded)."""
    vocab = padded_vocab(os.path.join(runs_dir, "data"))
    todo = [t for t in tasks if finished(*command_line(runs_dir, t, extra)) is None]
    print(f"planned: {len(tasks)} runs, {len(tasks) - len(todo)} of them finished earlier; the other {len(todo)} "
          f"take about {estimate_seconds(todo, vocab, jobs, extra) / 60:.1f} min with --jobs={jobs} (from the "
          f"comparison's per-run times, scaled by FLOPs)", flush=True)


def padded_vocab(data_dir):
    """The model's vocabulary for the data in data_dir: its token count padded to a multiple of 64, as train.py pads."""
    from dataloader import TokenDataset
    return -(-TokenDataset(data_dir, 64).vocab_size // 64) * 64


def command_line(runs_dir, task, extra):
    run_dir, args = run_command(runs_dir, *task[:4], extra, *task[4:])
    return run_dir, " ".join(args)


def environment():
    """What made a results folder: Python, torch, the CPU and the commit (the runs record their code's hashes)."""
    import platform
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    edited = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "*.py"], cwd=ROOT).returncode != 0
    return dict(python=platform.python_version(), torch=torch.__version__, cpu=cpu, cores=os.cpu_count(),
                commit=(commit.stdout.strip() + (" with uncommitted edits" if edited else "")) or None)


def environment_line(env):
    return (f"Made with Python {env['python']}, torch {env['torch']} on {env['cpu']} ({env['cores']} cores), "
            f"commit {env['commit']}.")


def run_study(args, out):
    """--study=ablations, warmup, tokens, curvature or scale: its arms tuned and seeded (tune()), the fairness checks
    per arm, the table (stdout and <study>.md), every run with its command (<study>.json) and <study>.png."""
    runs_folder = runs_dir(args, out)
    data_dir = prepare_data(runs_folder)
    arms = STUDIES[args.study](args.quick)
    if args.arms:
        unknown = set(args.arms) - {arm.label for arm in arms}
        if unknown:
            raise plot.MetricsError(f"--arms {sorted(unknown)}: {args.study}'s settings are "
                                    f"{[arm.label for arm in arms]}")
        arms = [arm for arm in arms if arm.label in args.arms]
    if args.quick:
        arms = quick_arms(arms)
    seeds = QUICK["seeds"] if args.quick else SEEDS
    extra = quick_args(args.quick)
    planned = tune(args.jobs, runs_folder, extra, arms, seeds, plan_only=args.plan)
    if planned is None:
        return
    runs, chosen, points = planned
    rows = arm_rows(arms, runs, chosen, points, padded_vocab(data_dir))
    env = environment()
    table = arm_table(rows, seeds) + "\n" + environment_line(env) + "\n"
    extra_rows = {}
    if args.study == "curvature":
        extra_rows["sophiag_against_control"] = against_control(chosen["main", "sophiag"],
                                                                chosen["main", "sign_momentum"])
        gap, steps = extra_rows["sophiag_against_control"]["gap"], extra_rows["sophiag_against_control"]["speedup"]
        table += (f"\nSophia-G against its sign-momentum control, paired by seed: final val loss "
                  f"{plus_minus(*gap, digits=3)} nats, speed-up in steps {plus_minus(*steps, 'x')} (95% CIs).\n"
                  f"\nEvery run at seed 0:\n\n" + sweep_table(runs))
    with open(os.path.join(out, f"{args.study}.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, f"{args.study}.json"), "w") as f:
        json.dump(dict(rows=rows, **extra_rows, runs=[portable(r, out) for r in runs], environment=env,
                       base_config=BASE_CONFIG, data_command=f"python data/stdlib/prepare.py "
                                                             f"--out_dir={repo_path(data_dir)}"), f, indent=1)
    figure = arm_figure(rows, os.path.join(out, f"{args.study}.png"), by_params=args.study == "scale")
    print("\n" + table)
    print(f"fairness checks passed: {len(runs)} runs; figure: {repo_path(figure)}")


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
    record["data"] = data_identity(run)       # where it lay: the command's --data_dir
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "compare"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (1 thread each)")
    parser.add_argument("--quick", action="store_true", help="tiny budget, 2 settings per optimizer, 2 seeds")
    parser.add_argument("--fresh", action="store_true", help="rerun runs that finished earlier")
    parser.add_argument("--runs_dir", help="where the runs go, default OUT/runs; studies given the same folder "
                                           "share the runs they have in common (the committed ones use assets/runs)")
    parser.add_argument("--runs", nargs="+", metavar="OUT_DIR", help="report on these finished runs instead")
    parser.add_argument("--study", choices=("compare", *STUDIES), default="compare",
                        help="compare: the optimizer comparison; ablations: Sophia-G's variants; warmup, tokens: "
                             "AdamW and Sophia-G re-tuned at each warmup, tokens per step; curvature: Sophia-G's rho "
                             "and its sign-momentum control; scale: AdamW, Sophia-G and Muon at three model sizes")
    parser.add_argument("--plan", action="store_true", help="print a study's planned runs and time, run nothing")
    parser.add_argument("--arms", nargs="+", metavar="SETTING",
                        help="run only these settings of the study (e.g. --arms '1x tokens' '4x tokens')")
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    global REUSE_FINISHED
    REUSE_FINISHED = not args.fresh
    t0 = time.perf_counter()
    try:
        if args.study != "compare":
            if args.runs:
                raise plot.MetricsError("--runs reports a comparison; it does not combine with --study")
            os.makedirs(out, exist_ok=True)
            run_study(args, out)
            print(f"total wall time {time.perf_counter() - t0:.0f} s")
            return
        if args.runs:
            runs, best_runs = given_runs(args.runs)
            sweep = []
        else:
            os.makedirs(out, exist_ok=True)
            runs, best_runs, sweep = study(args, runs_dir(args, out))
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
    env = environment()
    open(os.path.join(out, "results.md"), "w").write(table + "\n" + environment_line(env) + "\n")
    json.dump(dict(rows=rows, runs=[portable(r, out) for r in runs], shared_config=cfg, environment=env),
              open(os.path.join(out, "results.json"), "w"), indent=1)
    print("\n" + table)
    print(f"fairness checks passed: {len(runs)} runs share data, init per seed, model, schedule "
          f"shape, clipping, precision and token budget")
    print(f"figures: {', '.join(os.path.relpath(f, ROOT) for f in figures)}")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
