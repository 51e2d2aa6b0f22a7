"""
Pretrain GPT-2 with AdamW, the baseline, through the same loop as Sophia (train.py).

    python train_adam.py config/train_tiny_adam.py
    torchrun --standalone --nproc_per_node=8 train_adam.py config/train_gpt2_small_adam.py
"""
import signal
import sys

signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))   # Ctrl-C while torch loads: exit 130, quietly
from configurator import run_cli  # noqa: E402
from train import main  # noqa: E402

if __name__ == "__main__":
    run_cli(main, defaults=dict(optimizer_name="adamw"))
