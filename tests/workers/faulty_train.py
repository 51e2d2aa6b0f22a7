"""train.py with a fault injected into one rank, for the tests of what a cluster does to a run
(tests/test_distributed.py, slow tier):

    FAULT=<rank>:<iteration>:<marker file>[:hang] torchrun ... tests/workers/faulty_train.py CONFIG --key=value ...

At the start of that iteration's step, that rank SIGKILLs itself (or, with :hang, sleeps 120 s: a hung rank), once:
only while the marker file does not exist, which it creates first, so that torchrun's restart of the same command
goes on past it.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import train  # noqa: E402
from configurator import run_cli  # noqa: E402


def inject(rank, iteration, marker, hang=False):
    step = train.Trainer.train_step

    def faulty_step(self, iter_num):
        if iter_num == iteration and not os.path.exists(marker):
            open(marker, "w").close()
            if hang:
                time.sleep(120)
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, iter_num)
    if int(os.environ.get("RANK", 0)) == rank:
        train.Trainer.train_step = faulty_step


if __name__ == "__main__":
    rank, iteration, marker, *mode = os.environ["FAULT"].split(":")
    inject(int(rank), int(iteration), marker, hang=mode == ["hang"])
    run_cli(train.main)
