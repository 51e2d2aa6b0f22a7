# The tiny GPT with AdamW, the baseline of train_tiny_sophiag.py.
#   python train_adam.py config/train_tiny_adam.py
#   torchrun --standalone --nproc_per_node=2 train_adam.py config/train_tiny_adam.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "tiny.py")).read())   # model, data, schedule

out_dir = "out-tiny-adam"
wandb_run_name = "tiny-adam"

optimizer_name = "adamw"
learning_rate = 2e-3
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
