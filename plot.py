"""
Compare training runs from their metrics.jsonl files, without wandb.

    python plot.py out/sophiag out/adam out/lion --labels Sophia-G AdamW Lion --out plots/

Each run is a training out_dir (or its metrics.jsonl). Writes PNGs into --out:
    val_loss.png       validation loss vs iteration, vs training tokens, vs training wall time
    train_loss.png     training loss vs iteration (faint: as logged; solid: EMA-smoothed)
    win_clip_rate.png  train/win_rate (Sophia only) and train/clip_rate vs iteration
A figure is left out when no run has data for it. Runs are named by --labels, else by the "name" of
their run event, else by their directory.

    python plot.py --icl icl_medium.json --labels "AdamW 100K" "Lion 100K" "Sophia 100K" "AdamW 200K" --out plots/

draws the paper's Figure 6 instead, from eval.py --tasks=... --json files (each one result or a list of them):
    icl_superglue.png  grouped bars, one group per task plus the average, one bar per checkpoint: accuracy
                       (ReCoRD: exact match) with a one-standard-error bar
Checkpoints are named by --labels, else by "<optimizer_name> <iter_num>" from the JSON.

metrics.jsonl holds one JSON object per line with "iter" and "event" ("run", "train" or "eval").
A resumed run appends to the same file, so an iteration can appear twice: the last line wins.
Missing keys, null and NaN values are skipped point by point, and unreadable lines (a run killed
mid-write leaves a truncated last line) are skipped.
"""

import argparse
import json
import math
import os
import sys

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

METRICS_FILE = "metrics.jsonl"


class MetricsError(Exception):
    """A run's metrics cannot be used; the message names the file and what to do."""


def load_metrics(path):
    """Read a run's metrics -> (train_rows, eval_rows, run_info).

    path is a run's out_dir or its metrics.jsonl. train_rows and eval_rows are lists of dicts sorted by
    "iter", one per iteration (the last line logged for it wins). run_info is the last "run" event
    (with "name" and "config"), or {} when there is none.
    """
    is_file = os.path.isfile(path) or (path.endswith(".jsonl") and not os.path.isdir(path))
    file = path if is_file else os.path.join(path, METRICS_FILE)
    if not os.path.isfile(file):
        raise MetricsError(f"{file} not found: pass a training out_dir that holds {METRICS_FILE} "
                           f"(train.py writes it there from the first logged iteration)")
    rows = {"train": {}, "eval": {}}  # event -> iter -> row
    run_info, unreadable = {}, 0
    try:
        with open(file, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as error:
        raise MetricsError(f"cannot read {file}: {error.strerror or error}") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if not isinstance(event, dict):
            unreadable += 1
        elif event.get("event") == "run":
            run_info = event
        elif event.get("event") in rows and isinstance(event.get("iter"), int):
            rows[event["event"]][event["iter"]] = event
    if unreadable:
        print(f"warning: skipped {unreadable} unreadable line(s) in {file}", file=sys.stderr)
    train_rows, eval_rows = (sorted(rows[kind].values(), key=lambda row: row["iter"]) for kind in ("train", "eval"))
    return train_rows, eval_rows, run_info


def load_runs(run_paths, labels=None):
    """Load every run -> list of (label, train_rows, eval_rows); runs with nothing logged yet are left out."""
    if labels is not None and len(labels) != len(run_paths):
        raise ValueError(f"got {len(labels)} labels for {len(run_paths)} runs: give one label per run")
    runs = []
    for i, path in enumerate(run_paths):
        train_rows, eval_rows, run_info = load_metrics(path)
        run_dir = path if os.path.isdir(path) else os.path.dirname(path)
        label = labels[i] if labels else run_info.get("name") or os.path.basename(os.path.abspath(run_dir))
        if not train_rows and not eval_rows:
            print(f"warning: {path} has no train or eval events yet; it is left out", file=sys.stderr)
            continue
        runs.append((label, train_rows, eval_rows))
    if not runs:
        raise MetricsError("none of the runs has train or eval events yet: plot again once they have logged")
    return runs


def is_finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(rows, y_key, x_key="iter"):
    """(xs, ys) over the rows where both values are finite numbers."""
    points = [(row[x_key], row[y_key]) for row in rows if is_finite_number(row.get(x_key)) and is_finite_number(row.get(y_key))]
    return [x for x, _ in points], [y for _, y in points]


def smooth_ema(values, smooth):
    """Debiased EMA, as TensorBoard's slider: s_t = smooth·s_{t−1} + (1 − smooth)·y_t, divided by 1 − smooth^t."""
    smoothed, ema = [], 0.0
    for t, value in enumerate(values, start=1):
        ema = smooth * ema + (1 - smooth) * value
        smoothed.append(ema / (1 - smooth ** t))
    return smoothed


def first_non_finite_iter(rows, key):
    """First iteration whose value is NaN or ±inf (divergence), or None. A null or missing value is not divergence."""
    return next((row["iter"] for row in rows if isinstance(row.get(key), float) and not math.isfinite(row[key])), None)


def zoom_to_tail(ax, curves):
    """Loss curves fall from ~11 to ~3 in the first steps: fit the y-axis to what follows the first
    10% of each curve so the differences between runs stay visible."""
    tails = [ys[len(ys) // 10:] for ys in curves if ys]
    if tails:
        low, high = min(min(tail) for tail in tails), max(max(tail) for tail in tails)
        margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.1
        ax.set_ylim(low - margin, high + margin)


def time_unit(max_seconds):
    """A readable unit for the wall-time axis -> (name, seconds per unit)."""
    for name, seconds in (("hours", 3600), ("minutes", 60)):
        if max_seconds >= 2 * seconds:
            return name, seconds
    return "seconds", 1


def finish(fig, axes, path):
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no run logs this", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=120)
    return path


def plot_val_loss(runs, out_dir):
    curves = [(label, *(series(eval_rows, "val/loss", x) for x in ("iter", "tokens", "time")))
              for label, _, eval_rows in runs]
    if not any(by_iter[1] for _, by_iter, _, _ in curves):
        return None
    max_time = max((max(by_time[0]) for _, _, _, by_time in curves if by_time[0]), default=0)
    unit, seconds = time_unit(max_time)
    fig = Figure(figsize=(16, 4.5), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for i, (label, by_iter, by_tokens, by_time) in enumerate(curves):
        style = dict(color=f"C{i % 10}", label=label, marker="o", markersize=3)
        axes[0].plot(*by_iter, **style)
        axes[1].plot(*by_tokens, **style)
        axes[2].plot([t / seconds for t in by_time[0]], by_time[1], **style)
    axes[0].set(xlabel="iteration", ylabel="val/loss")
    axes[1].set(xlabel="training tokens")
    axes[1].xaxis.set_major_formatter(EngFormatter())
    axes[2].set(xlabel=f"training wall time ({unit}, eval excluded)")
    zoom_to_tail(axes[0], [by_iter[1] for _, by_iter, _, _ in curves])
    fig.suptitle("validation loss")
    return finish(fig, axes, os.path.join(out_dir, "val_loss.png"))


def plot_train_loss(runs, out_dir, smooth):
    if not any(series(train_rows, "train/loss")[1] for _, train_rows, _ in runs):
        return None
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    smoothed_curves = []
    for i, (label, train_rows, _) in enumerate(runs):
        iters, losses = series(train_rows, "train/loss")
        diverged_at = first_non_finite_iter(train_rows, "train/loss")
        if diverged_at is not None:
            label = f"{label} (non-finite loss from iter {diverged_at})"
        if smooth > 0:
            ax.plot(iters, losses, color=f"C{i % 10}", alpha=0.25, linewidth=0.8)
            losses = smooth_ema(losses, smooth)
        ax.plot(iters, losses, color=f"C{i % 10}", label=label)
        smoothed_curves.append(losses)
    ax.set(xlabel="iteration", ylabel="train/loss", title="training loss" + (f" (EMA smoothing {smooth})" if smooth > 0 else ""))
    zoom_to_tail(ax, smoothed_curves)
    return finish(fig, [ax], os.path.join(out_dir, "train_loss.png"))


def plot_win_clip_rate(runs, out_dir):
    keys = ("train/win_rate", "train/clip_rate")
    if not any(series(train_rows, key)[1] for _, train_rows, _ in runs for key in keys):
        return None
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, keys):
        for i, (label, train_rows, _) in enumerate(runs):
            iters, values = series(train_rows, key)
            if values:
                ax.plot(iters, values, color=f"C{i % 10}", label=label)
        ax.set(xlabel="iteration", ylabel=key)
    axes[0].set_title("Sophia: fraction of coordinates not clipped (keep in 0.1-0.5)")
    axes[1].set_title("fraction of steps with the gradient norm clipped")
    return finish(fig, axes, os.path.join(out_dir, "win_clip_rate.png"))


def plot_runs(run_dirs, out_dir, labels=None, smooth=0.9):
    """Plot the runs' metrics into out_dir -> paths of the PNGs written. smooth: train-loss EMA in [0, 1), 0 = off."""
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    runs = load_runs(run_dirs, labels)
    os.makedirs(out_dir, exist_ok=True)
    written = [plot_val_loss(runs, out_dir), plot_train_loss(runs, out_dir, smooth), plot_win_clip_rate(runs, out_dir)]
    return [path for path in written if path is not None]


# ----------------------------------------------------------------------------------------------------------
# Figure 6: SuperGLUE in-context accuracy, task x checkpoint

ICL_FIGURE = "icl_superglue.png"


def load_icl_results(paths):
    """eval.py --json files -> their result objects in order (a file may hold one object or a list)."""
    results = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as error:
            raise MetricsError(f"cannot read {path} ({getattr(error, 'strerror', None) or error}): pass a file "
                               f"written by eval.py --tasks=... --json=PATH") from None
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item, dict) or not isinstance(item.get("tasks"), dict):
                raise MetricsError(f"{path} holds no in-context results (no \"tasks\"): write it with "
                                   f"eval.py --tasks=... --json=PATH")
            results.append(item)
    return results


def icl_bars(results):
    """(group names, {group: [(value, stderr) per result]}): the tasks in order of appearance, then the average.
    A task's value is its accuracy (ReCoRD: exact match, its accuracy-like metric), None where a result lacks it."""
    tasks = []
    for result in results:
        tasks += [task for task in result["tasks"] if task not in tasks]
    bars = {}
    for task in tasks:
        metric = "em" if task == "record" else "acc"
        bars[task] = [(r["tasks"].get(task, {}).get(metric), r["tasks"].get(task, {}).get(f"{metric}_stderr"))
                      for r in results]
    bars["average"] = [(r.get("average"), None) for r in results]
    return [*tasks, "average"], bars


def plot_icl(results, out_dir, labels=None, title=None):
    """Grouped bars (task x checkpoint) of in-context accuracy -> the PNG's path."""
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"got {len(labels)} labels for {len(results)} results: give one label per checkpoint")
    labels = labels or [f"{r.get('optimizer_name') or 'model'} {r.get('iter_num', '')}".strip() for r in results]
    groups, bars = icl_bars(results)
    width = 0.8 / len(results)
    fig = Figure(figsize=(max(6, 1.3 * len(groups) * max(1, len(results) / 3)), 4.5), layout="constrained")
    ax = fig.subplots()
    for i, label in enumerate(labels):
        xs = [g + (i - (len(results) - 1) / 2) * width for g in range(len(groups))]
        values = [bars[group][i][0] for group in groups]
        errors = [bars[group][i][1] or 0.0 for group in groups]
        points = [(x, v, e) for x, v, e in zip(xs, values, errors) if is_finite_number(v)]
        ax.bar([x for x, _, _ in points], [v for _, v, _ in points], width, yerr=[e for _, _, e in points],
               capsize=2, color=f"C{i % 10}", label=label)
    shots = sorted({r.get("num_fewshot") for r in results}, key=str)
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel="accuracy (ReCoRD: exact match)", ylim=(0, 1),
           title=title or f"SuperGLUE in-context accuracy ({', '.join(map(str, shots))}-shot)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, ICL_FIGURE)
    fig.savefig(path, dpi=120)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compare training runs from their metrics.jsonl files, or "
                                                 "checkpoints' SuperGLUE accuracy from eval.py JSON (--icl).")
    parser.add_argument("runs", nargs="*", help="training out_dirs (or their metrics.jsonl files)")
    parser.add_argument("--icl", nargs="+", metavar="JSON", help="eval.py --tasks=... --json files: draw the "
                                                                  "paper's Figure 6 instead")
    parser.add_argument("--title", help="title of the --icl figure")
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: run name, else directory)")
    parser.add_argument("--out", default="plots", help="folder for the PNGs (default: plots)")
    parser.add_argument("--smooth", type=float, default=0.9, help="train-loss EMA smoothing in [0, 1), 0 = off (default: 0.9)")
    args = parser.parse_args(argv)
    if args.icl:
        return main_icl(parser, args)
    if not args.runs:
        parser.error("give training out_dirs to compare, or --icl JSON ... for the in-context figure")
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"got {len(args.labels)} --labels for {len(args.runs)} runs: give one label per run")
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth must be in [0, 1), got {args.smooth}")
    paths = _or_exit(lambda: plot_runs(args.runs, args.out, labels=args.labels, smooth=args.smooth), args.out)
    for path in paths:
        print(f"wrote {path}")
    if not paths:
        print("no figure written: the runs log none of val/loss, train/loss, train/win_rate, train/clip_rate")


def _or_exit(make, out):
    """make(), with unreadable metrics or an unwritable --out ending in one error line (exit status 2)."""
    try:
        return make()
    except MetricsError as error:
        print(f"error: {error}", file=sys.stderr)
    except OSError as error:
        print(f"error: cannot write plots to {out}: {error.strerror or error}; pick another --out", file=sys.stderr)
    sys.exit(2)


def main_icl(parser, args):
    if args.runs:
        parser.error("--icl draws from eval.py JSON files only; plot training runs in a separate call")
    results = _or_exit(lambda: load_icl_results(args.icl), args.out)
    if args.labels is not None and len(args.labels) != len(results):
        parser.error(f"got {len(args.labels)} --labels for {len(results)} checkpoints in the --icl files: "
                     f"give one label per checkpoint")
    path = _or_exit(lambda: plot_icl(results, args.out, labels=args.labels, title=args.title), args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
