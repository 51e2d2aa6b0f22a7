"""Shared by the training-loop tests: launching the entry points (as a user would, or in this process) on the
tiny config, and reading what a run wrote."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import optimizers
import train
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = "config/train_tiny_sophiag.py"
# One CPU thread per process in every comparison: CPU matmuls block (and round) differently with more
# threads, and torchrun gives each of its processes one thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_script(args, *, script="train_sophiag.py", nproc=1, env=None, check=True, timeout=300, launcher=None):
    """Run an entry point in a new process (under torchrun when nproc > 1, or the given launcher command), as a
    user would."""
    if launcher is None:
        launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                         "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + [script, *map(str, args)], cwd=ROOT, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_agents(args, *, script="train_sophiag.py", timeout=300):
    """Run an entry point as a 2-node job on this machine: two torchrun agents (one process each) that meet
    through the c10d rendezvous on 127.0.0.1, as two machines would through their head node; gloo talks over
    the loopback interface. Returns both agents' CompletedProcess-like (returncode, stdout, stderr)."""
    port, env = free_port(), {**ENV, "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=loopback", script, *map(str, args)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    for result in results:
        if result.returncode != 0:
            raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return results


def tiny(data_dir, out_dir, *extra, **kwargs):
    """The tiny Sophia-G config on `data_dir`, writing to `out_dir`, in a new process."""
    return run_script([TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra], **kwargs)


def tiny_argv(data_dir, out_dir, *extra):
    """argv for train.main() in this process: the tiny config, every iteration logged."""
    return [TINY, f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--log_interval=1", *map(str, extra)]


def events(out_dir, kind="train"):
    """{iter: record} of one event kind; the last occurrence wins (a resumed run re-logs iterations)."""
    rows = {}
    for line in open(os.path.join(out_dir, "metrics.jsonl")):
        record = json.loads(line)
        if record["event"] == kind:
            rows[record["iter"]] = record
    return rows


def max_rel_diff(a, b, iters, key="train/loss"):
    return max(abs(a[i][key] - b[i][key]) / abs(a[i][key]) for i in iters)


def assert_same(a, b, iters, keys=("train/loss", "grad_norm", "train/win_rate", "hessian_norm")):
    """Bit for bit: every logged value of these iterations is equal (keys a run does not log are skipped)."""
    for i in iters:
        for key in keys:
            if key in a[i] or key in b[i]:
                assert a[i][key] == b[i][key], (i, key, a[i][key], b[i][key])


def assert_clean_error(proc, *fragments):
    """A user error as the README promises: exit status 2, one `error:` line naming the problem, no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


class CliResult:
    """What run_cli left behind in this process: exit status and captured output, shaped like a CompletedProcess."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_cli_in_process(main, argv, capsys, **kwargs):
    """Call an entry point's main through configurator.run_cli, as its __main__ does: a user error becomes one
    `error:` line and exit status 2."""
    from configurator import run_cli
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv, **kwargs)
    out, err = capsys.readouterr()
    return CliResult(exit_info.value.code, out, err)


def bad_file(directory, name, content):
    path = directory / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def sophia_coordinates(ckpt):
    return sum(s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values())


def recounted_win_rate(ckpt):
    """stats()['win_rate'] recomputed in this process from a checkpoint's full (gathered) optimizer state."""
    cfg = train.TrainConfig(**ckpt["config"])
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    optimizer = optimizers.build_optimizer(cfg, model)
    optimizer.load_state_dict(ckpt["optimizer"])
    return optimizer.stats(bs=cfg.total_bs * cfg.block_size)["win_rate"].item()


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", copy_function=shutil.copy2)


def train_cli(capsys, *argv):
    """train_sophiag.py's __main__ in this process: run_cli(train.main, defaults=optimizer_name='sophiag')."""
    return run_cli_in_process(train.main, [TINY, *map(str, argv)], capsys, defaults=dict(optimizer_name="sophiag"))
