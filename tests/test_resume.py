"""What a resume may change (resume.py, TrainConfig.RESUMABLE_KEYS), and resuming past a damaged checkpoint.
"""
import json

import checkpoint
import train
from helpers import assert_clean_error, assert_same, copy_run, events, tiny_argv, train_cli


def test_resume_refuses_to_change_the_experiment(run_of_8, data_dir, tmp_path, capsys):
    out = copy_run(run_of_8, tmp_path)
    before = (out / "ckpt.pt").read_bytes()
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume", "--max_iters=12",
                       "--seed=5", "--learning_rate=0.05", "--total_bs=32", "--rho=1.0", "--eval_interval=6")
    assert_clean_error(result, "would change the experiment", "seed=1337 in the checkpoint, 5 now", "total_bs=16",
                       "learning_rate=0.002", "rho=0.05", "min_lr=0.0001 in the checkpoint, 0.0025", "(it follows "
                       "learning_rate)", "--resume_override=total_bs,learning_rate,rho,seed,")
    assert "eval_interval" not in result.stderr and "max_iters" not in result.stderr    # those may change
    # a schedule that would follow the new max_iters is a change too, named with the way out
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume", "--max_iters=12",
                       "--lr_decay_iters=None")
    assert_clean_error(result, "lr_decay_iters=100 in the checkpoint, 12 now", "pass the checkpoint's value")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume",
                       "--resume_override=max_iters,n_layer")
    assert_clean_error(result, "max_iters, n_layer cannot be named there")
    assert (out / "ckpt.pt").read_bytes() == before


def test_resume_override_allows_named_changes_logs_them_and_counts_tokens(run_of_8, data_dir, tmp_path, one_thread):
    out = copy_run(run_of_8, tmp_path)
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=10", "--eval_interval=4",
                         "--eval_sequences=16", "--total_bs=32", "--rho=0.5", "--resume_override=total_bs, rho"))
    runs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    resumed = [r for r in runs if r["event"] == "run"][-1]
    assert resumed["resume_overrides"] == {"total_bs": [16, 32], "rho": [0.05, 0.5]}
    rows = events(out)
    assert rows[7]["tokens"] == 8 * 16 * 64 and rows[9]["tokens"] == 8 * 16 * 64 + 2 * 32 * 64   # the real history
    assert events(out, "eval")[10]["tokens"] == rows[9]["tokens"]


def test_resume_of_a_finished_run_says_so(run_of_8, data_dir, tmp_path, capsys, one_thread):
    out = copy_run(run_of_8, tmp_path)
    lines = (out / "metrics.jsonl").read_text()
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=8", "--eval_interval=4"))
    assert "already at iteration 8, max_iters=8: nothing to train" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == lines


def test_resume_into_a_wrong_out_dir_creates_nothing(data_dir, tmp_path, capsys):
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'typo'}", "--init_from=resume")
    assert_clean_error(result, "no checkpoint in", "typo")
    assert not (tmp_path / "typo").exists()


def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(run_of_8, data_dir, tmp_path, capsys, one_thread):
    from test_checkpoint import alter_bytes_of
    out = copy_run(run_of_8, tmp_path)
    latest = checkpoint.load(str(out / "ckpt.pt"))
    for name in ("ckpt.pt", "ckpt_0000008.pt"):          # one file in the run; copying it broke the hard link
        alter_bytes_of(out / name, latest["model"]["transformer.h.0.mlp.c_fc.weight"])
    capsys.readouterr()
    train.main(tiny_argv(data_dir, out, "--init_from=resume", "--max_iters=8", "--eval_interval=4",
               "--eval_sequences=16"))
    captured = capsys.readouterr()
    assert "ckpt.pt is damaged" in captured.err and "trying the previous checkpoint" in captured.err
    assert "resuming from" in captured.out and "ckpt_0000004.pt at iteration 4" in captured.out
    assert_same(events(run_of_8), events(out), range(8))       # iterations 4-7 retrained, exactly as before
