"""Bad input: one clear message, exit status 2, no traceback, and nothing saved is damaged.
"""
import hashlib

import pytest

from helpers import ROOT, TINY, assert_clean_error, bad_file, run_script, tiny, train_cli


@pytest.fixture(scope="module")
def saved_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    tiny(data_dir, out, "--max_iters=4", "--eval_interval=4", "--eval_sequences=16")
    return out


BAD_INPUTS = {
    "unknown key on the command line": (["--learnig_rate=1e-3"], ["learnig_rate", "learning_rate"]),
    "wrong type": (["--max_iters=1e5"], ["max_iters", "int"]),
    "missing config file": (["config/nope.py"], ["config/nope.py"]),
    "zero iterations": (["--max_iters=0"], ["max_iters", "positive"]),
    "negative interval": (["--eval_interval=-5"], ["eval_interval", "positive"]),
    "zero hessian interval": (["--hess_interval=0"], ["hess_interval"]),
    "total_bs not divisible": (["--total_bs=20"], ["total_bs=20", "batch_size"]),
    "hessian batch not divisible": (["--hess_total_bs=6", "--hess_batch_size=4"], ["hess_total_bs=6",
                                                                                   "hess_batch_size=4"]),
    "accumulation does not multiply out": (["--gradient_accumulation_steps=3"], ["gradient_accumulation_steps=3",
                                                                                 "total_bs=16"]),
    "block_size larger than the data": (["--block_size=100000000"], ["block_size"]),
    "missing dataset": (["--dataset=nosuchdata", "--data_dir=None"], ["data/nosuchdata", "prepare"]),
    "sophia-h under fsdp": (["--optimizer_name=sophiah", "--fsdp=True"], ["sophiah", "--fsdp=False"]),
    "muon under fsdp": (["--optimizer_name=muon", "--fsdp=True"], ["muon", "shard", "use DDP (--fsdp=False)"]),
    "fp16 under fsdp": (["--dtype=float16", "--fsdp=True"], ["float16", "bfloat16"]),
    "mixed precision without fsdp": (["--fsdp_mixed_precision=bf16"], ["fsdp_mixed_precision", "--fsdp=True"]),
    "shard size not dividing": (["--fsdp=True", "--fsdp_shard_size=3"], ["fsdp_shard_size=3", "[1]"]),
    "a device that does not exist": (["--device=nodevice"], ["--device=nodevice", "--device=cpu"]),
    "in-context tasks under fsdp": (["--eval_tasks=boolq", "--fsdp=True"], ["eval_tasks", "eval.py --tasks"]),
    "unknown in-context task": (["--eval_tasks=boolq,glue"], ["glue", "boolq"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(data_dir, tmp_path, capsys, case):
    args, fragments = BAD_INPUTS[case]
    base = [f"--data_dir={data_dir}"] if "--data_dir=None" not in args else []
    result = train_cli(capsys, *base, f"--out_dir={tmp_path / 'out'}", *[a for a in args if a != "--data_dir=None"])
    assert_clean_error(result, *fragments)


def test_bad_input_from_the_command_line(data_dir, tmp_path):
    """The same, through a real process: what a user sees."""
    assert_clean_error(tiny(data_dir, tmp_path, "--learnig_rate=1e-3", check=False), "learnig_rate", "learning_rate")


def test_typo_in_a_config_file_names_the_file_and_line(tmp_path, data_dir):
    config = bad_file(tmp_path, "typo.py", "learnin_rate = 1e-3\n")
    assert_clean_error(run_script([TINY, config, f"--data_dir={data_dir}"], check=False), "learnin_rate",
                       f"{config}, line 1")
    # in a file that another one includes: the included file and its line, and where it was included from
    bad_file(tmp_path, "base.py", f'include({str(ROOT / TINY)!r})\n\nbatch_sise = 4\n')
    top = bad_file(tmp_path, "top.py", '# my run\ninclude("base.py")\nmax_iters = 10\n')
    proc = run_script([top, f"--data_dir={data_dir}"], check=False)
    assert_clean_error(proc, "base.py, line 3", "'batch_sise'", "did you mean 'batch_size'", "top.py, line 2")


def test_checkpoint_with_other_model_dims(saved_run, data_dir, capsys):
    before = hashlib.sha256((saved_run / "ckpt.pt").read_bytes()).hexdigest()
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={saved_run}", "--n_embd=64", "--init_from=resume")
    assert_clean_error(result, "n_embd=128", "64")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={saved_run}", "--init_from=scratch")
    assert_clean_error(result, "already holds", "--init_from=resume")
    assert hashlib.sha256((saved_run / "ckpt.pt").read_bytes()).hexdigest() == before


def test_corrupt_checkpoint(tmp_path, data_dir, capsys):
    bad_file(tmp_path, "ckpt.pt", b"PK\x03\x04 not really a zip")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--init_from=resume")
    assert_clean_error(result, "ckpt.pt", "corrupt")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'empty'}", "--init_from=resume")
    assert_clean_error(result, "no checkpoint")


def test_unwritable_out_dir(tmp_path, data_dir, capsys):
    blocker = bad_file(tmp_path, "a_file", "not a directory")
    result = train_cli(capsys, f"--data_dir={data_dir}", f"--out_dir={blocker / 'sub'}")
    assert_clean_error(result, "out_dir", "not writable")
