"""
Pretrain GPT-2 with Sophia-G (the Gauss-Newton-Bartlett estimator), through train.py's loop.

    python train_sophiag.py config/train_tiny_sophiag.py
    torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_small_sophiag.py
"""
import signal
import sys

signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))   # Ctrl-C while torch loads: exit 130, quietly
from configurator import run_cli  # noqa: E402
from train import main  # noqa: E402

if __name__ == "__main__":
    run_cli(main, defaults=dict(optimizer_name="sophiag"))
