# GPT-2 774M on OpenWebText with AdamW: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_adam.py config/train_gpt2_large_adam.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "gpt2_large.py")).read())   # model, data, schedule
# min_lr: 0.05 x peak here; upstream's config used 1e-5.

out_dir = "out-gpt2-large-adam"
wandb_run_name = "gpt2-large-adam"

optimizer_name = "adamw"
learning_rate = 2e-4
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
