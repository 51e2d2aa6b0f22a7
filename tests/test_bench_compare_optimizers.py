"""The optimizer comparison harness: its metric, its fairness checks, its report on finished runs (fast, from
runs written here), the studies on stand-in runs, and --quick of the comparison and of each study end to end, with a
run reproduced alone from its recorded command (slow: about 30 training runs)."""
import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plot
import train
from configurator import config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import compare_optimizers as co  # noqa: E402


def curve(losses, every=10):
    return [(i * every, v) for i, v in enumerate(losses)]


def test_steps_to_reach_interpolates_between_evaluations():
    c = curve([5.0, 4.0, 3.0, 2.0])
    assert co.steps_to_reach(c, 3.5) == pytest.approx(15.0)
    assert co.steps_to_reach(c, 3.0) == 20
    assert co.steps_to_reach(c, 1.0) is None


def test_speedup_is_the_papers_ratio_both_ways():
    adamw = curve([5.0, 4.0, 3.0, 2.5, 2.0])                     # reaches 2.0 at step 40
    twice_as_fast = curve([5.0, 3.0, 2.0, 1.8, 1.7])             # reaches 2.0 at step 20
    assert co.speedup(adamw, twice_as_fast) == pytest.approx(2.0)
    half_as_fast = curve([5.0, 4.5, 4.0, 3.5, 3.0])              # ends at 3.0, which AdamW reached at step 20
    assert co.speedup(adamw, half_as_fast) == pytest.approx(0.5)
    assert co.speedup(adamw, adamw) == 1.0


def test_mean_ci_uses_the_t_distribution():
    mean, half = co.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)


def fake_run(seed=0, init="abc", **config):
    base = dict(n_layer=4, total_bs=16, block_size=64, max_iters=100, grad_clip=1.0, dtype="float32",
                learning_rate=1e-3, min_lr=5e-5, optimizer_name="adamw", out_dir="x", seed=seed)
    return dict(dir=f"run{seed}", seed=seed, init=init, data={"train": 10}, config={**base, **config})


def test_fairness_check_catches_any_shared_difference():
    runs = [fake_run(), fake_run(optimizer_name="sophiag", learning_rate=2e-3, min_lr=1e-4, out_dir="y")]
    co.check_fairness(runs)                                     # optimizer keys may differ
    for bad in (dict(grad_clip=0.5), dict(dtype="bfloat16"), dict(max_iters=200), dict(min_lr=1e-5)):
        with pytest.raises(AssertionError):
            co.check_fairness([runs[0], fake_run(**bad)])
    with pytest.raises(AssertionError, match="different weights"):
        co.check_fairness([runs[0], fake_run(init="other")])
    other_data = copy.deepcopy(runs[1])
    other_data["data"] = {"train": 11}
    with pytest.raises(AssertionError, match="other data"):
        co.check_fairness([runs[0], other_data])


def write_finished_run(out_dir, optimizer, lr, seed, time_scale, train_seconds, stall_seconds=0.0):
    """The metrics.jsonl a config/parts/compare_tiny.py run writes, with a val loss of 2 + 3·exp(-t / time_scale), a
    steady pace of train_seconds per run, and a stall of stall_seconds in its middle iteration."""
    cfg, _ = load_config(train.TrainConfig, ["config/parts/compare_tiny.py", f"--optimizer_name={optimizer}",
                                             f"--learning_rate={lr}", f"--seed={seed}", f"--out_dir={out_dir}"])
    train.resolve(cfg, world_size=1)
    loss = lambda t: 2 + 3 * math.exp(-t / time_scale)  # noqa: E731
    records = [dict(event="run", iter=0, name=optimizer, config=config_to_dict(cfg), init_sha256=f"init{seed}",
                    data=dict(dir=str(out_dir.parent / "data"), train=1000, val=100))]
    pace = train_seconds / cfg.max_iters
    for it in range(cfg.max_iters):
        stalled = stall_seconds if it >= cfg.max_iters // 2 else 0.0
        records.append({"event": "train", "iter": it, "train/loss": loss(it) + 0.1, "lr": lr, "train/clip_rate": 0.1,
                        "time": pace * (it + 1) + stalled, "cpu_time": 0.9 * pace * (it + 1),
                        "iter_time_ms": 1000 * (pace + (stall_seconds if it == cfg.max_iters // 2 else 0.0)),
                        **({"train/win_rate": 0.2} if optimizer == "sophiag" else {})})
    records += [{"event": "eval", "iter": it, "val/loss": loss(it)} for it in range(0, cfg.max_iters + 1, 25)]
    out_dir.mkdir(parents=True)
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out_dir


def test_report_on_finished_runs(tmp_path):
    """The fast sibling of the --quick study: --runs on two seeds of AdamW and of a Sophia-G that needs twice the
    steps (its loss curve is AdamW's stretched 2x in time): the speed-up in steps is 0.5 on each seed, and the
    report files name no path of this machine."""
    runs = [write_finished_run(tmp_path / f"{name}{seed}", name, lr, seed, scale, seconds)
            for seed in (0, 1) for name, lr, scale, seconds in [("adamw", 4e-3, 100, 20.0),
                                                                ("sophiag", 2.5e-4, 200, 25.0)]]
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "bench/compare_optimizers.py", f"--out={out}", "--runs", *map(str, runs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fairness checks passed: 4 runs" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["adamw", "sophiag"] and rows["sophiag"]["seeds"] == [0, 1]
    assert rows["adamw"]["speedup_per_seed"] == [1.0, 1.0]
    assert rows["sophiag"]["speedup_per_seed"] == pytest.approx([0.5, 0.5])
    assert rows["sophiag"]["wall_speedup"][0] == pytest.approx(0.5 * 20 / 25)
    assert rows["sophiag"]["final_mean"] == pytest.approx(2 + 3 * math.exp(-2))
    assert "| sophiag | 0.00025 |" in (out / "results.md").read_text()
    for figure in ("val_loss.png", "train_loss.png", "win_clip_rate.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "results.json").read_text()
    assert str(tmp_path) not in text and str(ROOT) not in text
    assert {r["dir"] for r in results["runs"]} == {f"../{r.name}" for r in runs}
    # a run that trained on other data is refused, with one line
    other = write_finished_run(tmp_path / "other", "sophiag", 1e-3, 0, 200, 25.0)
    metrics = (other / "metrics.jsonl").read_text().replace('"train": 1000', '"train": 999')
    (other / "metrics.jsonl").write_text(metrics)
    proc = subprocess.run([sys.executable, "bench/compare_optimizers.py", f"--out={out}", "--runs", str(runs[0]),
                           str(other)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "trained on other data" in proc.stderr and "Traceback" not in proc.stderr


def test_one_seed_and_stalled_timings_are_flagged_not_reported_as_intervals(tmp_path):
    runs = [write_finished_run(tmp_path / "adamw", "adamw", 4e-3, 0, 100, 20.0),
            write_finished_run(tmp_path / "sophiag", "sophiag", 2.5e-4, 0, 200, 25.0, stall_seconds=30.0)]
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "bench/compare_optimizers.py", f"--out={out}", "--runs", *map(str, runs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| sophiag"))
    assert "± n/a" in row and "0.50x (one seed)" in row and "nan" not in table
    assert "x (one seed) †" in row and "† The wall time of sophiag is not its steady pace" in table
    assert "| 55.0 | 22.5 |" in row     # training seconds (25 s of pace + a 30 s stall) and CPU seconds beside
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows["sophiag"]["noisy_timing"] == ["sophiag"] and rows["adamw"]["noisy_timing"] == []


@pytest.mark.slow
def test_quick_studies_end_to_end(tmp_path):
    """--quick of the comparison and of each study, sharing one runs folder (the main setting's runs are made once),
    then a run picked from a study's JSON reproduces its final val loss alone with its recorded command."""
    def harness(*args):
        proc = subprocess.run([sys.executable, "bench/compare_optimizers.py", "--quick", "--jobs=2",
                               f"--runs_dir={tmp_path / 'runs'}", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "fairness checks passed" in proc.stdout
        return proc.stdout

    harness(f"--out={tmp_path / 'compare'}")
    results = json.loads((tmp_path / "compare" / "results.json").read_text())
    assert set(results["rows"]) == {"adamw", "lion", "sophiag", "sophiah", "muon"}
    assert results["rows"]["adamw"]["speedup"][0] == pytest.approx(1.0)
    for row in results["rows"].values():
        assert row["seeds"] == [0, 1] and len(row["speedup_per_seed"]) == 2
        assert row["final_mean"] > 0 and row["speedup"][0] > 0
    table = (tmp_path / "compare" / "results.md").read_text()
    assert table.count("\n| ") == 6 and "| muon |" in table and "Made with Python" in table
    for figure in ("sweep.png", "val_loss.png", "train_loss.png", "win_clip_rate.png"):
        assert (tmp_path / "compare" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(name.endswith(".pt") for _, _, files in os.walk(tmp_path) for name in files)

    studies = {}
    for study in ("warmup", "tokens", "curvature", "scale"):
        printed = harness(f"--study={study}", f"--out={tmp_path / study}")
        studies[study] = json.loads((tmp_path / study / f"{study}.json").read_text())
        assert "finished earlier" in printed and (tmp_path / study / f"{study}.png").exists()
    assert {r["arm"] for r in studies["tokens"]["rows"]} == {"1x tokens", "4x tokens"}
    control = next(r for r in studies["curvature"]["rows"] if r["variant"] == "sign_momentum")
    assert control["clip_share"] == 1.0                   # h stays 0: every coordinate clipped
    sophia = next(r for r in studies["curvature"]["rows"] if r["variant"] == "sophiag")
    assert sophia["final_mean"] != control["final_mean"]  # 20 steps: one refresh, so the runs part after it
    assert len({r["params"] for r in studies["scale"]["rows"]}) == 2

    # one run alone, from its recorded command: the same final val loss
    run = next(r for r in studies["curvature"]["runs"] if r["variant"] == "sign_momentum" and r["seed"] == 1)
    shutil.rmtree(tmp_path / "curvature" / run["dir"])
    subprocess.run(run["command"].replace("python ", f"{sys.executable} ", 1).split(), cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    _, evals, _ = plot.load_metrics(str(tmp_path / "curvature" / run["dir"]))
    assert evals[-1]["val/loss"] == run["final_val"]

    # --runs: the same report from finished out_dirs, as for runs made elsewhere
    rows = results["rows"]
    best = [r for r in results["runs"] if r["name"] in ("adamw", "sophiag")
            and (r["lr"], r["rho"]) == (rows[r["name"]]["lr"], rows[r["name"]]["rho"])]
    again = subprocess.run([sys.executable, "bench/compare_optimizers.py", f"--out={tmp_path / 'again'}", "--runs",
                            *[str(tmp_path / "compare" / r["dir"]) for r in best]], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    reported = json.loads((tmp_path / "again" / "results.json").read_text())["rows"]
    assert list(reported) == ["adamw", "sophiag"]
    assert reported["sophiag"]["speedup_per_seed"] == rows["sophiag"]["speedup_per_seed"]
    alone = subprocess.run([sys.executable, "bench/compare_optimizers.py", f"--out={tmp_path / 'alone'}", "--runs",
                            *[str(tmp_path / "compare" / r["dir"]) for r in best if r["name"] == "sophiag"]],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 1 and "needs an AdamW run" in alone.stderr and "Traceback" not in alone.stderr


# ------------------------------------------------------------------------------------------------------
# --study=..., planned and analysed on stand-in runs (no training: the runs' val-loss curves are 2 + 3·exp(-t / τ), τ
# chosen per optimizer, so the speed-ups are known)

TAU = {"adamw": 100.0, "sophiag": 200.0, "muon": 50.0}


def stand_in_run(runs_dir, name, lr, rho, seed, extra, tag="", own=()):
    """What train_run returns, for a run whose curve is 2 + 3·exp(-t / τ) (+ a penalty away from its best lr: AdamW's
    best is 4e-3 at 400 steps and 2e-3 at 800; Sophia-G's 2.5e-4; Muon's 4e-3)."""
    run_dir, argv = co.run_command(runs_dir, name, lr, rho, seed, extra, tag, own)
    cfg, _ = load_config(train.TrainConfig, argv[2:])
    train.resolve(cfg, world_size=1)
    best = {"adamw": 4e-3 if cfg.max_iters <= 400 else 2e-3, "sophiag": 2.5e-4, "muon": 4e-3}[name]
    penalty = 0.1 * abs(math.log2(lr / best))
    curve = [(t, 2 + 3 * math.exp(-t / TAU[name]) + penalty) for t in range(0, cfg.max_iters + 1, cfg.eval_interval)]
    clipped = 1.0 if cfg.hess_interval > cfg.max_iters else 0.9
    return dict(name=cfg.optimizer_name, lr=lr, rho=rho, seed=seed, dir=run_dir, wall_s=1.0, train_s=1.0, cpu_s=1.0,
                iterations=cfg.max_iters, median_iteration_ms=None, final_val=curve[-1][1], curve=curve,
                win_rate=0.1 if name == "sophiag" else None, config=config_to_dict(cfg),
                init=f"init{seed}-{cfg.n_layer}x{cfg.n_embd}", data={"train": 1}, tag=tag, command=" ".join(argv),
                clip_share=clipped if name == "sophiag" else None)


def run_stand_in_study(study, tmp_path, data_dir, monkeypatch, capsys, **args):
    monkeypatch.setattr(co, "train_run", stand_in_run)
    (tmp_path / "runs").mkdir(parents=True)
    (tmp_path / "runs" / "data").symlink_to(data_dir)
    options = {**dict(study=study, quick=False, jobs=2, runs_dir=None, arms=None, plan=False), **args}
    co.run_study(argparse.Namespace(**options), str(tmp_path))
    results = json.loads((tmp_path / f"{study}.json").read_text())
    # no path of this machine but in the commands, which name the runs folder (relative when it is in the repository)
    runs = [{k: v for k, v in r.items() if k != "command"} for r in results["runs"]]
    assert str(tmp_path) not in json.dumps([results["rows"], runs, results["environment"]])
    assert (tmp_path / f"{study}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return {(r["arm"], r["variant"]): r for r in results["rows"]}, capsys.readouterr().out, results


def test_ablations_study_pairs_each_variant_with_adamw_at_its_budget(tmp_path, data_dir, monkeypatch, capsys):
    rows, printed, results = run_stand_in_study("ablations", tmp_path, data_dir, monkeypatch, capsys)
    assert "planned: 26 runs" in printed and "fairness checks passed: 26 runs" in printed
    assert [variant for arm, variant in rows if arm == "400 steps"] == [
        "adamw", "sophiag", "sophiag_bias_corrected", "sophiag_k1", "sophiag_quarter_hessian"]
    for (arm, variant), row in rows.items():
        assert row["seeds"] == [0, 1, 2]
        expected = 1.0 if variant == "adamw" else 0.5                  # τ 200 against AdamW's 100
        assert row["speedup_per_seed"] == pytest.approx([expected] * 3, rel=1e-6)
    assert rows["800 steps", "adamw"]["lr"] == 2e-3 and rows["400 steps", "adamw"]["lr"] == 4e-3   # re-tuned
    swept = {r["lr"] for r in results["runs"] if "_2x_steps" in r["dir"] and r["name"] == "sophiag"}
    assert swept == {1.25e-4, 2.5e-4, 5e-4}                          # Sophia-G re-tuned at 800 steps too
    assert "| 400 steps | sophiag_k1 | " in (tmp_path / "ablations.md").read_text()


def test_scale_study_reports_steps_and_flops_ratios_per_size(tmp_path, data_dir, monkeypatch, capsys):
    rows, printed, results = run_stand_in_study("scale", tmp_path, data_dir, monkeypatch, capsys)
    assert "planned: 63 runs" in printed
    params = sorted({r["params"] for r in rows.values()})
    assert len(params) == 3 and params[-1] >= 8 * params[0]
    tokens = [rows[size, "adamw"]["tokens"] for size in ("L2d64", "L4d128", "L6d256")]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3        # the budget grows with the size
    for size in ("L2d64", "L4d128", "L6d256"):
        sophia = rows[size, "sophiag"]
        assert sophia["speedup"][0] == pytest.approx(0.5, rel=1e-6)
        # FLOPs: Sophia-G's Hessian pass is a forward and backward over 16 sequences every 10 steps (+10%)
        assert sophia["flops_speedup"][0] == pytest.approx(0.5 / 1.1, rel=1e-6)
        assert rows[size, "adamw"]["speedup"] == [1.0, 0.0] and rows[size, "adamw"]["gap"] == [0.0, 0.0]
    for size in ("L2d64", "L4d128"):
        assert rows[size, "muon"]["speedup"][0] == pytest.approx(2.0, rel=1e-6)
        assert rows[size, "muon"]["flops_speedup"][0] < 2.0         # Newton-Schulz costs FLOPs too
    assert ("L6d256", "muon") not in rows                           # hours a run on a CPU without bf16 instructions
    assert rows["L2d64", "muon"]["edge"] == ["lr"]             # the stand-in's best, 4e-3, is the grid's lowest lr
    assert rows["L6d256", "adamw"]["edge"] == []               # 2e-3 at 600 steps: inside its grid
    assert {r["rho"] for r in results["runs"] if r["name"] == "sophiag" and r["arm"] != "L4d128"} == {0.05}
    # the best warmup at the largest size: its own arm, paired with its own AdamW, warmup 480 of 600 steps
    warm = rows["L6d256 warmup 80%", "sophiag_warm80"]
    assert warm["params"] == rows["L6d256", "sophiag"]["params"] and warm["speedup"][0] == pytest.approx(0.5)
    commands = [r["command"] for r in results["runs"] if "_L6d256_warm80_" in r["dir"]]
    assert len(commands) == 10 and all(c.count("--warmup_iters=") == 1 and "--warmup_iters=480" in c
                                       for c in commands)


def test_warmup_and_tokens_studies_retune_and_pair_within_each_setting(tmp_path, data_dir, monkeypatch, capsys):
    rows, printed, results = run_stand_in_study("warmup", tmp_path / "w", data_dir, monkeypatch, capsys)
    assert list(dict.fromkeys(arm for arm, _ in rows)) == ["warmup 10%", "warmup 40%", "warmup 80%"]
    assert any("_warm80_" in r["dir"] for r in results["runs"])
    commands = [r["command"] for r in results["runs"] if "_warm40_" in r["dir"]]
    assert commands and all("--warmup_iters=160" in c and "config/parts/compare_tiny.py" in c for c in commands)
    for (arm, variant), row in rows.items():
        assert row["gap"][0] == pytest.approx(0.0 if variant == "adamw" else 3 * (math.exp(-2) - math.exp(-4)))
    rows, printed, results = run_stand_in_study("tokens", tmp_path / "t", data_dir, monkeypatch, capsys,
                                                arms=["1x tokens", "4x tokens"])
    assert [r["tokens"] for (arm, variant), r in rows.items() if variant == "adamw"] == [409_600, 4 * 409_600]
    assert all("--total_bs=64 --batch_size=64" in r["command"] for r in results["runs"] if "_4x_tokens" in r["dir"])
    with pytest.raises(plot.MetricsError, match="16x tokens"):
        run_stand_in_study("tokens", tmp_path / "t2", data_dir, monkeypatch, capsys, arms=["2x tokens"])


def test_curvature_study_has_the_sign_momentum_control(tmp_path, data_dir, monkeypatch, capsys):
    rows, printed, results = run_stand_in_study("curvature", tmp_path, data_dir, monkeypatch, capsys)
    control = rows["main", "sign_momentum"]
    assert control["optimizer"] == "sophiag" and control["clip_share"] == 1.0 and control["rho"] is None
    assert rows["main", "sophiag"]["clip_share"] == 0.9
    assert {r["rho"] for r in results["runs"] if r["dir"].split("/")[-1].startswith("sophiag_lr")} == \
        set(co.CURVATURE_RHOS)
    assert all("--hess_interval=1000000" in r["command"] for r in results["runs"] if "_h0_" in r["dir"])
    table = (tmp_path / "curvature.md").read_text()
    assert "| main | sign_momentum | 0.0005 |" in table and "Every run at seed 0" in table
    # the stand-in control follows Sophia-G's curve: no difference, a speed-up of 1
    assert results["sophiag_against_control"] == {"gap": [0.0, 0.0], "speedup": [1.0, 0.0]}
    assert "Sophia-G against its sign-momentum control, paired by seed: final val loss 0.000 ± 0.000" in table


def test_tuned_tiny_configs_are_the_harness_setting_and_its_best():
    """config/train_tiny_*_tuned.py: config/parts/compare_tiny.py with the best lr (and rho) of the committed sweep."""
    best = json.loads((ROOT / "assets" / "compare" / "results.json").read_text())["rows"]
    harness, _ = load_config(train.TrainConfig, [co.BASE_CONFIG])
    for name, file in [("adamw", "adam"), ("sophiag", "sophiag"), ("sophiah", "sophiah"), ("lion", "lion"),
                       ("muon", "muon")]:
        cfg, _ = load_config(train.TrainConfig, [f"config/train_tiny_{file}_tuned.py"])
        assert cfg.optimizer_name == name and cfg.learning_rate == best[name]["lr"]
        assert cfg.rho == best[name]["rho"]
        differ = {k for k, v in vars(cfg).items() if vars(harness)[k] != v}
        assert differ <= co.OPTIMIZER_KEYS | co.RUN_KEYS | co.LAYOUT_KEYS, differ
    assert (best["adamw"]["lr"], best["sophiag"]["lr"], best["sophiag"]["rho"]) == (co.TUNED["adamw"][0],
                                                                                  *co.TUNED["sophiag"])
