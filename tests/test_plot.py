"""Tests for plot.py: reading metrics.jsonl (resume duplicates, truncated lines, missing values), the PNGs
written for several runs, and the command line."""

import json
import math
import os
import subprocess
import sys

import matplotlib.image
import pytest

import plot
from plot import MetricsError, load_metrics, load_runs, plot_runs, series, smooth_ema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, name=None, iters=range(0, 60, 10), sophia=True, extra_lines=()):
    """A fake out_dir/metrics.jsonl shaped like train.py's: a run event, train events, an eval every 20 iters."""
    os.makedirs(run_dir, exist_ok=True)
    events = [{"iter": 0, "event": "run", "name": name, "config": {"optimizer_name": "sophiag" if sophia else "adamw"}}]
    for it in iters:
        train = {"iter": it, "event": "train", "train/loss": 10.0 / (1 + it), "lr": 6e-4, "train/clip_rate": 0.1,
                 "tokens": (it + 1) * 1000, "time": (it + 1) * 0.5}
        if sophia:
            train["train/win_rate"] = 0.3
        events.append(train)
        if it % 20 == 0:
            events.append({"iter": it, "event": "eval", "val/loss": 11.0 / (1 + it), "eval/train_loss": 10.5 / (1 + it),
                           "tokens": (it + 1) * 1000, "time": (it + 1) * 0.5})
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(event) + "\n" for event in events)
        f.writelines(extra_lines)
    return str(run_dir)


def assert_valid_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn


def test_resumed_iteration_last_occurrence_wins(tmp_path):
    resumed = [json.dumps({"iter": 20, "event": "train", "train/loss": 0.123}) + "\n",
               json.dumps({"iter": 20, "event": "eval", "val/loss": 0.456}) + "\n",
               json.dumps({"iter": 60, "event": "train", "train/loss": 0.1}) + "\n"]
    train_rows, eval_rows, run_info = load_metrics(write_run(tmp_path / "run", name="resumed", extra_lines=resumed))
    assert [row["iter"] for row in train_rows] == [0, 10, 20, 30, 40, 50, 60]
    assert [row["iter"] for row in eval_rows] == [0, 20, 40]
    assert train_rows[2]["train/loss"] == 0.123
    assert "lr" not in train_rows[2]  # the whole later row replaces the earlier one
    assert eval_rows[1]["val/loss"] == 0.456
    assert run_info["name"] == "resumed"


def test_truncated_last_line_and_bad_values_are_skipped(tmp_path, capsys):
    extra = [json.dumps({"iter": 60, "event": "train", "train/loss": float("nan"), "train/win_rate": None}) + "\n",
             json.dumps({"iter": 70, "event": "train", "grad_norm": 1.0}) + "\n",
             '{"iter": 80, "event": "train", "train/lo']  # killed mid-write
    run = write_run(tmp_path / "run", extra_lines=extra)
    train_rows, _, _ = load_metrics(os.path.join(run, "metrics.jsonl"))  # the file itself works too
    assert [row["iter"] for row in train_rows][-2:] == [60, 70]
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    iters, losses = series(train_rows, "train/loss")
    assert iters == [0, 10, 20, 30, 40, 50]  # NaN at 60 and missing at 70 are dropped
    assert all(math.isfinite(loss) for loss in losses)
    assert series(train_rows, "train/win_rate")[0] == [0, 10, 20, 30, 40, 50]


def test_smooth_ema_is_debiased():
    assert smooth_ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth_ema([1.0, 3.0], 0.0) == [1.0, 3.0]
    assert smooth_ema([0.0, 1.0], 0.5) == pytest.approx([0.0, (0.5 * 1.0) / (1 - 0.5 ** 2)])


def test_labels_come_from_argument_then_run_name_then_directory(tmp_path):
    named = write_run(tmp_path / "a", name="sophiag-125m")
    unnamed = write_run(tmp_path / "b_dir")
    assert [run[0] for run in load_runs([named, unnamed])] == ["sophiag-125m", "b_dir"]
    assert [run[0] for run in load_runs([named, unnamed], labels=["A", "B"])] == ["A", "B"]
    with pytest.raises(ValueError, match="one label per run"):
        load_runs([named, unnamed], labels=["A"])


def test_plot_runs_writes_valid_pngs(tmp_path):
    runs = [write_run(tmp_path / "sophia", name="sophia", extra_lines=['{"iter": 60, "event": "tr']),
            write_run(tmp_path / "adam", name="adam", sophia=False, iters=range(0, 100, 10))]  # no win_rate
    paths = plot_runs(runs, str(tmp_path / "plots"), labels=["Sophia-G", "AdamW"])
    assert sorted(os.path.basename(p) for p in paths) == ["train_loss.png", "val_loss.png", "win_clip_rate.png"]
    for path in paths:
        assert os.path.dirname(path) == str(tmp_path / "plots")
        assert_valid_png(path)


def test_figures_without_data_are_left_out(tmp_path):
    only_loss = [json.dumps({"iter": it, "event": "train", "train/loss": 5.0 - it}) + "\n" for it in range(3)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(only_loss))
    paths = plot_runs([str(run)], str(tmp_path / "plots"), smooth=0)
    assert [os.path.basename(p) for p in paths] == ["train_loss.png"]


def test_missing_metrics_file_raises_clear_error(tmp_path):
    with pytest.raises(MetricsError, match="nowhere/metrics.jsonl not found"):
        load_metrics(str(tmp_path / "nowhere"))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(MetricsError, match="empty_run/metrics.jsonl not found"):
        load_metrics(str(tmp_path / "empty_run"))


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "plot.py"), *args], capture_output=True, text=True, timeout=120)


def test_cli_plots_two_runs(tmp_path):
    run_a = write_run(tmp_path / "run_a")
    run_b = write_run(tmp_path / "run_b", sophia=False)
    out = tmp_path / "plots"
    result = run_cli(run_a, run_b, "--labels", "A", "B", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["train_loss.png", "val_loss.png", "win_clip_rate.png"]
    assert result.stdout.count("wrote ") == 3
    assert_valid_png(out / "val_loss.png")


def test_cli_missing_metrics_exits_2_without_traceback(tmp_path):
    result = run_cli(write_run(tmp_path / "ok"), str(tmp_path / "missing_run"), "--out", str(tmp_path / "plots"))
    assert result.returncode == 2
    assert "missing_run/metrics.jsonl not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "plots").exists()  # nothing written when a run is missing


@pytest.mark.parametrize("extra_args, expected", [
    (["--labels", "A", "B"], "one label per run"),
    (["--smooth", "1.5"], "--smooth must be in [0, 1)"),
])
def test_cli_bad_arguments_exit_2(tmp_path, capsys, extra_args, expected):
    with pytest.raises(SystemExit) as exit_info:
        plot.main([write_run(tmp_path / "ok"), *extra_args, "--out", str(tmp_path / "plots")])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()
