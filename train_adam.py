"""
train.py with optimizer_name="adamw" as the default: upstream's script name for the AdamW baseline, kept as an
alias (configs set optimizer_name themselves, so `python train.py CONFIG` is the same run).

    python train_adam.py config/train_tiny_adam.py
    torchrun --standalone --nproc_per_node=8 train_adam.py config/train_gpt2_small_adam.py
"""

from configurator import exit_quietly_on_ctrl_c, run_cli

if __name__ == "__main__":
    exit_quietly_on_ctrl_c()         # Ctrl-C while torch loads: exit 130, quietly
    from train import main
    run_cli(main, defaults=dict(optimizer_name="adamw"))
