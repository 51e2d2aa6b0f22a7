"""Fixtures shared by several test files."""
import subprocess
import sys

import pytest
import torch

from helpers import ENV, ROOT, free_port, tiny


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """3 MB of the stdlib corpus, byte-level (python data/stdlib/prepare.py), prepared once per session."""
    out = tmp_path_factory.mktemp("stdlib")
    subprocess.run([sys.executable, "data/stdlib/prepare.py", f"--out_dir={out}", "--max_bytes=3000000"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    return out


@pytest.fixture
def one_thread():
    """One CPU thread in this process, as in a torchrun worker: tiny matmuls on several threads of a busy 2-core
    machine are many times slower, and runs compared bit for bit must use the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_rank(monkeypatch):
    """The environment torchrun gives a world of one process: train.py then sets up a gloo process group and
    wraps the model in DDP or FSDP2, in this process, as on N processes."""
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def straight_run(data_dir, tmp_path_factory):
    """The tiny Sophia-G config as shipped: 100 iterations, 10 Hessian refreshes, one process."""
    out = tmp_path_factory.mktemp("straight")
    proc = tiny(data_dir, out)
    return out, proc


@pytest.fixture(scope="session")
def run_of_8(data_dir, tmp_path_factory):
    """An 8-iteration tiny run with a checkpoint at 4 and 8, to resume from (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run8")
    tiny(data_dir, out, "--max_iters=8", "--eval_interval=4", "--eval_sequences=16", "--keep_last=3")
    return out
